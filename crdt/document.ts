/**
 * A signed Automerge document: the only way in is `accept` (verified batches from elsewhere) or
 * `change` (a local change, signed as it is made). Both persist before they resolve.
 *
 * A batch is judged in two steps:
 * - `verifyBatch`, a pure function of the batch and the trust chain: every change covered by a
 *   verified signature of the key its actor names, or by a change a root-signed cut names
 *   (`signed-change.ts`), and that key allowed by some statement to write this document. A
 *   batch that fails is refused with a named error: its sender did something wrong.
 * - which of its changes are *valid* (crdt/validity.ts: cuts, equivocations, dependencies).
 *   Invalid changes are not the sender's fault (a peer that has not yet seen a cut relays them),
 *   so they are dropped and the rest applied. Two changes of one actor with one sequence number
 *   are kept as equivocation evidence (crdt/equivocation.ts) before either reaches Automerge.
 *
 * When a new cut or new evidence makes held changes invalid, the document is rebuilt from the
 * valid ones (Automerge cannot drop a change) and a snapshot replaces the stored batches: the
 * store keeps what is valid; cuts are never undone, so what was dropped is never needed again.
 * A valid batch whose dependencies are missing waits in a bounded pending set.
 */
import * as Automerge from '@automerge/automerge'
import { logger } from '@libp2p/logger'
import { ByteReader, ByteWriter, concatBytes, fromHex, toHex } from './bytes.ts'
import {
  CutWriterError,
  MalformedInputError,
  PendingSetFullError,
  UnsignedChangeError,
  WrongDocumentError
} from './errors.ts'
import {
  conflictIn,
  decodeEquivocation,
  encodeEquivocation,
  MAX_EQUIVOCATIONS_PER_DOCUMENT,
  selectChanges,
  type Equivocation
} from './equivocation.ts'
import {
  changeVerdict,
  judgeChanges,
  type InvalidReason,
  type ValidityContext
} from './validity.ts'
import { diffMaps, plainValue, type DiffOp } from './config-diff.ts'
import {
  actorKeyHex,
  checkActorChains,
  decodeBatch,
  encodeBatch,
  isChangeChunk,
  MAX_BATCH_BYTES,
  MAX_CHUNKS_PER_BATCH,
  readChanges,
  signChange,
  verifyCoverage,
  type ChangeMeta,
  type ChangeSignature,
  type SignedBatch
} from './signed-change.ts'
import type { Ed25519 } from './ed25519.ts'
import type { KeyPair } from './keys.ts'
import type { Store } from './store.ts'
import type { CutTip, KeyInfo, TrustChain } from './trust.ts'
import { documentSchema } from './document-schema.ts'

const log = logger('rhizome:crdt:document')

/** Pending batches waiting for dependencies: at most this many, and this many bytes. */
export const MAX_PENDING_BATCHES = 256
export const MAX_PENDING_BYTES = 64 * 1024 * 1024
/** A snapshot is written after this many batches since the last one. */
export const SNAPSHOT_EVERY_BATCHES = 200
/** A batch at least this large, and larger than the document, is loaded together with it. */
const LOAD_WHOLE_MIN_CHANGES = 256
/** Dropped changes whose value diff is worked out for re-signing, per rebuild. */
export const MAX_DIFFS_PER_REBUILD = 256
/** Hashes of dropped changes remembered, so their descendants are dropped too, not parked. */
export const MAX_REMEMBERED_INVALID = 65_536
/** Store meta keys of a document's equivocation evidence: `equivocation/<doc>/<actor>`. */
const EVIDENCE_PREFIX = 'equivocation/'
/**
 * Per document, the keys that wrote it as of given heads (`writers/<docId>`), written with each
 * snapshot: the heads name the changes held, so the list is a function of them and is used only
 * while they are the document's heads. It spares a start reading every change's metadata (about
 * 110 ms at 10,000 changes) before the first reconcile can scope operators' documents.
 */
const WRITERS_PREFIX = 'writers/'

/** Stored writers: varint heads ‖ 32-byte hashes ‖ varint keys ‖ 32-byte keys. */
function encodeWriters(heads: readonly string[], keys: readonly string[]): Uint8Array {
  const w = new ByteWriter().varint(heads.length)
  for (const h of heads) w.raw(fromHex(h))
  w.varint(keys.length)
  for (const k of keys) w.raw(fromHex(k))
  return w.finish()
}

function decodeWriters(bytes: Uint8Array): { heads: string[]; keys: string[] } {
  const r = new ByteReader(bytes, 'stored writers')
  const heads = Array.from({ length: r.varint(1 << 16) }, () => toHex(r.raw(32)))
  const keys = Array.from({ length: r.varint(1 << 20) }, () => toHex(r.raw(32)))
  r.end()
  return { heads, keys }
}

function sameHeads(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false
  const sorted = [...b].sort()
  return [...a].sort().every((h, i) => h === sorted[i])
}

/**
 * Every document starts from a deterministic, unsigned *genesis change* that creates its top-level
 * maps. Every peer computes the same bytes and hash for it from the document id alone, so it needs
 * no signature, and later changes that write inside those maps never race to create them: two
 * admins who each create `devices` concurrently would otherwise each make their own map, and
 * Automerge would keep only one of them (and the entries in it).
 */
const GENESIS_ACTOR = '00'.repeat(40)

const genesisCache = new Map<string, { save: Uint8Array; hash: string }>()

function genesis(docId: string): { save: Uint8Array; hash: string } {
  let g = genesisCache.get(docId)
  if (g === undefined) {
    const doc = Automerge.change(
      Automerge.init<Record<string, unknown>>({ actor: GENESIS_ACTOR }),
      { time: 0, message: `genesis of ${docId}` },
      d => {
        for (const [k, v] of Object.entries(documentSchema(docId))) d[k] = v
      }
    )
    g = { save: Automerge.save(doc), hash: Automerge.getHeads(doc)[0] as string }
    if (genesisCache.size > 1024) genesisCache.clear()
    genesisCache.set(docId, g)
  }
  return g
}

/** The hash of a document's genesis change. */
export function genesisHash(docId: string): string {
  return genesis(docId).hash
}

export interface DocumentContext {
  readonly fleetId: string
  readonly trust: TrustChain
  readonly ed: Ed25519
  readonly store: Store
  /**
   * Called after every applied change, local or remote, with the batches that made it in the
   * order they were applied (each one verified and self-covering: fit to relay as it is), and
   * after a rebuild that dropped invalid changes (`rebuild`, no batches).
   */
  onChange?: (docId: string, heads: string[], source: ChangeSource, batches: SignedBatch[]) => void
  /** New equivocation evidence was recorded (found here, or received and verified). */
  onEquivocation?: (evidence: Equivocation) => void
  /** Held changes became invalid and were dropped (a new cut or new evidence). */
  onInvalidated?: (docId: string, changes: InvalidatedChange[]) => void
}

export type ChangeSource = 'local' | 'remote' | 'rebuild'

/** A change a document held and dropped, and why: what a signing tool needs to re-sign it. */
export interface InvalidatedChange {
  hash: string
  actor: string
  seq: number
  /** Signer's public key, hex, and who the trust chain says it is (or was). */
  signer: string
  signerInfo: KeyInfo | undefined
  reason: InvalidReason
  time: number
  message: string | null
  /**
   * What the change did, as a value diff against the changes it built on (the first
   * `MAX_DIFFS_PER_REBUILD` dropped at once have one): what its author signs again
   * (`rhizome resign`) if it was honest.
   */
  diff?: DiffOp[]
}

/** A key plus the actor id (key + session) it writes as. */
export interface Signer {
  readonly pair: KeyPair
  readonly actor: string
}

/**
 * `invalid`: the batch verified, but none of its new changes is valid (outside a cut, after an
 * equivocation, or depending on such a change); nothing was applied and its sender is not at fault.
 */
export type AcceptStatus = 'applied' | 'duplicate' | 'pending' | 'invalid'

export interface AcceptResult {
  status: AcceptStatus
  /** Changes newly applied, including pending ones this batch released. */
  applied: number
  /** Changes of this batch dropped as invalid. */
  dropped?: number
  heads: string[]
}

export interface HistoryEntry {
  hash: string
  actor: string
  seq: number
  deps: string[]
  /** Signer's public key, hex. */
  signer: string
  /** Who the trust chain says the signer is or was, if anyone. */
  signerInfo: KeyInfo | undefined
  /** Author's clock, seconds since the epoch: informational, never used to decide anything. */
  time: number
  message: string | null
}

interface PendingBatch {
  batch: SignedBatch
  metas: readonly ChangeMeta[]
  size: number
}
interface IndexEntry {
  actor: string
  seq: number
  children: string[]
}

interface HeldSignature {
  actor: string
  seq: number
  sig: ChangeSignature
}

/** Stored signatures: per entry the actor, sequence number and signature of a held change. */
function encodeTips(tips: ReadonlyMap<string, HeldSignature>): Uint8Array {
  const w = new ByteWriter().varint(tips.size)
  for (const { actor, seq, sig } of tips.values()) {
    w.raw(fromHex(actor)).varint(seq).raw(sig.key).raw(fromHex(sig.hash)).raw(sig.signature)
  }
  return w.finish()
}

function decodeTips(bytes: Uint8Array): HeldSignature[] {
  const r = new ByteReader(bytes, 'stored signatures')
  const n = r.varint(1 << 24)
  const out = []
  for (let i = 0; i < n; i++) {
    out.push({
      actor: toHex(r.raw(40)),
      seq: r.varint(),
      sig: { key: r.raw(32).slice(), hash: toHex(r.raw(32)), signature: r.raw(64).slice() }
    })
  }
  r.end()
  return out
}

const VERIFIED = Symbol('rhizome.verified-batch')

/**
 * What `verifyBatch` returns: the batch, the changes it holds, and the document and trust version
 * it was judged under. Only this module can make one (the symbol is private to it), so
 * `SignedDocument.accept` can take one without parsing and verifying the batch a second time.
 */
export interface VerifiedBatch {
  /** The batch, with only the signatures its coverage rests on (each of them verified). */
  readonly batch: SignedBatch
  readonly docId: string
  /** `TrustChain.epoch` it was judged under: a later statement means judging it again. */
  readonly trustEpoch: number
  readonly metas: readonly ChangeMeta[]
  readonly [VERIFIED]: true
}

function isVerified(b: SignedBatch | VerifiedBatch): b is VerifiedBatch {
  return (b as Partial<VerifiedBatch>)[VERIFIED] === true
}

/**
 * The one place that decides whether `batch` may enter document `docId`: decode, check coverage
 * and signatures, check the signers may write the document. Throws a named error if not.
 */
export async function verifyBatch(
  ctx: Pick<DocumentContext, 'fleetId' | 'trust' | 'ed'>,
  docId: string,
  batch: SignedBatch,
  extraAnchors: ReadonlyMap<string, string> = new Map()
): Promise<VerifiedBatch> {
  if (batch.docId !== docId) {
    throw new WrongDocumentError(
      `batch for document "${batch.docId}" offered to document "${docId}"`
    )
  }
  const trustEpoch = ctx.trust.epoch
  // Some statement of the chain must have let the key write here (else UnknownKeyError or
  // OutOfScopeError: the sender is at fault); whether each change is still valid is judged later.
  const authorize = (keyHex: string): void => void ctx.trust.writeStanding(keyHex, docId)
  // Signers are named outside the chunks: a batch from keys that may not write here is refused
  // before its chunks are parsed (issue 10: one such batch used to hold the event loop for 25 s).
  for (const s of batch.signatures) authorize(toHex(s.key))
  const metas = readChanges(batch.chunks)
  // The genesis change is the same on every peer and needs no signature.
  const g = genesisHash(docId)
  const anchors = new Map(extraAnchors)
  for (const [hash, { key }] of ctx.trust.anchors(docId)) anchors.set(hash, key)
  const coverage = await verifyCoverage(
    ctx.fleetId,
    docId,
    metas.filter(m => m.hash !== g),
    batch.signatures,
    ctx.ed,
    authorize,
    anchors
  )
  return Object.freeze({
    batch:
      coverage.signatures.length === batch.signatures.length
        ? batch
        : { ...batch, signatures: coverage.signatures },
    docId,
    trustEpoch,
    metas: Object.freeze(metas),
    [VERIFIED]: true as const
  })
}

/**
 * Apply a batch's chunks (already verified). Single changes, the usual pushed batch, go through
 * `applyChanges`, measured 13-20% cheaper than `loadIncremental` (201 against 232 µs per change
 * into a 300-key map, Automerge 3.5); bundles need `loadIncremental`.
 */
function applyChunks<T>(doc: Automerge.Doc<T>, chunks: Uint8Array[]): Automerge.Doc<T> {
  if (chunks.every(isChangeChunk)) return Automerge.applyChanges(doc, chunks)[0]
  for (const chunk of chunks) doc = Automerge.loadIncremental(doc, chunk)
  return doc
}

export class SignedDocument<T = Record<string, unknown>> {
  readonly id: string
  private doc: Automerge.Doc<T>
  private readonly ctx: DocumentContext
  /**
   * Every signature held, by the hash of the change it signs. One on an actor's latest change
   * covers the actor's others; the ones below are kept too, because a later change may become
   * invalid (it depends on a change a cut excludes) and the valid part must still be provable
   * to peers. A catch-up batch brings one per actor, a pushed change its own.
   */
  private readonly tips = new Map<string, HeldSignature>()
  private pending: PendingBatch[] = []
  private pendingBytes = 0
  private lastStoredSeq = 0
  private batchesSinceSnapshot = 0
  private index: Map<string, IndexEntry> | undefined
  /** `writerKeys()` as of some heads: computed, or read from the store at load. */
  private writers: { heads: string[]; keys: string[] } | undefined
  /** The `writers` last stored (or read from the store). */
  private writersStored: { heads: string[]; keys: string[] } | undefined
  /** Per actor, its held changes' hashes by sequence number - 1 (kept with `index`). */
  private readonly chains = new Map<string, string[]>()
  /** Per actor, the evidence that it used a sequence number twice (the lowest such). */
  private readonly evidence = new Map<string, Equivocation>()
  /**
   * Actors whose evidence here does not verify alone: the held side's only signature sat on a
   * later change dropped since (a cut between the two). It still cuts the actor here (Automerge
   * cannot hold both changes), but is not passed on, since a peer would rightly refuse it; the
   * peers that hold the other side with its proof find the same conflict and send evidence that
   * verifies, which replaces this.
   */
  private readonly unproven = new Set<string>()
  /** Changes dropped as invalid (bounded): their descendants are dropped at once. */
  private readonly invalid = new Set<string>()
  /** The trust epoch the held changes were last judged under. */
  private judgedEpoch = -1
  private batchMemo: { doc: Automerge.Doc<T>; key: string; bytes: Uint8Array } | undefined
  /** Accepts and changes run one at a time, in arrival order. */
  private queue: Promise<unknown> = Promise.resolve()

  private constructor(ctx: DocumentContext, id: string, doc: Automerge.Doc<T>) {
    this.ctx = ctx
    this.id = id
    this.doc = doc
  }

  /**
   * Open a document from the store: its snapshot, then the batches stored after it, then its
   * equivocation evidence; held changes the trust chain has cut since are dropped.
   */
  static async load<T>(ctx: DocumentContext, id: string): Promise<SignedDocument<T>> {
    const snap = await ctx.store.getSnapshot(id)
    const d = new SignedDocument<T>(
      ctx,
      id,
      Automerge.load<T>(snap === undefined ? genesis(id).save : snap.doc)
    )
    if (snap !== undefined) {
      for (const t of decodeTips(snap.signatures)) d.tips.set(t.sig.hash, t)
      d.lastStoredSeq = snap.upTo
    }
    for (const { seq, bytes } of await ctx.store.batchesAfter(id, d.lastStoredSeq)) {
      try {
        const batch = decodeBatch(bytes)
        d.doc = applyChunks(d.doc, batch.chunks)
        d.recordTips(batch, readChanges(batch.chunks))
      } catch (err) {
        log.error('document %s: stored batch %d does not load, skipped: %e', id, seq, err)
      }
      d.lastStoredSeq = seq
      d.batchesSinceSnapshot++
    }
    for (const [key, bytes] of await ctx.store.listMeta(`${EVIDENCE_PREFIX}${id}/`)) {
      try {
        const e = decodeEquivocation(bytes, MAX_BATCH_BYTES * 2)
        const hashes = conflictIn(
          e.batches.flatMap(b => readChanges(b.chunks)),
          e.actor,
          e.seq,
          e.previous
        )
        if (hashes !== undefined) {
          const held = { ...e, docId: id, hashes }
          d.evidence.set(e.actor, held)
          if (!(await d.proves(held))) d.unproven.add(e.actor)
        }
      } catch (err) {
        log.error('document %s: stored evidence %s does not load, skipped: %e', id, key, err)
      }
    }
    await d.revalidateNow()
    const writers = await ctx.store.getMeta(WRITERS_PREFIX + id)
    if (writers !== undefined) {
      try {
        d.writers = d.writersStored = decodeWriters(writers)
      } catch (err) {
        log.error('document %s: stored writers do not load, ignored: %e', id, err)
      }
    }
    return d
  }

  /** The current value. Treat as read-only; write through `change`. */
  get value(): Automerge.Doc<T> {
    return this.doc
  }

  /** The revision: the hashes of the document's heads, sorted. */
  get heads(): string[] {
    return Automerge.getHeads(this.doc).sort()
  }

  /** Does it hold nothing but its genesis change (nothing was ever validly written to it)? */
  get isEmpty(): boolean {
    const heads = Automerge.getHeads(this.doc)
    return heads.length === 1 && heads[0] === genesisHash(this.id) && this.pending.length === 0
  }

  get pendingCount(): number {
    return this.pending.length
  }

  /** Changes the pending batches build on that this document lacks and no pending batch holds. */
  missingDeps(): string[] {
    if (this.pending.length === 0) return []
    const index = this.changeIndex()
    const inPending = new Set(this.pending.flatMap(p => p.metas.map(m => m.hash)))
    const out = new Set<string>()
    for (const p of this.pending) {
      for (const m of p.metas) {
        for (const d of m.deps) if (!index.has(d) && !inPending.has(d)) out.add(d)
      }
    }
    return [...out]
  }

  /** The Automerge document, for the sync protocol and for reading history. */
  get automerge(): Automerge.Doc<T> {
    return this.doc
  }

  /**
   * Does this document hold all of these changes? Answered from the change index: Automerge's
   * `hasHeads` looks each one up with `getChangeByHash`, which builds the change, and was 4.6%
   * of the daemons' CPU in a bench/mesh.bench.ts profile, since every batch received asks this.
   */
  has(hashes: string[]): boolean {
    const index = this.changeIndex()
    return hashes.every(h => index.has(h))
  }

  /** The keys (hex) that signed the changes this document holds: all of them valid. */
  writerKeys(): string[] {
    const heads = Automerge.getHeads(this.doc)
    if (this.writers !== undefined && sameHeads(this.writers.heads, heads)) {
      return [...this.writers.keys]
    }
    this.changeIndex()
    const keys = new Set<string>()
    for (const actor of this.chains.keys()) {
      if (actor !== GENESIS_ACTOR) keys.add(actor.slice(0, 64))
    }
    this.writers = { heads, keys: [...keys].sort() }
    return [...this.writers.keys]
  }

  /**
   * The cut a trust statement should name for `keyHex` here to keep everything this document
   * holds of it valid: per actor of the key, its latest change (`rhizome` fills revocations in
   * from this). With `heads`, the cut at that earlier revision (a key compromised since).
   */
  cutFor(keyHex: string, heads?: string[]): CutTip[] {
    this.changeIndex()
    const out: CutTip[] = []
    if (heads !== undefined) {
      // Earlier than now: the key's latest change per actor among these heads' ancestors.
      const last = new Map<string, CutTip>()
      const metas = new Map(Automerge.getChangesMetaSince(this.doc, []).map(m => [m.hash, m]))
      const seen = new Set<string>()
      const stack = [...heads]
      while (stack.length > 0) {
        const m = metas.get(stack.pop() as string)
        if (m === undefined || seen.has(m.hash)) continue
        seen.add(m.hash)
        stack.push(...m.deps)
        if (m.actor.slice(0, 64) !== keyHex) continue
        if ((last.get(m.actor)?.seq ?? 0) < m.seq) {
          last.set(m.actor, { actor: m.actor, seq: m.seq, hash: m.hash })
        }
      }
      out.push(...last.values())
    } else {
      for (const [actor, chain] of this.chains) {
        if (actor.slice(0, 64) !== keyHex || chain.length === 0) continue
        out.push({ actor, seq: chain.length, hash: chain.at(-1) as string })
      }
    }
    return out.sort((a, b) => (a.actor < b.actor ? -1 : a.actor > b.actor ? 1 : 0))
  }

  /** The equivocation evidence held, one per actor: to pass on to peers and into bundles. */
  equivocations(): Equivocation[] {
    return [...this.evidence.values()].filter(e => !this.unproven.has(e.actor))
  }

  /**
   * Make a change as `signer` and return its signed batch (to publish to peers).
   * Returns undefined when `fn` changed nothing.
   */
  change(
    signer: Signer,
    fn: Automerge.ChangeFn<T>,
    message?: string
  ): Promise<SignedBatch | undefined> {
    return this.serial(async () => {
      this.ctx.trust.authorize(toHex(signer.pair.publicKey), this.id)
      let base = this.doc
      if (Automerge.getActorId(base) !== signer.actor) {
        base = Automerge.clone(base, { actor: signer.actor })
      }
      const before = Automerge.getHeads(base)
      const next = Automerge.change(base, message === undefined ? {} : { message }, fn)
      const after = Automerge.getHeads(next)
      if (after.length === before.length && after.every(h => before.includes(h))) return undefined
      const change = Automerge.getLastLocalChange(next) as Uint8Array
      const meta = readChanges([change])
      const hash = (meta[0] as ChangeMeta).hash
      // The same rules as for a peer's change: one this replica alone took for valid would never
      // converge (an actor with equivocation evidence against it, say, writing on).
      const verdict = changeVerdict(this.validity(), meta[0] as ChangeMeta)
      if (verdict !== undefined) {
        throw new CutWriterError(
          `document "${this.id}": a change by actor ${signer.actor.slice(0, 16)}… would not be valid (${verdict}); nothing was written. Sign with a new actor (every rhizome command makes one)`
        )
      }
      const batch: SignedBatch = {
        docId: this.id,
        chunks: [change],
        signatures: [await signChange(signer.pair, this.ctx.fleetId, this.id, hash, this.ctx.ed)]
      }
      this.doc = next
      await this.persist(batch, meta)
      this.ctx.onChange?.(this.id, this.heads, 'local', [batch])
      return batch
    })
  }

  /**
   * Verify, apply and persist a batch from elsewhere. Throws a named error if it is invalid;
   * drops (and reports in `dropped`) the changes that verify but are not valid. A
   * `VerifiedBatch` for this document under the trust epoch in force is not verified again (a
   * replica verifies a batch for a new document before creating it).
   */
  accept(input: SignedBatch | VerifiedBatch): Promise<AcceptResult> {
    const offered = isVerified(input) ? input.batch : input
    return this.serial(async () => {
      await this.revalidateNow()
      // Every change a valid batch carries is an ancestor of (or is) a change one of its
      // signatures names, so when we hold every named change the batch has nothing for us: skip
      // parsing and verifying it. In a mesh most batches a node receives are such duplicates (its
      // neighbours push a new change at once). A batch that is invalid as well as redundant is
      // dropped here without a verdict on its sender; it could not have changed anything.
      if (offered.signatures.length > 0) {
        const index = this.changeIndex()
        const named = offered.signatures.map(s => s.hash)
        if (named.every(h => index.has(h))) {
          return { status: 'duplicate', applied: 0, heads: this.heads }
        }
        if (named.every(h => index.has(h) || this.invalid.has(h))) {
          return { status: 'invalid', applied: 0, heads: this.heads }
        }
      }
      const verified =
        isVerified(input) && input.docId === this.id && input.trustEpoch === this.ctx.trust.epoch
          ? input
          : await this.verifyBatch(offered)
      const { batch, metas } = verified
      if (metas.length === 0 || this.has(metas.map(m => m.hash))) {
        return { status: 'duplicate', applied: 0, heads: this.heads }
      }
      if (!this.depsPresent(metas)) {
        this.addPending(batch, metas)
        return { status: 'pending', applied: 0, heads: this.heads }
      }
      const admitted = await this.admit(batch, metas)
      const batches = admitted.batch === undefined ? [] : [admitted.batch]
      const released = await this.releasePending(batches)
      if (batches.length > 0) this.ctx.onChange?.(this.id, this.heads, 'remote', batches)
      const dropped = admitted.dropped > 0 ? { dropped: admitted.dropped } : {}
      return admitted.applied === 0 && released === 0
        ? { status: 'invalid', applied: 0, ...dropped, heads: this.heads }
        : { status: 'applied', applied: admitted.applied + released, ...dropped, heads: this.heads }
    })
  }

  /**
   * Take equivocation evidence from elsewhere (a peer, a bundle): verified on its own, without
   * the document's other changes. Returns false when it adds nothing (this actor is known to
   * have equivocated at the same or a lower sequence number). Throws a named error for evidence
   * that does not verify or shows no conflict.
   */
  acceptEquivocation(bytes: Uint8Array): Promise<boolean> {
    return this.serial(async () => {
      const e = decodeEquivocation(bytes)
      const metas: ChangeMeta[] = []
      for (const b of e.batches) metas.push(...(await this.verifyBatch(b)).metas)
      const hashes = conflictIn(metas, e.actor, e.seq, e.previous)
      if (hashes === undefined) {
        throw new MalformedInputError(
          `equivocation evidence for document "${this.id}" does not hold two different changes of actor ${e.actor.slice(0, 16)}… with sequence number ${e.seq}`
        )
      }
      // Its batches were verified just above: it proves itself.
      const added = await this.recordEquivocation({ ...e, docId: this.id, hashes }, true)
      if (added) await this.revalidateNow()
      return added
    })
  }

  /**
   * Judge every held change again (after a new trust statement): drop the ones a new cut makes
   * invalid and rebuild the document from the rest.
   */
  revalidate(): Promise<void> {
    return this.serial(() => this.revalidateNow())
  }

  /** Decode, check coverage and signatures, check the signers may write this document. */
  verifyBatch(batch: SignedBatch): Promise<VerifiedBatch> {
    const anchors = new Map<string, string>()
    for (const e of this.evidence.values()) {
      if (e.previous !== null) anchors.set(e.previous, actorKeyHex(e.actor))
    }
    return verifyBatch(this.ctx, this.id, batch, anchors)
  }

  /**
   * A self-covering batch holding `hashes` and every change of this document that descends
   * from them (a peer that lacks a change lacks its descendants too), with the signatures that
   * cover them: one per actor in the usual case, none for an actor a cut or evidence anchors.
   */
  batchFor(hashes: string[]): SignedBatch {
    const index = this.changeIndex()
    const closure = new Set<string>()
    const stack = hashes.filter(h => index.has(h))
    while (stack.length > 0) {
      const h = stack.pop() as string
      if (closure.has(h)) continue
      closure.add(h)
      for (const c of (index.get(h) as IndexEntry).children) stack.push(c)
    }
    // The genesis change is the same on every peer: it is never sent and needs no signature.
    closure.delete(genesisHash(this.id))
    const anchors = this.ctx.trust.anchors(this.id)
    const provable = (actor: string, h: string): boolean =>
      this.tips.has(h) || anchors.has(h) || this.evidence.get(actor)?.previous === h
    let signatures: ChangeSignature[] = []
    for (let round = 0; ; round++) {
      const actors = new Set<string>()
      for (const h of closure) actors.add((index.get(h) as IndexEntry).actor)
      signatures = []
      const unprovable: string[] = []
      for (const actor of actors) {
        // Its changes in the closure are the top of its chain (each descends from the one before).
        const chain = this.chains.get(actor) ?? []
        let top = chain.length - 1
        while (top >= 0 && !closure.has(chain[top] as string)) top--
        let i = top
        while (i >= 0 && closure.has(chain[i] as string) && !provable(actor, chain[i] as string)) {
          i--
        }
        if (i < top) unprovable.push(chain[i + 1] as string)
        else {
          const sig = this.tips.get(chain[top] as string)
          if (sig !== undefined) signatures.push(sig.sig)
        }
      }
      if (unprovable.length === 0) break
      // Valid here, but what covered them was a signature on a later change that is no longer
      // valid: a peer would refuse them as unsigned. Leave them (and what builds on them) out;
      // their signer can sign them again (the replica's `invalidated` event says which).
      if (round === 0) {
        log.error(
          'document %s: no covering signature held for the latest changes of %d actor(s); they are not sent',
          this.id,
          unprovable.length
        )
      }
      const drop = [...unprovable]
      while (drop.length > 0) {
        const h = drop.pop() as string
        if (!closure.delete(h)) continue
        for (const c of (index.get(h) as IndexEntry).children) drop.push(c)
      }
    }
    const list = [...closure]
    return {
      docId: this.id,
      chunks: list.length === 0 ? [] : [Automerge.saveBundle(this.doc, list)],
      signatures
    }
  }

  /**
   * `encodeBatch(batchFor(hashes))`, remembered while the document is unchanged: a change relayed
   * to several peers at once is bundled and encoded once.
   */
  encodedBatchFor(hashes: string[]): Uint8Array {
    const key = [...hashes].sort().join()
    const memo = this.batchMemo
    if (memo !== undefined && memo.doc === this.doc && memo.key === key) return memo.bytes
    const bytes = encodeBatch(this.batchFor(hashes))
    this.batchMemo = { doc: this.doc, key, bytes }
    return bytes
  }

  /**
   * Update a peer's sync state from its Automerge sync message. Changes enter a document only
   * through `accept`, so a message that still carries changes is refused (`UnsignedChangeError`).
   * Automerge outdates the document it is given, so the document it returns replaces ours.
   *
   * A change the peer still needs after we sent it never reached its document: it waits there for
   * a dependency, or its pending set was full and it was dropped. Automerge would not send it
   * again (it is in `sentHashes`), so it is forgotten there and the next message sends it.
   */
  receiveSyncMessage(state: Automerge.SyncState, message: Uint8Array): Automerge.SyncState {
    let decoded: Automerge.DecodedSyncMessage
    try {
      decoded = Automerge.decodeSyncMessage(message)
    } catch (err) {
      throw new MalformedInputError(
        `an undecodable sync message for document "${this.id}": ${(err as Error).message}`
      )
    }
    if (decoded.changes.length > 0) {
      throw new UnsignedChangeError(
        `a sync message for document "${this.id}" carries ${decoded.changes.length} change chunk(s) outside a signed batch`
      )
    }
    const [doc, next] = Automerge.receiveSyncMessage(this.doc, state, message)
    this.doc = doc
    // At run time `sentHashes` is a record of hash → true (its declared type says string[]).
    const sent = next.sentHashes as unknown as Record<string, boolean>
    for (const h of decoded.need) delete sent[h]
    return next
  }

  /** Every signed change, oldest first (topologically), with who signed it. The genesis change is left out. */
  history(): HistoryEntry[] {
    const g = genesisHash(this.id)
    return Automerge.getChangesMetaSince(this.doc, [])
      .filter(m => m.hash !== g)
      .map(m => {
        const signer = actorKeyHex(m.actor)
        return {
          hash: m.hash,
          actor: m.actor,
          seq: m.seq,
          deps: m.deps,
          signer,
          signerInfo: this.ctx.trust.describe(signer),
          time: m.time,
          message: m.message
        }
      })
  }

  /**
   * Hashes of every signed change, in the order this replica applied them (dependencies first),
   * the genesis change left out. From the change index: no walk of Automerge's history.
   */
  changeHashes(): string[] {
    const g = genesisHash(this.id)
    return [...this.changeIndex().keys()].filter(h => h !== g)
  }

  /** The document's value at a past revision. */
  valueAt(heads: string[]): T {
    return Automerge.toJS<T>(Automerge.view(this.doc, heads))
  }

  /** Write a snapshot and compact the batches it includes. */
  snapshot(): Promise<void> {
    return this.serial(async () => {
      if (this.batchesSinceSnapshot === 0) {
        // Nothing new since the last snapshot; the writers it stored may be missing (a store
        // from an older version) or the memo newer: store them if they are at hand.
        const heads = Automerge.getHeads(this.doc)
        const w = this.writers
        if (w !== undefined && sameHeads(w.heads, heads) && w !== this.writersStored) {
          await this.storeWriters()
        }
        return
      }
      await this.writeSnapshot()
    })
  }

  private async storeWriters(): Promise<void> {
    const keys = this.writerKeys()
    await this.ctx.store.putMeta(
      WRITERS_PREFIX + this.id,
      encodeWriters(Automerge.getHeads(this.doc), keys)
    )
    this.writersStored = this.writers
  }

  private async writeSnapshot(): Promise<void> {
    await this.ctx.store.putSnapshot(this.id, {
      upTo: this.lastStoredSeq,
      doc: Automerge.save(this.doc),
      signatures: encodeTips(this.tips)
    })
    await this.storeWriters()
    this.batchesSinceSnapshot = 0
  }

  private serial<R>(fn: () => Promise<R>): Promise<R> {
    const run = this.queue.then(fn, fn)
    this.queue = run.catch(() => {})
    return run
  }

  /** Are the changes `metas` build on held, or known invalid (then so are their dependents)? */
  private depsPresent(metas: readonly ChangeMeta[]): boolean {
    const inBatch = new Set(metas.map(m => m.hash))
    const index = this.changeIndex()
    for (const m of metas) {
      for (const d of m.deps) {
        if (!inBatch.has(d) && !index.has(d) && !this.invalid.has(d)) return false
      }
    }
    return true
  }

  private validity(): ValidityContext {
    const equivocations = new Map<string, number>()
    for (const [actor, e] of this.evidence) equivocations.set(actor, e.seq)
    return { docId: this.id, trust: this.ctx.trust, equivocations, genesis: genesisHash(this.id) }
  }

  /**
   * Apply the valid part of a verified batch whose dependencies are present; record the
   * equivocations it shows first. Returns what was applied and the batch as stored (the valid
   * changes only).
   */
  private async admit(
    batch: SignedBatch,
    metas: readonly ChangeMeta[]
  ): Promise<{ applied: number; dropped: number; batch: SignedBatch | undefined }> {
    let index = this.changeIndex()
    if (await this.recordConflicts(batch, metas)) {
      await this.revalidateNow()
      index = this.changeIndex()
    }
    const g = genesisHash(this.id)
    const fresh = metas.filter(m => !index.has(m.hash) && m.hash !== g)
    const bad = judgeChanges(this.validity(), fresh, h => this.invalid.has(h))
    for (const h of bad.keys()) this.forget(h)
    const good = fresh.filter(m => !bad.has(m.hash))
    if (good.length === 0) return { applied: 0, dropped: bad.size, batch: undefined }
    checkActorChains(
      this.id,
      good,
      h => index.get(h),
      actor => this.chains.get(actor)?.length ?? 0
    )
    if (bad.size === 0) {
      return { applied: await this.apply(batch, metas), dropped: 0, batch }
    }
    // Part of the batch is invalid: apply and store only the rest, one change chunk each (the
    // rare path: right after a cut, from a peer that has not seen it yet).
    const keep = new Set(good.map(m => m.hash))
    const chunks = selectChanges(batch, keep)
    const valid: SignedBatch = {
      docId: this.id,
      chunks,
      signatures: batch.signatures.filter(s => keep.has(s.hash))
    }
    this.doc = Automerge.applyChanges(this.doc, chunks)[0]
    const stored =
      chunks.length <= MAX_CHUNKS_PER_BATCH
        ? valid
        : { ...valid, chunks: [Automerge.saveBundle(this.doc, [...keep])] }
    await this.persist(stored, good)
    return { applied: good.length, dropped: bad.size, batch: stored }
  }

  private async apply(batch: SignedBatch, metas: readonly ChangeMeta[]): Promise<number> {
    const index = this.changeIndex()
    const fresh = metas.filter(m => !index.has(m.hash)).length
    if (
      metas.length >= LOAD_WHOLE_MIN_CHANGES &&
      metas.length > Automerge.stats(this.doc).numChanges
    ) {
      // Catch-up into a small document: loading both as one is ~10x faster than applying the
      // batch onto it incrementally (measured: 10,000 changes in 0.4 s instead of 4.6 s).
      this.doc = Automerge.load<T>(concatBytes(Automerge.save(this.doc), ...batch.chunks))
    } else {
      this.doc = applyChunks(this.doc, batch.chunks)
    }
    await this.persist(batch, metas)
    return fresh
  }

  private async persist(batch: SignedBatch, metas: readonly ChangeMeta[]): Promise<void> {
    // Signatures and index in the same tick as the document changed: a sync message generated
    // while the append is in flight names the new changes, and `batchFor` must cover them.
    this.recordTips(batch, metas)
    if (this.index !== undefined) for (const m of metas) this.indexAdd(m)
    this.lastStoredSeq = await this.ctx.store.appendBatch(this.id, encodeBatch(batch))
    if (++this.batchesSinceSnapshot >= SNAPSHOT_EVERY_BATCHES) await this.writeSnapshot()
  }

  private recordTips(batch: SignedBatch, metas: readonly ChangeMeta[]): void {
    const byHash = new Map(metas.map(m => [m.hash, m]))
    for (const sig of batch.signatures) {
      const m = byHash.get(sig.hash)
      if (m !== undefined && !this.tips.has(sig.hash)) {
        this.tips.set(sig.hash, { actor: m.actor, seq: m.seq, sig })
      }
    }
  }

  /**
   * Find, among a verified batch's changes, any that share an actor and sequence number with a
   * held change or with another change of the batch, and record the evidence. Returns whether
   * anything new was recorded.
   */
  private async recordConflicts(batch: SignedBatch, metas: readonly ChangeMeta[]) {
    const seen = new Map<string, ChangeMeta>()
    const index = this.changeIndex()
    let recorded = false
    for (const m of metas) {
      if (index.has(m.hash)) continue
      const slot = `${m.actor}/${m.seq}`
      const held = this.chains.get(m.actor)?.[m.seq - 1]
      const twin = seen.get(slot)
      seen.set(slot, m)
      const other = held ?? twin?.hash
      if (other === undefined || other === m.hash) continue
      const known = this.evidence.get(m.actor)
      if (known !== undefined && known.seq <= m.seq) continue
      const previous = m.seq === 1 ? null : previousOf(m, metas, this.chains)
      if (m.seq > 1 && previous === null) continue
      const from = (ms: readonly ChangeMeta[]): Set<string> =>
        new Set(ms.filter(x => x.actor === m.actor && x.seq >= m.seq).map(x => x.hash))
      const theirs = this.evidenceBatch(batch, from(metas))
      const sides = held === undefined ? [theirs] : [this.heldChainBatch(m.actor, m.seq), theirs]
      const hashes = [m.hash, other].sort() as [string, string]
      if (
        await this.recordEquivocation({
          docId: this.id,
          actor: m.actor,
          seq: m.seq,
          previous,
          hashes,
          batches: sides
        })
      ) {
        recorded = true
      }
    }
    return recorded
  }

  /** Whether `e` verifies on its own, as a peer taking it (`acceptEquivocation`) checks it. */
  private async proves(e: Equivocation): Promise<boolean> {
    try {
      for (const b of e.batches) await this.verifyBatch(b)
      return true
    } catch {
      return false
    }
  }

  /** `batch` cut down to `keep` (an actor's chain) with its signatures, or whole if too long. */
  private evidenceBatch(batch: SignedBatch, keep: Set<string>): SignedBatch {
    const chunks = selectChanges(batch, keep)
    if (chunks.length > MAX_CHUNKS_PER_BATCH) return batch
    return { docId: this.id, chunks, signatures: batch.signatures.filter(s => keep.has(s.hash)) }
  }

  /** The held chain of `actor` from `seq` up, with the signature on its tip, as a batch. */
  private heldChainBatch(actor: string, seq: number): SignedBatch {
    const hashes = (this.chains.get(actor) ?? []).slice(seq - 1)
    const tip = this.tips.get(hashes.at(-1) as string)
    return {
      docId: this.id,
      chunks: [Automerge.saveBundle(this.doc, hashes)],
      signatures: tip === undefined ? [] : [tip.sig]
    }
  }

  /** Keep evidence (persisted, announced) if it says more than what is held. */
  /** `proven`: whether `e` verifies alone, if the caller knows (else it is checked here). */
  private async recordEquivocation(e: Equivocation, proven?: boolean): Promise<boolean> {
    const known = this.evidence.get(e.actor)
    proven ??= await this.proves(e)
    if (known !== undefined && known.seq === e.seq && proven && this.unproven.has(e.actor)) {
      // The same conflict, now with evidence that verifies alone: keep that one, to pass on.
      this.unproven.delete(e.actor)
      this.evidence.set(e.actor, e)
      await this.ctx.store.putMeta(`${EVIDENCE_PREFIX}${this.id}/${e.actor}`, encodeEquivocation(e))
      this.ctx.onEquivocation?.(e)
      return true
    }
    if (known !== undefined && known.seq <= e.seq) return false
    if (known === undefined && this.evidence.size >= MAX_EQUIVOCATIONS_PER_DOCUMENT) {
      log.error(
        'document %s: %d equivocating actors are remembered already; evidence against actor %s is not kept',
        this.id,
        MAX_EQUIVOCATIONS_PER_DOCUMENT,
        e.actor.slice(0, 16)
      )
      return false
    }
    this.evidence.set(e.actor, e)
    if (proven) this.unproven.delete(e.actor)
    else this.unproven.add(e.actor)
    this.evidenceChanged = true
    await this.ctx.store.putMeta(`${EVIDENCE_PREFIX}${this.id}/${e.actor}`, encodeEquivocation(e))
    log.error(
      'document %s: key %s used sequence number %d of actor %s for two different changes (%s, %s): it has leaked; the actor is cut before it',
      this.id,
      e.actor.slice(0, 16),
      e.seq,
      e.actor.slice(64),
      e.hashes[0].slice(0, 12),
      e.hashes[1].slice(0, 12)
    )
    // Announced (and so passed on) only once it verifies alone.
    if (proven) this.ctx.onEquivocation?.(e)
    return true
  }

  /**
   * Judge every held change under the trust chain and evidence held now; when some are no
   * longer valid, rebuild the document from the rest and replace the stored batches by a
   * snapshot of it. Cheap when no statement held cuts anyone in this document.
   */
  private async revalidateNow(): Promise<void> {
    const trust = this.ctx.trust
    if (this.judgedEpoch === trust.epoch && !this.evidenceChanged) return
    this.judgedEpoch = trust.epoch
    this.evidenceChanged = false
    // Cheap when nothing held cuts anyone here: no change index, no metas (opening a store must
    // stay fast). Not keyed on the keys of the held signatures: a change whose only signature sat
    // on a change dropped since (as depending on an invalid one) has its key named nowhere.
    const touched = this.evidence.size > 0 || trust.mayInvalidate(this.id)
    if (!touched) return
    const metas = Automerge.getChangesMetaSince(this.doc, [])
    const bad = judgeChanges(this.validity(), metas)
    if (bad.size === 0) return
    const g = genesisHash(this.id)
    const keep = metas.filter(m => !bad.has(m.hash) && m.hash !== g).map(m => m.hash)
    let next = Automerge.load<T>(genesis(this.id).save)
    if (keep.length > 0) {
      next = Automerge.loadIncremental(next, Automerge.saveBundle(this.doc, keep))
    }
    const dropped: InvalidatedChange[] = metas
      .filter(m => bad.has(m.hash))
      .map((m, i) => {
        const signer = actorKeyHex(m.actor)
        const diff =
          i < MAX_DIFFS_PER_REBUILD
            ? diffMaps(
                (plainValue(this.valueAt(m.deps)) ?? {}) as Record<string, unknown>,
                (plainValue(this.valueAt([m.hash])) ?? {}) as Record<string, unknown>
              )
            : undefined
        return {
          ...(diff === undefined ? {} : { diff }),
          hash: m.hash,
          actor: m.actor,
          seq: m.seq,
          signer,
          signerInfo: trust.describe(signer),
          reason: bad.get(m.hash) as InvalidReason,
          time: m.time,
          message: m.message
        }
      })
    for (const h of bad.keys()) this.tips.delete(h)
    for (const h of bad.keys()) this.forget(h)
    this.doc = next
    this.index = undefined
    this.chains.clear()
    this.batchMemo = undefined
    await this.writeSnapshot()
    log(
      'document %s: %d change(s) no longer valid, dropped; rebuilt from %d',
      this.id,
      bad.size,
      keep.length
    )
    this.ctx.onChange?.(this.id, this.heads, 'rebuild', [])
    this.ctx.onInvalidated?.(this.id, dropped)
  }

  private evidenceChanged = false

  /** Remember a dropped change (bounded: the oldest are forgotten first). */
  private forget(hash: string): void {
    if (this.invalid.size >= MAX_REMEMBERED_INVALID) {
      this.invalid.delete(this.invalid.values().next().value as string)
    }
    this.invalid.add(hash)
  }

  private addPending(batch: SignedBatch, metas: readonly ChangeMeta[]): void {
    const size = batch.chunks.reduce((s, c) => s + c.length, 0)
    if (
      this.pending.length >= MAX_PENDING_BATCHES ||
      this.pendingBytes + size > MAX_PENDING_BYTES
    ) {
      throw new PendingSetFullError(
        `document "${this.id}": ${this.pending.length} batches (${this.pendingBytes} bytes) already wait for missing dependencies (bounds: ${MAX_PENDING_BATCHES} batches, ${MAX_PENDING_BYTES} bytes); this one is dropped and will be fetched again by sync`
      )
    }
    this.pending.push({ batch, metas, size })
    this.pendingBytes += size
  }

  /** Apply every pending batch whose dependencies are now present; `applied` receives them in order. */
  private async releasePending(appliedBatches: SignedBatch[]): Promise<number> {
    let applied = 0
    let progress = true
    while (progress && this.pending.length > 0) {
      progress = false
      for (const p of [...this.pending]) {
        if (this.has(p.metas.map(m => m.hash))) {
          this.dropPending(p)
          progress = true
        } else if (this.depsPresent(p.metas)) {
          this.dropPending(p)
          progress = true
          try {
            const r = await this.admit(p.batch, p.metas)
            applied += r.applied
            if (r.batch !== undefined) appliedBatches.push(r.batch)
          } catch (err) {
            // Its sender is long gone; the batch that released it is not to blame.
            log.error('document %s: a pending batch is dropped: %e', this.id, err)
          }
        }
      }
    }
    return applied
  }

  private dropPending(p: PendingBatch): void {
    this.pending = this.pending.filter(x => x !== p)
    this.pendingBytes -= p.size
  }

  private changeIndex(): Map<string, IndexEntry> {
    if (this.index === undefined) {
      this.index = new Map()
      this.chains.clear()
      for (const m of Automerge.getChangesMetaSince(this.doc, [])) this.indexAdd(m)
    }
    return this.index
  }

  private indexAdd(m: { hash: string; actor: string; seq: number; deps: string[] }): void {
    const index = this.index as Map<string, IndexEntry>
    if (index.has(m.hash)) return
    index.set(m.hash, { actor: m.actor, seq: m.seq, children: [] })
    let chain = this.chains.get(m.actor)
    if (chain === undefined) this.chains.set(m.actor, (chain = []))
    chain[m.seq - 1] = m.hash
    for (const d of m.deps) index.get(d)?.children.push(m.hash)
  }
}

/** The hash of `m`'s actor's previous change, found among its dependencies (in `metas` or held). */
function previousOf(
  m: ChangeMeta,
  metas: readonly ChangeMeta[],
  chains: ReadonlyMap<string, string[]>
): string | null {
  const held = chains.get(m.actor)?.[m.seq - 2]
  if (held !== undefined && m.deps.includes(held)) return held
  for (const x of metas) {
    if (x.actor === m.actor && x.seq === m.seq - 1 && m.deps.includes(x.hash)) return x.hash
  }
  return null
}
