/**
 * Trust: a linear chain of root-signed statements, as TUF's root.json.
 *
 * Version 1 (genesis) is signed by a threshold of its own root keys; the fleet id is the
 * sha-256 of its canonical JSON. Version N+1 names the hash of version N and is accepted only
 * when signed by a threshold of version N's root keys. A statement names admin keys (may write
 * every document), operator keys scoped to document ids (exact, or a prefix ending in `*`),
 * and enrolled nodes. Two different statements with the same version are a fork: trust
 * changes halt (`forked` is set) and the last statement before the fork stays in force.
 *
 * `revocations` is reserved for revocation cuts (a later issue); version 1 statements carry [].
 */
import { sha256 } from '@noble/hashes/sha2.js'
import { canonicalJson } from './canonical-json.ts'
import { concatBytes, fromHex, toHex, utf8 } from './bytes.ts'
import {
  InvalidTrustStatementError,
  MalformedInputError,
  OutOfScopeError,
  OversizedInputError,
  TrustForkError,
  UnknownKeyError
} from './errors.ts'
import { fingerprint, type KeyPair } from './keys.ts'
import type { Ed25519 } from './ed25519.ts'

export type FleetId = string & { __brand: 'FleetId' }

export interface AdminEntry {
  key: string
  name: string
}
export interface OperatorEntry {
  key: string
  name: string
  docs: string[]
}
export interface NodeEntry {
  key: string
  name: string
  labels: Record<string, string>
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
  revocations: unknown[]
}

export interface SignedTrustStatement {
  statement: TrustStatement
  signatures: Array<{ key: string; signature: string }>
}

export const MAX_TRUST_STATEMENT_BYTES = 1 << 20
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

export function encodeTrustStatement(s: SignedTrustStatement): Uint8Array {
  return utf8(canonicalJson(s))
}

const isHexKey = (v: unknown): v is string => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v)
const isLabels = (v: unknown): v is Record<string, string> =>
  typeof v === 'object' &&
  v !== null &&
  !Array.isArray(v) &&
  Object.values(v).every(x => typeof x === 'string')

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
    !(s.previous === null || typeof s.previous === 'string') ||
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
        o.docs.every(d => typeof d === 'string')
    ) ||
    !Array.isArray(s.nodes) ||
    !s.nodes.every(n => isHexKey(n?.key) && typeof n.name === 'string' && isLabels(n.labels)) ||
    !Array.isArray(s.revocations) ||
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

function matchesDoc(pattern: string, docId: string): boolean {
  return pattern.endsWith('*') ? docId.startsWith(pattern.slice(0, -1)) : pattern === docId
}

/** A verified chain of trust statements; the last one is in force. */
export class TrustChain {
  readonly fleetId: FleetId
  private readonly statements: SignedTrustStatement[]
  private readonly ed: Ed25519
  /** Set when two different statements claimed the same version; trust changes halt. */
  forked: { version: number; hashes: [string, string] } | undefined

  private constructor(genesis: SignedTrustStatement, ed: Ed25519) {
    this.statements = [genesis]
    this.fleetId = statementHash(genesis.statement) as FleetId
    this.ed = ed
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
    return new TrustChain(genesis, ed)
  }

  get latest(): TrustStatement {
    return (this.statements.at(-1) as SignedTrustStatement).statement
  }
  get version(): number {
    return this.latest.version
  }
  get all(): readonly SignedTrustStatement[] {
    return this.statements
  }

  /**
   * Add the next statement. Returns false for one already held; throws
   * `InvalidTrustStatementError` for one that does not extend the chain and `TrustForkError`
   * for a different statement at a version already held.
   */
  async add(next: SignedTrustStatement): Promise<boolean> {
    const v = next.statement.version
    const held = this.statements[v - 1]
    if (held !== undefined) {
      const a = statementHash(held.statement)
      const b = statementHash(next.statement)
      if (a === b) return false
      this.forked = { version: v, hashes: [a, b] }
      throw new TrustForkError(
        `two different trust statements claim version ${v} of fleet ${this.fleetId.slice(0, 12)}… (${a.slice(0, 12)}… and ${b.slice(0, 12)}…); trust changes are halted until the root key holders resolve it`
      )
    }
    if (this.forked !== undefined) {
      throw new TrustForkError(
        `trust changes are halted: a fork at version ${this.forked.version} is unresolved`
      )
    }
    const prev = this.latest
    if (v !== prev.version + 1) {
      throw new InvalidTrustStatementError(
        `trust statement version ${v} does not follow the held version ${prev.version}; fetch the versions in between first`
      )
    }
    if (next.statement.previous !== statementHash(prev)) {
      throw new InvalidTrustStatementError(
        `trust statement version ${v} does not name version ${prev.version} as its predecessor`
      )
    }
    if (next.statement.fleet !== prev.fleet) {
      throw new InvalidTrustStatementError(
        `trust statement version ${v} renames the fleet; the name is fixed at genesis`
      )
    }
    await verifyThreshold(next, prev.roots, prev.threshold, this.ed)
    this.statements.push(next)
    return true
  }

  /** Who a key is in the statement in force, or undefined. */
  lookup(keyHex: string): KeyInfo | undefined {
    const s = this.latest
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

  /** May this key write this document? Throws `UnknownKeyError` or `OutOfScopeError` if not. */
  authorize(keyHex: string, docId: string): KeyInfo {
    const info = this.lookup(keyHex)
    if (info === undefined) {
      throw new UnknownKeyError(
        `key ${fingerprint(fromHex(keyHex))} is not in trust statement version ${this.version} of this fleet; changes it signs are rejected`
      )
    }
    if (info.role === 'admin') return info
    if (info.role === 'operator') {
      const op = this.latest.operators.find(o => o.key === keyHex) as OperatorEntry
      if (op.docs.some(p => matchesDoc(p, docId))) return info
      throw new OutOfScopeError(
        `operator "${info.name}" may write ${op.docs.join(', ') || 'no documents'}, not "${docId}"`
      )
    }
    throw new OutOfScopeError(
      `${info.role} key "${info.name}" may not write documents; only admin and operator keys may`
    )
  }
}

async function verifyThreshold(
  signed: SignedTrustStatement,
  roots: string[],
  threshold: number,
  ed: Ed25519
): Promise<void> {
  const digest = statementDigest(signed.statement)
  const good = new Set<string>()
  for (const { key, signature } of signed.signatures) {
    if (!roots.includes(key) || good.has(key)) continue
    if (await ed.verify(fromHex(key), digest, fromHex(signature))) good.add(key)
  }
  if (good.size < threshold) {
    throw new InvalidTrustStatementError(
      `trust statement version ${signed.statement.version} has ${good.size} valid root signature(s); ${threshold} are required`
    )
  }
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

/** Make and sign the statement after `prev` with the changes in `update`. */
export async function nextStatement(
  prev: TrustStatement,
  update: Partial<Pick<TrustStatement, 'threshold' | 'roots' | 'admins' | 'operators' | 'nodes'>>,
  roots: KeyPair[],
  ed: Ed25519,
  issued = new Date()
): Promise<SignedTrustStatement> {
  const statement: TrustStatement = {
    ...prev,
    ...update,
    version: prev.version + 1,
    previous: statementHash(prev),
    issued: issued.toISOString()
  }
  return signStatement(statement, roots, ed)
}
