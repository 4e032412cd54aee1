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
import { SignedDocument, verifyBatch, type AcceptResult, type Signer } from './document.ts'
import {
  decodeTrustStatement,
  encodeTrustStatement,
  statementHash,
  TrustChain,
  type SignedTrustStatement
} from './trust.ts'
import { ClosedError, InvalidTrustStatementError, MalformedInputError } from './errors.ts'
import type { Ed25519 } from './ed25519.ts'
import type { KeyPair } from './keys.ts'
import type { Store } from './store.ts'

const log = logger('rhizome:crdt:replica')

/** Document ids: lower-case words separated by `/`, `-`, `_` or `.`; at most 128 bytes. */
export const DOC_ID_PATTERN = /^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/
export const MAX_DOCUMENTS = 1024

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
  source: 'local' | 'remote'
  /** The verified batches that made this change, in the order they were applied. */
  batches: SignedBatch[]
}

export interface TrustEventDetail {
  /** The version of the trust statement just added. */
  version: number
}

/** What a replica announces: a document changed (`change`), a trust statement was added (`trust`). */
export interface ReplicaEvents {
  change: CustomEvent<ChangeEventDetail>
  trust: CustomEvent<TrustEventDetail>
}

export class Replica extends TypedEventEmitter<ReplicaEvents> {
  readonly store: Store
  readonly ed: Ed25519
  readonly trust: TrustChain
  private readonly docs = new Map<string, Promise<SignedDocument>>()
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
      for (const bytes of stored.slice(1)) await chain.add(decodeTrustStatement(bytes))
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
    for (const id of await opts.store.listDocs()) await replica.open(id)
    return replica
  }

  get fleetId(): string {
    return this.trust.fleetId
  }

  /** Open (or create, empty) the document with this id. */
  open<T = Record<string, unknown>>(id: string): Promise<SignedDocument<T>> {
    if (this.closed) throw new ClosedError('the replica is closed')
    checkDocId(id)
    let doc = this.docs.get(id)
    if (doc === undefined) {
      if (this.docs.size >= MAX_DOCUMENTS) {
        throw new MalformedInputError(`a fleet holds at most ${MAX_DOCUMENTS} documents`)
      }
      doc = SignedDocument.load(this.context(), id)
      this.docs.set(id, doc)
      doc.catch(() => this.docs.delete(id))
    }
    return doc as unknown as Promise<SignedDocument<T>>
  }

  /** Ids of the documents open in this replica. */
  documentIds(): string[] {
    return [...this.docs.keys()].sort()
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

  /** Add the next trust statement; persisted before it resolves. Returns false if already held. */
  async addTrustStatement(signed: SignedTrustStatement): Promise<boolean> {
    const added = await this.trust.add(signed)
    if (added) {
      await this.store.putTrust(signed.statement.version, encodeTrustStatement(signed))
      this.safeDispatchEvent('trust', { detail: { version: signed.statement.version } })
    }
    return added
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

  private context() {
    return {
      fleetId: this.trust.fleetId,
      trust: this.trust,
      ed: this.ed,
      store: this.store,
      onChange: (
        docId: string,
        heads: string[],
        source: 'local' | 'remote',
        batches: SignedBatch[]
      ) => {
        this.safeDispatchEvent('change', { detail: { docId, heads, source, batches } })
      }
    }
  }
}
