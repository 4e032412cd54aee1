/**
 * Trust: a chain of root-signed statements, as TUF's root.json, and the authority it gives.
 *
 * Statement format (`trust/v1`, canonical JSON; the fleet id is the sha-256 of the genesis):
 *
 * ```json
 * { "rhizome": "trust/v1", "fleet": "acme", "version": 3, "previous": "<sha-256 of version 2>",
 *   "issued": "2026-11-24T10:00:00.000Z", "threshold": 2, "roots": ["<hex key>", ...],
 *   "admins":    [{ "key": "<hex>", "name": "alice" }],
 *   "operators": [{ "key": "<hex>", "name": "berlin-ops", "docs": ["site/berlin", "devices"],
 *                   "selector": { "site": "berlin" } }],
 *   "nodes":     [{ "key": "<hex>", "name": "till-7", "labels": { "site": "berlin" } }],
 *   "revocations": [{ "key": "<hex>", "reason": "laptop stolen",
 *                     "cuts": { "fleet": [{ "actor": "<80 hex>", "seq": 12, "hash": "<hex>" }] } }] }
 * ```
 * signed as `{ statement, signatures: [{ key, signature }] }`, each signature Ed25519 over
 * sha-256("rhizome/trust/v1" 0x00 ‖ canonical JSON of the statement).
 *
 * Rules (docs/trust.md explains them for people; every peer applies them to the statements it
 * holds, whatever order they arrived in):
 *
 * 1. **Signatures first.** Version N+1 names the hash of a held version N and is signed by a
 *    threshold of that statement's roots; nothing about a statement is looked at, stored or
 *    compared before its signatures are. The genesis is signed by a threshold of its own roots.
 * 2. **Forks.** Two validly signed statements with the same version are a fork. While a fork is
 *    unresolved, the statement before it stays in force and trust changes halt (`forked`). A
 *    statement at the next version extending exactly one branch resolves it: that branch is the
 *    chain. Grants (admins, operators) count only from the chain; *cuts* count from every validly
 *    signed statement held, the losing branch's too (ambiguity resolves toward less authority).
 * 3. **Authority.** Admins may write every document, operators the documents their `docs`
 *    patterns match (exact, or a prefix ending in `*`); roots and nodes write none. A key may
 *    have written a document if *some* statement of the chain authorised it (history stays valid
 *    after a rotation), unless a cut says otherwise.
 * 4. **Cuts.** A statement that takes authority over a document away from a key (removal,
 *    revocation, narrower `docs`) cuts that key in that document: its `revocations` entry for the
 *    key names, per document, the key's last valid change per actor (`rhizome` fills them in from
 *    the signer's replica); a document not named gets an empty cut. A revocation entry may also
 *    tighten an earlier cut. A change by the key in that document stays valid iff its actor is
 *    named with a sequence number at or above the change's. Several cuts of one key and document
 *    combine to the smallest. The named changes also *cover* the key's changes below them
 *    (`anchors`), since the key's own tip signature may sit on a change outside the cut.
 * 5. **Cuts are never undone.** Once a key has lost authority, no later statement on its path
 *    may give it more than it has (readmission needs a fresh key); such a statement is invalid.
 * 6. **Node scope.** An operator's `selector` (labels, a list meaning "any of") is the set of
 *    nodes whose effective config its documents may change (crdt/effective-config.ts). An
 *    operator without a selector reaches no node (it may still write, e.g. `devices`); `{}` means
 *    every node. Admins reach every node.
 */
import { sha256 } from '@noble/hashes/sha2.js'
import { canonicalJson } from './canonical-json.ts'
import { concatBytes, fromHex, toHex, utf8 } from './bytes.ts'
import {
  InvalidTrustStatementError,
  MalformedInputError,
  OutOfScopeError,
  OversizedInputError,
  UnknownKeyError
} from './errors.ts'
import { fingerprint, type KeyPair } from './keys.ts'
import type { Ed25519 } from './ed25519.ts'

export type FleetId = string & { __brand: 'FleetId' }

/** Node labels to match: every key must match; a list means "any of". */
export type LabelSelector = Record<string, string | string[]>

export interface AdminEntry {
  key: string
  name: string
}
export interface OperatorEntry {
  key: string
  name: string
  docs: string[]
  /** The nodes this operator's documents may reach; absent: none. */
  selector?: LabelSelector
}
export interface NodeEntry {
  key: string
  name: string
  labels: Record<string, string>
}

/** A key's last valid change of one actor in one document. */
export interface CutTip {
  actor: string
  seq: number
  hash: string
}

export interface Revocation {
  key: string
  reason?: string
  /** Per document id, the key's last valid change per actor; a document not named: none. */
  cuts: Record<string, CutTip[]>
}

export interface TrustStatement {
  rhizome: 'trust/v1'
  fleet: string
  version: number
  previous: string | null
  issued: string
  threshold: number
  roots: string[]
  admins: AdminEntry[]
  operators: OperatorEntry[]
  nodes: NodeEntry[]
  revocations: Revocation[]
}

export interface SignedTrustStatement {
  statement: TrustStatement
  signatures: Array<{ key: string; signature: string }>
}

export const MAX_TRUST_STATEMENT_BYTES = 1 << 20
/** Statements held beside the chain (fork branches): more than this and new ones are refused. */
export const MAX_BRANCH_STATEMENTS = 64
const DOMAIN = utf8('rhizome/trust/v1\0')

export function statementHash(statement: TrustStatement): string {
  return toHex(sha256(utf8(canonicalJson(statement))))
}

function statementDigest(statement: TrustStatement): Uint8Array {
  return sha256(concatBytes(DOMAIN, utf8(canonicalJson(statement))))
}

export async function signStatement(
  statement: TrustStatement,
  signers: KeyPair[],
  ed: Ed25519
): Promise<SignedTrustStatement> {
  const digest = statementDigest(statement)
  const signatures = await Promise.all(
    signers.map(async k => ({
      key: toHex(k.publicKey),
      signature: toHex(await ed.sign(k.seed, digest))
    }))
  )
  return { statement, signatures }
}

/**
 * Add `signers`' signatures to a statement (multi-party signing: each root holder adds theirs
 * on their own machine). A signature already there by the same key is replaced.
 */
export async function addSignatures(
  signed: SignedTrustStatement,
  signers: KeyPair[],
  ed: Ed25519
): Promise<SignedTrustStatement> {
  const mine = await signStatement(signed.statement, signers, ed)
  const keys = new Set(mine.signatures.map(s => s.key))
  return {
    statement: signed.statement,
    signatures: [...signed.signatures.filter(s => !keys.has(s.key)), ...mine.signatures]
  }
}

export function encodeTrustStatement(s: SignedTrustStatement): Uint8Array {
  return utf8(canonicalJson(s))
}

const isHexKey = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v)
const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v)
const isLabels = (v: unknown): v is Record<string, string> =>
  isObject(v) && Object.values(v).every(x => typeof x === 'string')
const isSelector = (v: unknown): v is LabelSelector =>
  isObject(v) &&
  Object.values(v).every(
    x => typeof x === 'string' || (Array.isArray(x) && x.every(y => typeof y === 'string'))
  )
const isCutTip = (v: unknown): v is CutTip =>
  isObject(v) &&
  typeof v.actor === 'string' &&
  /^[0-9a-f]{80}$/.test(v.actor) &&
  Number.isSafeInteger(v.seq) &&
  (v.seq as number) >= 1 &&
  isHexKey(v.hash)
const isRevocation = (v: unknown): v is Revocation =>
  isObject(v) &&
  isHexKey(v.key) &&
  (v.reason === undefined || typeof v.reason === 'string') &&
  isObject(v.cuts) &&
  Object.values(v.cuts).every(tips => Array.isArray(tips) && tips.every(isCutTip))

/** Parse and shape-check a signed statement (signatures are checked by `TrustChain.add`). */
export function decodeTrustStatement(bytes: Uint8Array): SignedTrustStatement {
  if (bytes.length > MAX_TRUST_STATEMENT_BYTES) {
    throw new OversizedInputError(
      `a trust statement is at most ${MAX_TRUST_STATEMENT_BYTES} bytes; got ${bytes.length}`
    )
  }
  let v: unknown
  try {
    v = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes))
  } catch {
    throw new MalformedInputError('trust statement is not UTF-8 JSON')
  }
  return trustStatementFromJson(v)
}

/**
 * Shape-check a signed statement already parsed from JSON (a trust.json file, `GET /api/trust`);
 * its source bounds its size. Signatures are checked by `TrustChain.add`.
 */
export function trustStatementFromJson(v: unknown): SignedTrustStatement {
  const s = (v as Partial<SignedTrustStatement>)?.statement
  const sigs = (v as Partial<SignedTrustStatement>)?.signatures
  if (
    s?.rhizome !== 'trust/v1' ||
    typeof s.fleet !== 'string' ||
    !Number.isSafeInteger(s.version) ||
    s.version < 1 ||
    !(s.previous === null || isHexKey(s.previous)) ||
    (s.version === 1) !== (s.previous === null) ||
    typeof s.issued !== 'string' ||
    !Number.isSafeInteger(s.threshold) ||
    s.threshold < 1 ||
    !Array.isArray(s.roots) ||
    !s.roots.every(isHexKey) ||
    s.roots.length < s.threshold ||
    !Array.isArray(s.admins) ||
    !s.admins.every(a => isHexKey(a?.key) && typeof a.name === 'string') ||
    !Array.isArray(s.operators) ||
    !s.operators.every(
      o =>
        isHexKey(o?.key) &&
        typeof o.name === 'string' &&
        Array.isArray(o.docs) &&
        o.docs.every(d => typeof d === 'string') &&
        (o.selector === undefined || isSelector(o.selector))
    ) ||
    !Array.isArray(s.nodes) ||
    !s.nodes.every(n => isHexKey(n?.key) && typeof n.name === 'string' && isLabels(n.labels)) ||
    !Array.isArray(s.revocations) ||
    !s.revocations.every(isRevocation) ||
    !Array.isArray(sigs) ||
    !sigs.every(
      x =>
        isHexKey(x?.key) && typeof x.signature === 'string' && /^[0-9a-f]{128}$/.test(x.signature)
    )
  ) {
    throw new MalformedInputError('not a well-formed trust/v1 statement')
  }
  return v as SignedTrustStatement
}

export type KeyRole = 'root' | 'admin' | 'operator' | 'node'

export interface KeyInfo {
  key: string
  name: string
  role: KeyRole
}

/** What a key may write: everything, some documents on some nodes, or nothing. */
type Authority =
  | { kind: 'admin' }
  | { kind: 'operator'; docs: string[]; selector: LabelSelector | undefined }
  | { kind: 'none' }

function matchesDoc(pattern: string, docId: string): boolean {
  return pattern.endsWith('*') ? docId.startsWith(pattern.slice(0, -1)) : pattern === docId
}

/** Does doc pattern `outer` match every document `inner` matches? */
function patternContains(outer: string, inner: string): boolean {
  return outer.endsWith('*') ? inner.startsWith(outer.slice(0, -1)) : outer === inner
}

/** Does `outer` select every node `inner` selects? (Sufficient, not necessary: may say no.) */
function selectorContains(outer: LabelSelector | undefined, inner: LabelSelector | undefined) {
  if (inner === undefined) return true
  if (outer === undefined) return false
  for (const [k, want] of Object.entries(outer)) {
    const have = inner[k]
    if (have === undefined) return false
    const allowed = new Set(Array.isArray(want) ? want : [want])
    if (!(Array.isArray(have) ? have : [have]).every(x => allowed.has(x))) return false
  }
  return true
}

function authorityIn(s: TrustStatement, key: string): Authority {
  if (s.admins.some(a => a.key === key)) return { kind: 'admin' }
  const op = s.operators.find(o => o.key === key)
  if (op !== undefined) return { kind: 'operator', docs: op.docs, selector: op.selector }
  return { kind: 'none' }
}

function mayWrite(a: Authority, docId: string): boolean {
  return a.kind === 'admin' || (a.kind === 'operator' && a.docs.some(p => matchesDoc(p, docId)))
}

/** Is `next` no more than `prev`? */
function authorityWithin(next: Authority, prev: Authority): boolean {
  if (next.kind === 'none' || prev.kind === 'admin') return true
  if (next.kind === 'admin' || prev.kind === 'none') return false
  return (
    next.docs.every(d => prev.docs.some(p => patternContains(p, d))) &&
    selectorContains(prev.selector, next.selector)
  )
}

/** A statement held, with what follows from where it sits. */
interface Held {
  readonly signed: SignedTrustStatement
  readonly hash: string
  readonly parent: Held | undefined
  /** Keys whose authority this statement or one before it on its path took away. */
  readonly reduced: ReadonlySet<string>
}

export interface TrustFork {
  version: number
  /** The hashes of the statements that claim this version, sorted. */
  hashes: string[]
  /** The branch a later statement chose, once one has. */
  resolvedBy?: string
}

/** How much a key may have written a document: what `SignedDocument` asks of every change. */
export type WriteStanding =
  /** Some statement of the chain let the key write the document. */
  | { kind: 'granted'; info: KeyInfo }
  /**
   * Only a statement off the chain (a fork's other branch) did: its changes are not valid, but
   * an honest peer that followed that branch may carry them, so they are dropped, not punished.
   */
  | { kind: 'branch'; info: KeyInfo }

/** A verified chain of trust statements; the last one of the chain is in force. */
export class TrustChain {
  readonly fleetId: FleetId
  private readonly ed: Ed25519
  private readonly byHash = new Map<string, Held>()
  private readonly byVersion = new Map<number, Held[]>()
  private chain: Held[] = []
  private forkList: TrustFork[] = []
  /** An unresolved fork: the statement before it stays in force and trust changes halt. */
  forked: TrustFork | undefined
  /** Counts every statement added: a verdict reached under an older epoch may be stale. */
  epoch = 0
  private readonly cache = new Map<string, unknown>()

  private constructor(genesis: SignedTrustStatement, ed: Ed25519) {
    this.fleetId = statementHash(genesis.statement) as FleetId
    this.ed = ed
    this.insert({ signed: genesis, hash: this.fleetId, parent: undefined, reduced: new Set() })
  }

  /** Verify a genesis statement and start a chain from it. */
  static async fromGenesis(genesis: SignedTrustStatement, ed: Ed25519): Promise<TrustChain> {
    const s = genesis.statement
    if (s.version !== 1 || s.previous !== null) {
      throw new InvalidTrustStatementError(
        `a genesis statement has version 1 and no predecessor; this one has version ${s.version}`
      )
    }
    await verifyThreshold(genesis, s.roots, s.threshold, ed)
    if (s.revocations.length > 0) {
      throw new InvalidTrustStatementError('a genesis statement revokes nothing')
    }
    return new TrustChain(genesis, ed)
  }

  /** The statement in force: the chain's last (before an unresolved fork). */
  get latest(): TrustStatement {
    return (this.chain.at(-1) as Held).signed.statement
  }
  get version(): number {
    return this.latest.version
  }
  /** The chain, genesis first. */
  get all(): readonly SignedTrustStatement[] {
    return this.chain.map(h => h.signed)
  }
  /** Every statement held, the chain's and forks' branches', in version order. */
  get held(): SignedTrustStatement[] {
    return [...this.byVersion.keys()]
      .sort((a, b) => a - b)
      .flatMap(v => (this.byVersion.get(v) as Held[]).map(h => h.signed))
  }
  /** Every fork seen, resolved or not. */
  get forks(): readonly TrustFork[] {
    return this.forkList
  }

  /**
   * Add a statement: the chain's next, or another at a version already held (a fork, kept as
   * evidence), or the one that resolves a fork. Returns false for one already held. Throws
   * `InvalidTrustStatementError`, and nothing changes, for one whose signatures do not reach
   * its predecessor's threshold or that breaks a rule in the header. A fork is not an error:
   * `forked` says trust is halted, and the replica raises the alarm.
   */
  async add(next: SignedTrustStatement): Promise<boolean> {
    const s = next.statement
    const hash = statementHash(s)
    if (this.byHash.has(hash)) return false
    const parent = s.previous === null ? undefined : this.byHash.get(s.previous)
    if (parent === undefined || parent.signed.statement.version !== s.version - 1) {
      throw new InvalidTrustStatementError(
        s.version <= 1
          ? `a second genesis (${hash.slice(0, 12)}…) is another fleet, not a statement of fleet ${this.fleetId.slice(0, 12)}…`
          : `trust statement version ${s.version} names a predecessor this node does not hold; fetch the versions before it first`
      )
    }
    const prev = parent.signed.statement
    await verifyThreshold(next, prev.roots, prev.threshold, this.ed)
    // Signed by a threshold of its predecessor's roots: from here on it is a root decision.
    if (s.fleet !== prev.fleet) {
      throw new InvalidTrustStatementError(
        `trust statement version ${s.version} renames the fleet; the name is fixed at genesis`
      )
    }
    const reduced = checkSuccessor(prev, s, parent.reduced)
    const siblings = this.byVersion.get(s.version) ?? []
    if (siblings.length > 0 && this.branchCount() >= MAX_BRANCH_STATEMENTS) {
      throw new InvalidTrustStatementError(
        `this node holds ${MAX_BRANCH_STATEMENTS} statements off the chain already; a fork this wide needs the root key holders, not more statements`
      )
    }
    this.insert({ signed: next, hash, parent, reduced })
    return true
  }

  /** Who a key is in the statement in force, or undefined. */
  lookup(keyHex: string): KeyInfo | undefined {
    return infoIn(this.latest, keyHex)
  }

  /** Who a key is or was: in the statement in force, else in the latest one that named it. */
  describe(keyHex: string): KeyInfo | undefined {
    for (let i = this.chain.length - 1; i >= 0; i--) {
      const info = infoIn((this.chain[i] as Held).signed.statement, keyHex)
      if (info !== undefined) return info
    }
    return undefined
  }

  /**
   * May this key write this document now (a local change)? Throws `UnknownKeyError` or
   * `OutOfScopeError` if not: it must be authorised by the statement in force and not cut there.
   */
  authorize(keyHex: string, docId: string): KeyInfo {
    const info = this.lookup(keyHex)
    if (info === undefined) {
      const was = this.describe(keyHex)
      throw new UnknownKeyError(
        was === undefined
          ? `key ${fingerprint(fromHex(keyHex))} is not in trust statement version ${this.version} of this fleet; changes it signs are rejected`
          : `${was.role} key "${was.name}" (${fingerprint(fromHex(keyHex))}) was removed from the fleet's trust; it cannot write any more (readmission needs a new key: rhizome keygen)`
      )
    }
    const a = authorityIn(this.latest, keyHex)
    if (!mayWrite(a, docId)) {
      throw new OutOfScopeError(
        a.kind === 'operator'
          ? `operator "${info.name}" may write ${a.docs.join(', ') || 'no documents'}, not "${docId}"`
          : `${info.role} key "${info.name}" may not write documents; only admin and operator keys may`
      )
    }
    if (this.cutOf(keyHex, docId) !== undefined) {
      throw new OutOfScopeError(
        `${info.role} key "${info.name}" is cut in "${docId}" by a trust statement; it cannot write there any more (readmission needs a new key)`
      )
    }
    return info
  }

  /**
   * May this key have written this document at some time? `granted` if a statement of the
   * chain let it (cuts are `cutOf`'s business), `branch` if only a fork's other branch did.
   * Throws `UnknownKeyError` or `OutOfScopeError` if no statement held ever did: a peer that
   * sends such a change is at fault.
   */
  writeStanding(keyHex: string, docId: string): WriteStanding {
    return this.memo(`w/${keyHex}/${docId}`, () => {
      for (const h of this.chain) {
        if (mayWrite(authorityIn(h.signed.statement, keyHex), docId)) {
          return { kind: 'granted', info: this.describe(keyHex) as KeyInfo }
        }
      }
      for (const h of this.byHash.values()) {
        const info = infoIn(h.signed.statement, keyHex)
        if (info !== undefined && mayWrite(authorityIn(h.signed.statement, keyHex), docId)) {
          return { kind: 'branch', info }
        }
      }
      const was = this.describe(keyHex)
      if (was === undefined) {
        throw new UnknownKeyError(
          `key ${fingerprint(fromHex(keyHex))} is in no trust statement of this fleet; changes it signs are rejected`
        )
      }
      throw new OutOfScopeError(
        `${was.role} key "${was.name}" was never allowed to write "${docId}"`
      )
    })
  }

  /**
   * The cut of a key in a document, if any statement held made one: per actor, the last valid
   * change (the smallest where several statements cut). An empty list: nothing stays valid.
   */
  cutOf(keyHex: string, docId: string): readonly CutTip[] | undefined {
    return this.memo(`c/${keyHex}/${docId}`, () => {
      let cut: Map<string, CutTip> | undefined
      for (const h of this.byHash.values()) {
        const tips = cutIn(h, keyHex, docId)
        if (tips === undefined) continue
        const mine = new Map(tips.map(t => [t.actor, t]))
        if (cut === undefined) cut = mine
        else {
          for (const [actor, t] of cut) {
            const other = mine.get(actor)
            if (other === undefined) cut.delete(actor)
            else if (other.seq < t.seq) cut.set(actor, other)
          }
        }
      }
      return cut === undefined ? undefined : [...cut.values()]
    })
  }

  /**
   * Whether anything held could make a change of `docId` invalid under rules 1-4: a cut of some
   * key in it, or a statement off the chain (a fork's branch). Depends on the statements alone,
   * not on which changes a document holds, so a document that cannot name every key it holds
   * changes of (a change whose only signature sat on a change since dropped) is still judged.
   */
  mayInvalidate(docId: string): boolean {
    return this.memo(`i/${docId}`, () => {
      if (this.branchCount() > 0) return true
      for (const h of this.byHash.values()) {
        const s = h.signed.statement
        const prev = h.parent?.signed.statement
        const keys = new Set([
          ...s.revocations.map(r => r.key),
          ...(prev === undefined ? [] : [...prev.admins, ...prev.operators].map(k => k.key))
        ])
        for (const key of keys) if (cutIn(h, key, docId) !== undefined) return true
      }
      return false
    })
  }

  /**
   * The changes of a document that cuts name, by hash, with the key they belong to: a cut covers
   * its key's changes below it as a signature would (root-signed, it names their hashes).
   */
  anchors(docId: string): ReadonlyMap<string, { key: string; tip: CutTip }> {
    return this.memo(`a/${docId}`, () => {
      const out = new Map<string, { key: string; tip: CutTip }>()
      for (const h of this.byHash.values()) {
        for (const r of h.signed.statement.revocations) {
          for (const tip of r.cuts[docId] ?? []) out.set(tip.hash, { key: r.key, tip })
        }
      }
      return out
    })
  }

  /**
   * The nodes a key's documents may reach: `all` for an admin, an operator's selector (its
   * latest on the chain; `undefined`: none), `none` for any other key.
   */
  scopeOf(keyHex: string): { all: true } | { all: false; selector: LabelSelector | undefined } {
    return this.memo(`s/${keyHex}`, () => {
      for (let i = this.chain.length - 1; i >= 0; i--) {
        const a = authorityIn((this.chain[i] as Held).signed.statement, keyHex)
        if (a.kind === 'admin') return { all: true }
        if (a.kind === 'operator') return { all: false, selector: a.selector }
      }
      return { all: false, selector: undefined }
    })
  }

  private memo<T>(key: string, fn: () => T): T {
    if (this.cache.has(key)) return this.cache.get(key) as T
    const v = fn()
    this.cache.set(key, v)
    return v
  }

  private branchCount(): number {
    return this.byHash.size - this.chain.length
  }

  private insert(h: Held): void {
    this.byHash.set(h.hash, h)
    const v = h.signed.statement.version
    this.byVersion.set(v, [...(this.byVersion.get(v) ?? []), h])
    this.cache.clear()
    this.epoch++
    this.recompute()
  }

  /** Walk from the genesis: one statement per version, a fork's branch only once extended. */
  private recompute(): void {
    const chain: Held[] = [this.byHash.get(this.fleetId) as Held]
    const forks: TrustFork[] = []
    let forked: TrustFork | undefined
    for (;;) {
      const tip = chain.at(-1) as Held
      const v = tip.signed.statement.version + 1
      const candidates = (this.byVersion.get(v) ?? []).filter(h => h.parent === tip)
      if (candidates.length === 0) break
      if (candidates.length === 1) {
        chain.push(candidates[0] as Held)
        continue
      }
      const hashes = candidates.map(c => c.hash).sort()
      const extended = candidates.filter(c =>
        (this.byVersion.get(v + 1) ?? []).some(n => n.parent === c)
      )
      if (extended.length === 1) {
        const chosen = extended[0] as Held
        forks.push({ version: v, hashes, resolvedBy: chosen.hash })
        chain.push(chosen)
        continue
      }
      forked = { version: v, hashes }
      forks.push(forked)
      break
    }
    // Forks off the chain's path (a branch of a branch) are forks too.
    for (const [v, hs] of this.byVersion) {
      const parents = new Set(hs.map(h => h.parent))
      for (const p of parents) {
        const sib = hs.filter(h => h.parent === p)
        if (
          sib.length > 1 &&
          !forks.some(f => f.version === v && f.hashes.includes(sib[0]!.hash))
        ) {
          forks.push({ version: v, hashes: sib.map(h => h.hash).sort() })
        }
      }
    }
    this.chain = chain
    this.forked = forked
    this.forkList = forks.sort((a, b) => a.version - b.version)
  }
}

function infoIn(s: TrustStatement, keyHex: string): KeyInfo | undefined {
  const admin = s.admins.find(a => a.key === keyHex)
  if (admin !== undefined) return { key: keyHex, name: admin.name, role: 'admin' }
  const op = s.operators.find(o => o.key === keyHex)
  if (op !== undefined) return { key: keyHex, name: op.name, role: 'operator' }
  const node = s.nodes.find(n => n.key === keyHex)
  if (node !== undefined) return { key: keyHex, name: node.name, role: 'node' }
  if (s.roots.includes(keyHex)) {
    return { key: keyHex, name: `root ${fingerprint(fromHex(keyHex))}`, role: 'root' }
  }
  return undefined
}

/** The cut `h` makes of `key` in `docId`, if it makes one (rule 4 of the header). */
function cutIn(h: Held, keyHex: string, docId: string): CutTip[] | undefined {
  const s = h.signed.statement
  const named = s.revocations.find(r => r.key === keyHex)
  if (named?.cuts[docId] !== undefined) return named.cuts[docId]
  if (h.parent === undefined) return undefined
  const lost =
    mayWrite(authorityIn(h.parent.signed.statement, keyHex), docId) &&
    !mayWrite(authorityIn(s, keyHex), docId)
  return lost ? [] : undefined
}

/**
 * Rules 4 and 5 for a statement `s` following `prev`: a key once reduced never gains
 * authority, and a revocation takes away what it cuts. Returns the keys reduced up to and
 * including `s`.
 */
function checkSuccessor(
  prev: TrustStatement,
  s: TrustStatement,
  reducedBefore: ReadonlySet<string>
): Set<string> {
  const reduced = new Set(reducedBefore)
  const keys = new Set([
    ...prev.admins.map(a => a.key),
    ...prev.operators.map(o => o.key),
    ...s.admins.map(a => a.key),
    ...s.operators.map(o => o.key)
  ])
  for (const key of keys) {
    const before = authorityIn(prev, key)
    const after = authorityIn(s, key)
    if (reducedBefore.has(key) && !authorityWithin(after, before)) {
      throw new InvalidTrustStatementError(
        `trust statement version ${s.version} gives key ${fingerprint(fromHex(key))} authority it lost before; cuts are never undone (give the holder a new key: rhizome keygen)`
      )
    }
    if (!authorityWithin(before, after)) reduced.add(key)
  }
  for (const r of s.revocations) {
    const after = authorityIn(s, r.key)
    if (after.kind === 'admin') {
      throw new InvalidTrustStatementError(
        `trust statement version ${s.version} revokes key ${fingerprint(fromHex(r.key))} and keeps it as an admin`
      )
    }
    if (after.kind === 'operator' && Object.keys(r.cuts).some(d => mayWrite(after, d))) {
      throw new InvalidTrustStatementError(
        `trust statement version ${s.version} cuts key ${fingerprint(fromHex(r.key))} in a document it still lets it write`
      )
    }
    for (const tips of Object.values(r.cuts)) {
      if (tips.some(t => t.actor.slice(0, 64) !== r.key)) {
        throw new InvalidTrustStatementError(
          `trust statement version ${s.version} names, in the cut of key ${fingerprint(fromHex(r.key))}, a change another key wrote`
        )
      }
    }
    reduced.add(r.key)
  }
  return reduced
}

async function verifyThreshold(
  signed: SignedTrustStatement,
  roots: string[],
  threshold: number,
  ed: Ed25519
): Promise<void> {
  const good = await countRootSignatures(signed, roots, ed)
  if (good < threshold) {
    throw new InvalidTrustStatementError(
      `trust statement version ${signed.statement.version} has ${good} valid root signature(s); ${threshold} are required`
    )
  }
}

/**
 * How many distinct keys of `roots` have a signature on `signed` that verifies (the threshold
 * check above; `rhizome trust publish` reports it).
 */
export async function countRootSignatures(
  signed: SignedTrustStatement,
  roots: string[],
  ed: Ed25519
): Promise<number> {
  const digest = statementDigest(signed.statement)
  const good = new Set<string>()
  for (const { key, signature } of signed.signatures) {
    if (!roots.includes(key) || good.has(key)) continue
    if (await ed.verify(fromHex(key), digest, fromHex(signature))) good.add(key)
  }
  return good.size
}

export interface GenesisOptions {
  fleet: string
  roots: KeyPair[]
  threshold?: number
  admins?: AdminEntry[]
  operators?: OperatorEntry[]
  nodes?: NodeEntry[]
  issued?: Date
}

/** Make and sign a genesis statement (all root keys sign it). */
export async function createGenesis(
  opts: GenesisOptions,
  ed: Ed25519
): Promise<SignedTrustStatement> {
  const statement: TrustStatement = {
    rhizome: 'trust/v1',
    fleet: opts.fleet,
    version: 1,
    previous: null,
    issued: (opts.issued ?? new Date()).toISOString(),
    threshold: opts.threshold ?? 1,
    roots: opts.roots.map(k => toHex(k.publicKey)),
    admins: opts.admins ?? [],
    operators: opts.operators ?? [],
    nodes: opts.nodes ?? [],
    revocations: []
  }
  return signStatement(statement, opts.roots, ed)
}

export type StatementUpdate = Partial<
  Pick<TrustStatement, 'threshold' | 'roots' | 'admins' | 'operators' | 'nodes' | 'revocations'>
>

/** The unsigned statement after `prev` with the changes in `update` (no revocations unless given). */
export function proposeStatement(
  prev: TrustStatement,
  update: StatementUpdate,
  issued = new Date()
): TrustStatement {
  return {
    ...prev,
    revocations: [],
    ...update,
    version: prev.version + 1,
    previous: statementHash(prev),
    issued: issued.toISOString()
  }
}

/** Make and sign the statement after `prev` with the changes in `update`. */
export async function nextStatement(
  prev: TrustStatement,
  update: StatementUpdate,
  roots: KeyPair[],
  ed: Ed25519,
  issued = new Date()
): Promise<SignedTrustStatement> {
  return signStatement(proposeStatement(prev, update, issued), roots, ed)
}
