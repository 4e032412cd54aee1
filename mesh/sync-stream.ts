/**
 * One peer's sync stream: the long-lived `/rhizome/sync/1.0.0` stream (wire format in
 * `sync-messages.ts`) and the per-document Automerge sync states. The sync service
 * (`sync-service.ts`) keeps one per admitted peer.
 *
 * Verify before apply: Automerge's sync protocol only negotiates (heads, needs, Bloom filters).
 * The changes a sync message would carry are taken out by the sender and travel instead as a
 * signed batch (`SignedDocument.batchFor`); the receiver first `accept`s the batch (verifies,
 * applies, persists, or throws) and only then hands the change-free sync message to
 * `receiveSyncMessage` to update its sync state. A sync message that still carries changes is a
 * protocol violation: unverified changes never reach Automerge.
 *
 * Push: a change just made or accepted here travels to each peer as a PUSH of the signed batch it
 * came in, with no sync round: the receiver verifies and applies it and pushes it on in turn.
 * Automerge's sync protocol still runs when a session starts, at anti-entropy, for batches too
 * large to push, and when a pushed batch depends on changes the receiver lacks. A sync round per
 * peer per change (generate, strip, re-bundle, send, answer) cost 30 daemons 12.4 ms of CPU each
 * per change; pushing costs 8.0 (bench/mesh.bench.ts, same seed and method, docs/benchmarks.md).
 *
 * Reading never waits for writing: outgoing frames go straight into the stream's write buffer
 * (bounded by the muxer's `maxWriteBufferLength`), so two peers sending each other large batches
 * at once cannot deadlock.
 */
import * as Automerge from '@automerge/automerge'
import { logger } from '@libp2p/logger'
import { sha256 } from '@noble/hashes/sha2.js'
import { toHex } from '../crdt/bytes.ts'
import { isPeerFault } from '../crdt/errors.ts'
import { decodeBatch, type SignedBatch } from '../crdt/signed-change.ts'
import { decodeTrustStatement, encodeTrustStatement } from '../crdt/trust.ts'
import {
  encodeEquivocation,
  MAX_EQUIVOCATION_BYTES,
  type Equivocation
} from '../crdt/equivocation.ts'
import type { AcceptResult } from '../crdt/document.ts'
import type { Replica } from '../crdt/replica.ts'
import type { PeerId, Stream } from '@libp2p/interface'
import {
  ExchangeTimeoutError,
  MalformedMessageError,
  ProtocolViolationError,
  WorkBudgetExceededError
} from './errors.ts'
import { encodeFrame, readFrames } from './frames.ts'
import {
  checkSyncMessage,
  decodeSyncWire,
  encodeSyncWire,
  type SyncWireMessage
} from './sync-messages.ts'
import {
  MAX_HELD_HASHES_PER_PEER,
  MAX_SYNC_REPEATS,
  MAX_UNKNOWN_DOCS_PER_PEER,
  YIELD_AFTER_MS,
  type WorkBudget
} from './limits.ts'
import { PeerWorkBudget } from './work-budget.ts'
import type { MeshLimits } from './types.ts'

const log = logger('rhizome:mesh:sync')
const EMPTY = new Uint8Array(0)

/** What a sync stream needs from the service around it. */
export interface SyncStreamHost {
  readonly replica: Replica
  readonly limits: MeshLimits
  /** May we send fleet data (documents, trust, status) to this peer? */
  mayServe(peer: PeerId): boolean
  /** May we apply (verified) data from this peer? */
  mayAccept(peer: PeerId): boolean
  /** The peer's work budget (by what it is admitted as) and what to call it in a message. */
  workBudget(peer: PeerId): { kind: string; budget: WorkBudget }
  loadSyncState(peer: PeerId, docId: string): Automerge.SyncState | undefined
  saveSyncState(peer: PeerId, docId: string, state: Automerge.SyncState): void
  /** The peer's first hello arrived: gossip (status records) may start. */
  greeted(stream: SyncStream): void
  /** An anti-entropy round with this peer is starting: gossip goes out again with it. */
  resyncing(stream: SyncStream): void
  /** A status record from the peer, for the status service to verify, keep and relay. */
  receiveStatus(record: Uint8Array, from: SyncStream): Promise<void>
  /** The peer sent invalid data: ban it. */
  invalid(stream: SyncStream, err: Error): void
  closed(stream: SyncStream): void
  /**
   * Frames in and out (n = bytes); changes accepted (n = changes); a batch that held nothing new;
   * a batch refused as invalid or unauthorised.
   */
  count(what: 'in' | 'out' | 'accepted' | 'duplicate' | 'refused', n: number): void
}

/** Let timers and I/O run (setImmediate in Node; browsers and workers have only timers). */
function yieldToEventLoop(): Promise<void> {
  return new Promise(resolve => {
    if (typeof globalThis.setImmediate === 'function') globalThis.setImmediate(resolve)
    else setTimeout(resolve, 0)
  })
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined
  return Promise.race([
    p,
    new Promise<never>((_resolve, reject) => {
      timer = setTimeout(
        () => reject(new ExchangeTimeoutError(`${what} took longer than ${ms} ms`)),
        ms
      )
    })
  ]).finally(() => clearTimeout(timer))
}

/** A batch ready to push: its encoded bytes and the change hashes its signatures name. */
export interface PushBatch {
  bytes: Uint8Array
  hashes: string[]
}

export class SyncStream {
  readonly peerId: PeerId
  readonly stream: Stream
  /** PeerId of the side that opened the stream (duplicate streams: the lower opener's wins). */
  readonly opener: PeerId
  private readonly host: SyncStreamHost
  private readonly states = new Map<string, Automerge.SyncState>()
  private queue: Promise<unknown> = Promise.resolve()
  private readonly dirty = new Set<string>()
  private flushScheduled = false
  private ended = false
  /** Change hashes the peer is known to hold (it sent them, or we pushed them); cleared when full. */
  private readonly held = new Set<string>()
  /** Per document, the digest of the peer's last sync message and how many times running it came. */
  private readonly lastIn = new Map<string, { digest: string; count: number }>()
  /** The trust version the peer's last hello named: the statements after it are what it lacks. */
  private peerTrustVersion: number | undefined
  /** Documents we do not hold being negotiated with the peer (from an empty state, not created). */
  private readonly unknown = new Set<string>()
  private budget: PeerWorkBudget | undefined
  /** Statements off the chain (fork branches) and equivocation evidence sent on this stream. */
  private readonly sentBranches = new Set<object>()
  private readonly sentEvidence = new Set<string>()
  private sentBeacon: Uint8Array | undefined
  helloReceived = false

  constructor(host: SyncStreamHost, peerId: PeerId, stream: Stream, opener: PeerId) {
    this.host = host
    this.peerId = peerId
    this.stream = stream
    this.opener = opener
  }

  get isOpen(): boolean {
    return !this.ended
  }

  /**
   * Say hello, then read until the stream ends. Resolves when the stream is over. Each message is
   * charged to the peer's work budget (one message, and the time its handling took); the event
   * loop gets a turn at least every `YIELD_AFTER_MS` of this peer's work.
   */
  async run(): Promise<void> {
    try {
      this.sendHello()
      let slice = performance.now()
      for await (const frame of readFrames(this.stream, this.host.limits.maxFrameBytes)) {
        await this.receive(frame)
        if (this.ended) return
        const now = performance.now()
        if (now - slice >= YIELD_AFTER_MS) {
          await yieldToEventLoop()
          slice = performance.now()
        }
      }
    } catch (err) {
      if (!this.ended) {
        if (isPeerFault(err)) this.host.invalid(this, err as Error)
        else log('sync stream with %p ended: %s', this.peerId, (err as Error).message)
      }
    } finally {
      this.close()
    }
  }

  /**
   * One frame from the peer: counted, charged to its work budget, decoded and handled (after
   * whatever this stream queued before it). Throws what the peer did wrong.
   */
  async receive(frame: Uint8Array): Promise<void> {
    this.host.count('in', frame.length)
    this.charge(this.budgetNow().message(performance.now()))
    const msg = decodeSyncWire(frame)
    let took = 0
    await this.serial(async () => {
      const start = performance.now()
      try {
        await this.handle(msg)
      } finally {
        took = performance.now() - start
      }
    })
    if (!this.ended) this.charge(this.budgetNow().handled(took, performance.now()))
  }

  /** End the stream; the sync states of documents held are kept by the host for a reconnect. */
  close(err?: Error): void {
    if (this.ended) return
    this.ended = true
    for (const [docId, state] of this.states) {
      if (!this.unknown.has(docId)) this.host.saveSyncState(this.peerId, docId, state)
    }
    if (err !== undefined) this.stream.abort(err)
    else {
      this.stream
        .close({ signal: AbortSignal.timeout(1000) })
        .catch(() => this.stream.abort(new Error('close timed out')))
    }
    this.host.closed(this)
  }

  /** A document has new heads here: tell the peer (coalesced per tick). */
  announce(docId: string): void {
    if (this.ended) return
    this.dirty.add(docId)
    if (this.flushScheduled) return
    this.flushScheduled = true
    setTimeout(() => {
      this.flushScheduled = false
      const ids = [...this.dirty]
      this.dirty.clear()
      this.serial(async () => {
        for (const id of ids) await this.syncDoc(id)
      }).catch(err => this.fail(err))
    }, 0)
  }

  /**
   * Relay changes just made or accepted here to a peer that is not known to hold them. Before the
   * peer's hello nothing is pushed: the sync round its hello starts carries them.
   */
  push(docId: string, batches: readonly PushBatch[]): void {
    if (this.ended) return
    this.serial(async () => {
      if (!this.helloReceived || !this.host.mayServe(this.peerId)) return
      for (const b of batches) {
        if (b.hashes.every(h => this.held.has(h))) continue
        this.noteHeld(b.hashes)
        this.send({ type: 'push', docId, batch: b.bytes })
      }
    }).catch(err => this.fail(err))
  }

  /**
   * Anti-entropy: resend hello and restart negotiation of every document (in-flight parts reset).
   * Also how a new trust statement reaches the peer: it goes out before any change it authorises.
   */
  resync(): void {
    this.serial(async () => {
      this.sendHello()
      if (this.peerTrustVersion !== undefined) this.sendTrustAfter(this.peerTrustVersion)
      this.host.resyncing(this)
      for (const id of this.host.replica.documentIds()) {
        this.restartSync(id)
        await this.syncDoc(id)
      }
    }).catch(err => this.fail(err))
  }

  send(msg: SyncWireMessage): void {
    if (this.ended) return
    const frame = encodeFrame(encodeSyncWire(msg))
    if (frame.length > this.host.limits.maxFrameBytes) {
      log.error(
        'message for %p about %s is %d bytes, over the frame limit of %d; not sent (raise limits.maxFrameBytes on every node)',
        this.peerId,
        msg.type === 'sync' ? msg.docId : msg.type,
        frame.length,
        this.host.limits.maxFrameBytes
      )
      return
    }
    try {
      this.stream.send(frame)
      this.host.count('out', frame.length)
    } catch (err) {
      this.fail(err)
    }
  }

  sendStatus(record: Uint8Array): void {
    if (this.host.mayServe(this.peerId)) this.send({ type: 'status', record })
  }

  private budgetNow(): PeerWorkBudget {
    const { budget } = this.host.workBudget(this.peerId)
    if (this.budget?.budget !== budget) this.budget = new PeerWorkBudget(budget, performance.now())
    return this.budget
  }

  private charge(over: 'messages' | 'handling time' | undefined): void {
    if (over === undefined) return
    const { kind, budget } = this.host.workBudget(this.peerId)
    const rate =
      over === 'messages'
        ? `${budget.messagesPerSecond} messages/s (burst ${budget.messageBurst})`
        : `${budget.handlingMsPerSecond} ms of handling/s (burst ${budget.handlingBurstMs} ms)`
    throw new WorkBudgetExceededError(
      `peer ${this.peerId.toString()} sent more ${over === 'messages' ? 'messages' : 'work'} than a ${kind} may: ${rate}; cut off`
    )
  }

  /** Is the document held here? Only held documents are opened: opening creates. */
  private holds(docId: string): boolean {
    return this.host.replica.documentIds().includes(docId)
  }

  private sendHello(): void {
    if (!this.host.mayServe(this.peerId)) return
    const r = this.host.replica
    this.send({
      type: 'hello',
      fleetId: r.fleetId,
      trustVersion: r.trust.version,
      docIds: r.documentIds()
    })
  }

  /**
   * Send the trust statements the peer may lack, in version order: the chain's after version `v`
   * (the peer's), and every statement held off the chain (a fork's branches: wherever both
   * branches meet the fork is seen, so they travel however old they are). Then the equivocation
   * evidence held: it covers changes the documents' sync may send.
   */
  private sendTrustAfter(v: number): void {
    if (!this.host.mayServe(this.peerId)) return
    const trust = this.host.replica.trust
    const chain = new Set(trust.all)
    for (const st of trust.held) {
      if (chain.has(st) && st.statement.version <= v) continue
      if (!chain.has(st) && this.sentBranches.has(st)) continue
      if (!chain.has(st)) this.sentBranches.add(st)
      this.send({ type: 'trust', statement: encodeTrustStatement(st) })
    }
    this.peerTrustVersion = Math.max(v, trust.version)
    for (const e of this.host.replica.equivocations()) this.sendEvidence(e)
    const beacon = this.host.replica.beacon
    if (beacon !== undefined) this.sendBeacon(beacon.bytes)
  }

  /** Pass a freeze beacon on (each one once per stream). */
  sendBeacon(bytes: Uint8Array): void {
    if (!this.host.mayServe(this.peerId) || this.sentBeacon === bytes) return
    this.sentBeacon = bytes
    this.send({ type: 'beacon', beacon: bytes })
  }

  /**
   * Pass equivocation evidence on, once per stream (too large a piece stays here: the bound is
   * the peer's).
   */
  sendEvidence(e: Equivocation): void {
    if (!this.host.mayServe(this.peerId)) return
    const id = `${e.docId}/${e.actor}/${e.seq}`
    if (this.sentEvidence.has(id)) return
    this.sentEvidence.add(id)
    const evidence = encodeEquivocation(e)
    if (evidence.length <= MAX_EQUIVOCATION_BYTES) this.send({ type: 'evidence', evidence })
  }

  /** Forget the in-flight parts of a document's sync state, so the next message renegotiates. */
  private restartSync(docId: string): void {
    this.lastIn.delete(docId)
    const s = this.states.get(docId)
    if (s !== undefined) {
      this.states.set(docId, Automerge.decodeSyncState(Automerge.encodeSyncState(s)))
    }
  }

  /** How many times running the peer has sent this same sync message for `docId` (0: it is new). */
  private repeats(docId: string, message: Uint8Array): number {
    const digest = toHex(sha256(message))
    const last = this.lastIn.get(docId)
    const count = last?.digest === digest ? last.count + 1 : 0
    this.lastIn.set(docId, { digest, count })
    if (count === MAX_SYNC_REPEATS + 1) {
      log.error(
        'sync of "%s" with %p is stuck (the same message %d times running); not answering until the next anti-entropy round',
        docId,
        this.peerId,
        count + 1
      )
    }
    return count
  }

  private noteHeld(hashes: string[]): void {
    if (this.held.size + hashes.length > MAX_HELD_HASHES_PER_PEER) this.held.clear()
    for (const h of hashes) this.held.add(h)
  }

  /** Verify and apply a batch from this peer; undefined when the pending set is full (sync fetches it again). */
  private async acceptBatch(batch: SignedBatch): Promise<AcceptResult | undefined> {
    this.noteHeld(batch.signatures.map(sig => sig.hash))
    try {
      const res = await withTimeout(
        this.host.replica.accept(batch),
        this.host.limits.exchangeTimeoutMs,
        `verifying a batch of "${batch.docId}"`
      )
      this.host.count(res.status === 'duplicate' ? 'duplicate' : 'accepted', res.applied)
      return res
    } catch (err) {
      if (isPeerFault(err)) this.host.count('refused', 1)
      if ((err as Error).name !== 'PendingSetFullError') throw err
      log('%s: %s', batch.docId, (err as Error).message)
      return undefined
    }
  }

  private fail(err: unknown): void {
    if (this.ended) return
    if (isPeerFault(err)) this.host.invalid(this, err as Error)
    else {
      log('sync stream with %p failed: %s', this.peerId, (err as Error).message)
      this.close()
    }
  }

  private serial<R>(fn: () => Promise<R>): Promise<R> {
    const run = this.queue.then(fn, fn)
    this.queue = run.catch(() => {})
    return run
  }

  private async handle(msg: SyncWireMessage): Promise<void> {
    if (this.ended) return
    const replica = this.host.replica
    switch (msg.type) {
      case 'hello': {
        if (msg.fleetId !== replica.fleetId) {
          throw new ProtocolViolationError(
            `peer belongs to fleet ${msg.fleetId.slice(0, 12)}…, not ${replica.fleetId.slice(0, 12)}…`
          )
        }
        const first = !this.helloReceived
        this.helloReceived = true
        this.sendTrustAfter(msg.trustVersion)
        if (first) this.host.greeted(this)
        const ids = new Set(replica.documentIds())
        if (this.host.mayAccept(this.peerId)) for (const id of msg.docIds) ids.add(id)
        for (const id of ids) await this.syncDoc(id)
        return
      }
      case 'trust': {
        if (!this.host.mayAccept(this.peerId)) return
        // Any statement, older ones too: one at a version already held may be a fork's other
        // branch, which must be seen (a fork is validly root-signed: the messenger is not at
        // fault; crdt raises the alarm). One already held costs a hash.
        await withTimeout(
          replica.addTrustStatement(decodeTrustStatement(msg.statement)),
          this.host.limits.exchangeTimeoutMs,
          'adding a trust statement'
        )
        return
      }
      case 'beacon': {
        // Any admitted peer may relay a beacon (a viewer's browser too): it is signed by an admin.
        await replica.acceptBeacon(msg.beacon)
        return
      }
      case 'evidence': {
        if (!this.host.mayAccept(this.peerId)) return
        await withTimeout(
          replica.acceptEquivocation(msg.evidence),
          this.host.limits.exchangeTimeoutMs,
          'checking equivocation evidence'
        )
        return
      }
      case 'sync': {
        const accepts = this.host.mayAccept(this.peerId)
        // A document comes into being only with a valid signed change: a peer that may not write
        // (a viewer) gets nothing for one not held here, and no peer's naming of one creates it.
        if (!accepts && !this.holds(msg.docId)) return
        if (msg.batch.length > 0 && accepts) {
          const batch = decodeBatch(msg.batch)
          if (batch.docId !== msg.docId) {
            throw new ProtocolViolationError(
              `peer sent a batch for "${batch.docId}" inside a sync message for "${msg.docId}"`
            )
          }
          await this.acceptBatch(batch)
        }
        try {
          await this.receiveSync(msg.docId, msg.message)
        } catch (err) {
          if (isPeerFault(err)) throw err
          throw new MalformedMessageError(
            `peer sent a sync message for "${msg.docId}" that Automerge refused: ${(err as Error).message}`
          )
        }
        // A stuck negotiation sends nothing but the same message; one that carries changes moves on.
        if (msg.batch.length > 0) this.lastIn.delete(msg.docId)
        else if (this.repeats(msg.docId, msg.message) > MAX_SYNC_REPEATS) return
        await this.syncDoc(msg.docId)
        return
      }
      case 'push': {
        if (!this.host.mayAccept(this.peerId)) return
        const batch = decodeBatch(msg.batch)
        if (batch.docId !== msg.docId) {
          throw new ProtocolViolationError(
            `peer pushed a batch for "${batch.docId}" labelled "${msg.docId}"`
          )
        }
        const res = await this.acceptBatch(batch)
        // It builds on changes we lack (their push has not arrived, or never will): a sync round
        // with this peer, which holds them, fetches them.
        if (res?.status === 'pending') {
          this.restartSync(msg.docId)
          await this.syncDoc(msg.docId)
        }
        return
      }
      case 'status':
        if (!this.host.mayAccept(this.peerId)) return
        await this.host.receiveStatus(msg.record, this)
    }
  }

  private stateOf(docId: string): Automerge.SyncState {
    let s = this.states.get(docId)
    if (s === undefined) {
      s = this.host.loadSyncState(this.peerId, docId) ?? Automerge.initSyncState()
      this.states.set(docId, s)
    }
    return s
  }

  /**
   * Update the peer's sync state for a document from its message. Changes enter a document only
   * through a verified batch, so a message that still carries changes is refused (for a held
   * document `receiveSyncMessage` refuses it, `UnsignedChangeError`). A document not held here is
   * negotiated from an empty document, without creating it.
   */
  private async receiveSync(docId: string, message: Uint8Array): Promise<void> {
    const decoded = checkSyncMessage(message)
    if (this.holds(docId)) {
      this.unknown.delete(docId)
      const doc = await this.host.replica.open(docId)
      this.states.set(docId, doc.receiveSyncMessage(this.stateOf(docId), message))
      return
    }
    if (!this.noteUnknown(docId)) return
    if (decoded.changes.length > 0) {
      throw new ProtocolViolationError(
        `peer sent changes for "${docId}" outside a signed batch; refused`
      )
    }
    const [, next] = Automerge.receiveSyncMessage(Automerge.init(), this.stateOf(docId), message)
    this.states.set(docId, next)
  }

  /** Room for one more document not held here? (At most MAX_UNKNOWN_DOCS_PER_PEER at once.) */
  private noteUnknown(docId: string): boolean {
    if (this.unknown.has(docId)) return true
    if (this.unknown.size >= MAX_UNKNOWN_DOCS_PER_PEER) {
      log(
        '%p names more than %d documents not held here; "%s" ignored',
        this.peerId,
        MAX_UNKNOWN_DOCS_PER_PEER,
        docId
      )
      return false
    }
    this.unknown.add(docId)
    return true
  }

  /**
   * Our sync message for a document not held here: what an empty document asks for (everything;
   * the peer's batch leaves out the genesis change, which every replica makes for itself).
   */
  private syncUnknown(docId: string): void {
    if (!this.host.mayAccept(this.peerId) || !this.noteUnknown(docId)) return
    const [next, message] = Automerge.generateSyncMessage(Automerge.init(), this.stateOf(docId))
    this.states.set(docId, next)
    if (message === null) return
    const stripped = Automerge.encodeSyncMessage({
      ...Automerge.decodeSyncMessage(message),
      changes: []
    })
    this.send({ type: 'sync', docId, message: stripped, batch: EMPTY })
  }

  /**
   * Generate the next sync message for one document; send it with its changes as a signed batch.
   * Changes held pending here (verified, waiting for dependencies) are outside Automerge, which
   * therefore asks the peer for the pending change itself, not for what it waits on; the peer has
   * marked that change sent and will not send it again, and the two would exchange the same
   * messages for ever. So the dependencies pending changes lack are added to the message's `need`.
   */
  private async syncDoc(docId: string): Promise<void> {
    if (this.ended || !this.host.mayServe(this.peerId)) return
    if (!this.holds(docId)) {
      this.syncUnknown(docId)
      return
    }
    const doc = await this.host.replica.open(docId)
    const state = this.stateOf(docId)
    const before = new Set(Object.keys(state.sentHashes))
    const [next, message] = Automerge.generateSyncMessage(doc.automerge, state)
    this.states.set(docId, next)
    if (message === null) return
    const decoded = Automerge.decodeSyncMessage(message)
    const need = doc.missingDeps().filter(h => !decoded.need.includes(h))
    if (decoded.changes.length === 0 && need.length === 0) {
      this.send({ type: 'sync', docId, message, batch: EMPTY })
      return
    }
    const hashes = Object.keys(next.sentHashes).filter(h => !before.has(h))
    const stripped = Automerge.encodeSyncMessage({
      ...decoded,
      need: [...decoded.need, ...need],
      changes: []
    })
    this.send({
      type: 'sync',
      docId,
      message: stripped,
      batch: hashes.length === 0 ? EMPTY : doc.encodedBatchFor(hashes)
    })
  }
}
