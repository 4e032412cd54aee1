/**
 * A replica of one fleet: its trust chain, its signed documents and the store behind them.
 * Browser-safe; the network layer (mesh/) drives it through `accept`, `batchFor` and events.
 *
 * @example
 * ```ts
 * const replica = await Replica.open({ store: new MemoryStore(), genesis, ed })
 * const fleet = await replica.open('fleet')
 * const batch = await fleet.change(signer, d => { d.defaults = { settings: { ntp: 'pool.ntp.org' } } })
 * await otherReplica.accept(batch)        // on another device, after it travelled there
 * ```
 */
import { TypedEventEmitter, type AbortOptions } from '@libp2p/interface'
import { logger } from '@libp2p/logger'
import { newActorId, type SignedBatch } from './signed-change.ts'
import {
  SignedDocument,
  verifyBatch,
  type AcceptResult,
  type ChangeSource,
  type DocumentContext,
  type InvalidatedChange,
  type Signer
} from './document.ts'
import { decodeEquivocation, type Equivocation } from './equivocation.ts'
import { decodeBeacon, newerBeacon, verifyBeacon, type Beacon, type HeldState } from './beacon.ts'
import {
  decodeTrustStatement,
  encodeTrustStatement,
  statementHash,
  TrustChain,
  type CutTip,
  type SignedTrustStatement,
  type TrustFork
} from './trust.ts'
import { ClosedError, InvalidTrustStatementError, MalformedInputError } from './errors.ts'
import type { Ed25519 } from './ed25519.ts'
import type { KeyPair } from './keys.ts'
import type { Store } from './store.ts'

const log = logger('rhizome:crdt:replica')

/** Document ids: lower-case words separated by `/`, `-`, `_` or `.`; at most 128 bytes. */
export const DOC_ID_PATTERN = /^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/
export const MAX_DOCUMENTS = 1024
/**
 * Documents opened but never written (only their genesis change) kept open at once: a peer's
 * sync message or a reader may name any id, and that must not use up `MAX_DOCUMENTS`, be stored,
 * or be announced to peers (issue 10: 1,100 made-up ids once blocked every new document).
 */
export const MAX_EMPTY_DOCUMENTS = 64
/** Store meta keys of trust statements held beside the chain (fork branches). */
const BRANCH_PREFIX = 'trust-branch/'
/** Store meta key of the newest freeze beacon held. */
const BEACON_KEY = 'beacon'

export function checkDocId(id: string): void {
  if (id.length > 128 || !DOC_ID_PATTERN.test(id)) {
    throw new MalformedInputError(
      `"${id.slice(0, 40)}" is not a document id (lower-case words joined by / - _ or .)`
    )
  }
}

export interface ReplicaOptions {
  store: Store
  ed: Ed25519
  /** Required the first time a store is opened; afterwards the stored chain is used. */
  genesis?: SignedTrustStatement
}

export interface ChangeEventDetail {
  docId: string
  heads: string[]
  source: ChangeSource
  /** The verified batches that made this change, in the order they were applied. */
  batches: SignedBatch[]
}

export interface TrustEventDetail {
  /** The version of the trust statement just added. */
  version: number
}

export interface InvalidatedEventDetail {
  docId: string
  changes: InvalidatedChange[]
}

/**
 * What a replica announces: a document changed (`change`), a trust statement was added
 * (`trust`), two validly signed statements claim one version (`fork`: trust is halted until
 * resolved), a key was caught using one sequence number twice (`equivocation`: it has leaked),
 * held changes became invalid and were dropped (`invalidated`: honest ones may need re-signing).
 */
export interface ReplicaEvents {
  change: CustomEvent<ChangeEventDetail>
  trust: CustomEvent<TrustEventDetail>
  fork: CustomEvent<TrustFork>
  equivocation: CustomEvent<Equivocation>
  invalidated: CustomEvent<InvalidatedEventDetail>
  /** A newer freeze beacon (crdt/beacon.ts) was taken: pass it on. */
  beacon: CustomEvent<Beacon>
}

export class Replica extends TypedEventEmitter<ReplicaEvents> {
  readonly store: Store
  readonly ed: Ed25519
  readonly trust: TrustChain
  private readonly docs = new Map<string, Promise<SignedDocument>>()
  private readonly loaded = new Map<string, SignedDocument>()
  /** Versions with a statement in the store's trust slots (a fork's other branches go to meta). */
  private readonly storedVersions = new Set<number>()
  /** The newest valid freeze beacon held, if any. */
  beacon: Beacon | undefined
  private closed = false

  private constructor(store: Store, ed: Ed25519, trust: TrustChain) {
    super()
    this.store = store
    this.ed = ed
    this.trust = trust
  }

  static async open(opts: ReplicaOptions): Promise<Replica> {
    const stored = await opts.store.listTrust()
    let chain: TrustChain
    if (stored.length === 0) {
      if (opts.genesis === undefined) {
        throw new InvalidTrustStatementError(
          "this store holds no fleet yet; pass the fleet's genesis trust statement (rhizome init writes it to trust.json)"
        )
      }
      chain = await TrustChain.fromGenesis(opts.genesis, opts.ed)
      await opts.store.putTrust(1, encodeTrustStatement(opts.genesis))
    } else {
      chain = await TrustChain.fromGenesis(decodeTrustStatement(stored[0] as Uint8Array), opts.ed)
      const rest = [
        ...stored.slice(1),
        ...(await opts.store.listMeta(BRANCH_PREFIX)).map(([, bytes]) => bytes)
      ]
        .map(bytes => decodeTrustStatement(bytes))
        .sort((a, b) => a.statement.version - b.statement.version)
      for (const s of rest) {
        try {
          await chain.add(s)
        } catch (err) {
          log.error('stored trust statement version %d is refused: %e', s.statement.version, err)
        }
      }
      // Compare by hash: the stored copy is canonical JSON, a trust.json file may order keys differently.
      if (
        opts.genesis !== undefined &&
        chain.all[0] !== undefined &&
        statementHash(chain.all[0].statement) !== statementHash(opts.genesis.statement)
      ) {
        throw new InvalidTrustStatementError(
          `this store belongs to fleet "${chain.latest.fleet}" (${chain.fleetId.slice(0, 12)}…), not to the genesis statement given; use another data directory`
        )
      }
    }
    const replica = new Replica(opts.store, opts.ed, chain)
    for (const s of stored) replica.storedVersions.add(decodeTrustStatement(s).statement.version)
    if (stored.length === 0) replica.storedVersions.add(1)
    for (const id of await opts.store.listDocs()) await replica.open(id)
    const beacon = await opts.store.getMeta(BEACON_KEY)
    if (beacon !== undefined) {
      try {
        const b = decodeBeacon(beacon)
        if (await verifyBeacon(b, chain, opts.ed)) replica.beacon = b
      } catch (err) {
        log.error('the stored beacon does not load, ignored: %e', err)
      }
    }
    return replica
  }

  get fleetId(): string {
    return this.trust.fleetId
  }

  /**
   * Open the document with this id, or an empty one. An empty document (never validly written)
   * is not stored, not listed and does not count towards `MAX_DOCUMENTS`; at most
   * `MAX_EMPTY_DOCUMENTS` are kept open, the oldest closed first.
   */
  open<T = Record<string, unknown>>(id: string): Promise<SignedDocument<T>> {
    if (this.closed) throw new ClosedError('the replica is closed')
    checkDocId(id)
    let doc = this.docs.get(id)
    if (doc === undefined) {
      if (this.documentIds().length >= MAX_DOCUMENTS) {
        throw new MalformedInputError(`a fleet holds at most ${MAX_DOCUMENTS} documents`)
      }
      this.closeEmpty(MAX_EMPTY_DOCUMENTS - 1)
      doc = SignedDocument.load(this.context(), id)
      this.docs.set(id, doc)
      doc.then(
        d => this.loaded.set(id, d),
        () => this.docs.delete(id)
      )
    }
    return doc as unknown as Promise<SignedDocument<T>>
  }

  /** Ids of the documents that hold something (a valid change, or changes waiting). */
  documentIds(): string[] {
    return [...this.loaded.values()]
      .filter(d => !d.isEmpty)
      .map(d => d.id)
      .sort()
  }

  /** Forget empty documents until at most `keep` remain open. */
  private closeEmpty(keep: number): void {
    const empty = [...this.loaded.values()].filter(d => d.isEmpty)
    for (const d of empty.slice(0, Math.max(0, empty.length - keep))) {
      this.docs.delete(d.id)
      this.loaded.delete(d.id)
    }
  }

  /**
   * Verify and apply a batch (for any document of this fleet). An aborted `options.signal`
   * (the sender went away) stops it before verification starts and before a new document is
   * created for it.
   */
  async accept(batch: SignedBatch, options?: AbortOptions): Promise<AcceptResult> {
    if (this.closed) throw new ClosedError('the replica is closed')
    options?.signal?.throwIfAborted()
    if (!this.docs.has(batch.docId)) {
      // Verify before creating a document: otherwise invalid batches with made-up document ids
      // would leave empty documents behind until MAX_DOCUMENTS refuses real ones.
      checkDocId(batch.docId)
      const verified = await verifyBatch(this.context(), batch.docId, batch)
      if (verified.metas.length === 0) return { status: 'duplicate', applied: 0, heads: [] }
      options?.signal?.throwIfAborted()
      return (await this.open(batch.docId)).accept(verified)
    }
    const doc = await this.open(batch.docId)
    options?.signal?.throwIfAborted()
    return doc.accept(batch)
  }

  /**
   * Add a trust statement (the chain's next, a fork's other branch, or one that resolves a
   * fork); persisted, and every document judged again under it, before it resolves. Returns
   * false if already held. Its signatures are checked before anything else (crdt/trust.ts).
   */
  async addTrustStatement(signed: SignedTrustStatement): Promise<boolean> {
    const forkedBefore = this.trust.forked
    const added = await this.trust.add(signed)
    if (!added) return false
    const v = signed.statement.version
    const bytes = encodeTrustStatement(signed)
    if (this.storedVersions.has(v)) {
      await this.store.putMeta(`${BRANCH_PREFIX}${statementHash(signed.statement)}`, bytes)
    } else {
      await this.store.putTrust(v, bytes)
      this.storedVersions.add(v)
    }
    for (const doc of [...this.loaded.values()]) await doc.revalidate()
    this.safeDispatchEvent('trust', { detail: { version: v } })
    const fork = this.trust.forked
    if (
      fork !== undefined &&
      fork !== forkedBefore &&
      fork.hashes.join() !== forkedBefore?.hashes.join()
    ) {
      log.error(
        'trust is forked at version %d (%s): trust changes are halted until a threshold of root keys signs a statement at version %d extending one branch',
        fork.version,
        fork.hashes.map(h => h.slice(0, 12)).join(', '),
        fork.version + 1
      )
      this.safeDispatchEvent('fork', { detail: fork })
    }
    return true
  }

  /**
   * Take equivocation evidence (crdt/equivocation.ts) from a peer or a bundle. Returns false if
   * it adds nothing; throws a named error if it does not verify.
   */
  async acceptEquivocation(bytes: Uint8Array): Promise<boolean> {
    if (this.closed) throw new ClosedError('the replica is closed')
    const docId = decodeEquivocation(bytes).batches[0]?.docId as string
    checkDocId(docId)
    return (await this.open(docId)).acceptEquivocation(bytes)
  }

  /**
   * The cuts a statement removing or revoking `keyHex` should name to keep everything this
   * replica holds of the key valid: per document it wrote, its latest change per actor.
   */
  cutsFor(keyHex: string): Record<string, CutTip[]> {
    const out: Record<string, CutTip[]> = {}
    for (const d of [...this.loaded.values()].sort((a, b) => (a.id < b.id ? -1 : 1))) {
      const tips = d.cutFor(keyHex)
      if (tips.length > 0) out[d.id] = tips
    }
    return out
  }

  /**
   * Take a freeze beacon (from a peer, a bundle, `rhizome beacon`). Returns true when it is newer
   * than the one held and valid (it is then kept, persisted and announced); false when it says
   * nothing new or cannot be judged yet. Throws a named error for one that does not verify.
   */
  async acceptBeacon(bytes: Uint8Array): Promise<boolean> {
    if (this.closed) throw new ClosedError('the replica is closed')
    const b = decodeBeacon(bytes)
    if (!newerBeacon(this.beacon, b)) return false
    if (!(await verifyBeacon(b, this.trust, this.ed))) return false
    if (!newerBeacon(this.beacon, b)) return false
    this.beacon = b
    await this.store.putMeta(BEACON_KEY, b.bytes)
    this.safeDispatchEvent('beacon', { detail: b })
    return true
  }

  /** What this replica holds, for judging a beacon against (crdt/beacon.ts `freshness`). */
  heldState(): HeldState {
    return {
      trustVersion: this.trust.version,
      has: (docId, heads) => this.loaded.get(docId)?.has(heads) === true
    }
  }

  /** Every document's equivocation evidence. */
  equivocations(): Equivocation[] {
    return [...this.loaded.values()].flatMap(d => d.equivocations())
  }

  /** A signer for this process: the key plus a fresh session, so its actor id is new. */
  static signer(pair: KeyPair): Signer {
    return { pair, actor: newActorId(pair.publicKey) }
  }

  /** Snapshot every document and stop accepting work. The store stays open (its owner closes it). */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    for (const doc of this.docs.values()) {
      try {
        await (await doc).snapshot()
      } catch (err) {
        log.error('snapshot on close failed: %e', err)
      }
    }
  }

  private context(): DocumentContext {
    return {
      fleetId: this.trust.fleetId,
      trust: this.trust,
      ed: this.ed,
      store: this.store,
      onChange: (docId, heads, source, batches) => {
        this.safeDispatchEvent('change', { detail: { docId, heads, source, batches } })
      },
      onEquivocation: e => {
        this.safeDispatchEvent('equivocation', { detail: e })
      },
      onInvalidated: (docId, changes) => {
        this.safeDispatchEvent('invalidated', { detail: { docId, changes } })
      }
    }
  }
}
