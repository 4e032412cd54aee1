/**
 * The sync service: one sync stream (`sync-stream.ts`, protocol `/rhizome/sync/1.0.0`) with every
 * admitted peer, and what feeds it.
 *
 * - A peer the admission service admits gets a sync stream; both sides may open one, and the
 *   stream opened by the lower PeerId wins on both sides alike.
 * - A change made or accepted here is pushed to every stream as its signed batch (or, when too
 *   large to push, announced so each peer's sync pulls what it lacks).
 * - A new trust statement restarts negotiation with every peer (it goes out ahead of the changes
 *   it authorises); an anti-entropy round restarts it with one random peer every `antiEntropyMs`.
 * - Per-document Automerge sync states outlive a stream, for a quick reconnect.
 *
 * Status gossip rides the same streams (one stream per peer, ordered), but lives in the status
 * service (`status-service.ts`): it sends through `streams()` and receives through
 * `setStatusReceiver`, and follows `stream:greeted` and `stream:resync`.
 */
import * as Automerge from '@automerge/automerge'
import { logger } from '@libp2p/logger'
import { MeshService } from './service.ts'
import type { Connection, PeerId, Startable, Stream, TypedEventTarget } from '@libp2p/interface'
import { PeerMap, PeerSet } from '@libp2p/peer-collections'
import { encodeBatch } from '../crdt/signed-change.ts'
import type { ChangeEventDetail, Replica } from '../crdt/replica.ts'
import type { AdmissionEvents, PeerAdmission } from './admission-service.ts'
import { streamOnConnection, type NodeEvents, type ProtocolComponents } from './connections.ts'
import type { MeshCounters, SyncCount } from './counters.ts'
import { SessionRefusedError } from './errors.ts'
import { MAX_PUSH_BYTES, MAX_REMEMBERED_PEERS, WORK_BUDGETS, type WorkBudget } from './limits.ts'
import { SYNC_PROTOCOL } from './sync-messages.ts'
import { SyncStream, type SyncStreamHost } from './sync-stream.ts'
import type { MeshLimits } from './types.ts'

const log = logger('rhizome:mesh:sync')

/** How long the higher PeerId waits before opening its own stream: usually the lower one's arrives first. */
const OPEN_DELAY_MS = 100

export interface SyncComponents extends ProtocolComponents {
  peerId: PeerId
  events: NodeEvents
  admission: PeerAdmission & TypedEventTarget<AdmissionEvents>
}

export interface SyncInit {
  replica: Replica
  limits: MeshLimits
  counters: MeshCounters
  antiEntropyMs: number
}

export interface SyncEvents {
  /** A sync stream with the peer runs (the link is useful: the connection keeper resets its back-off). */
  'stream:open': CustomEvent<SyncStream>
  /** The peer's first hello arrived on its stream: gossip may start. */
  'stream:greeted': CustomEvent<SyncStream>
  /** An anti-entropy round with the peer starts: gossip goes out again with it. */
  'stream:resync': CustomEvent<SyncStream>
}

export type StatusReceiver = (record: Uint8Array, from: SyncStream) => Promise<void>

export class SyncService
  extends MeshService<SyncEvents, SyncComponents, SyncInit>
  implements Startable, SyncStreamHost
{
  readonly replica: Replica
  readonly limits: MeshLimits
  private readonly open = new PeerMap<SyncStream>()
  private readonly opening = new PeerSet()
  private readonly syncStates = new PeerMap<Map<string, Uint8Array>>()
  private statusReceiver: StatusReceiver = async () => {}
  private timer: ReturnType<typeof setInterval> | undefined
  private running = false

  constructor(components: SyncComponents, init: SyncInit) {
    super(components, init)
    this.replica = init.replica
    this.limits = init.limits
  }

  readonly [Symbol.toStringTag] = '@rhizome/sync'

  async start(): Promise<void> {
    await this.components.registrar.handle(
      SYNC_PROTOCOL,
      (stream, connection) => {
        this.inbound(stream, connection)
      },
      {
        maxInboundStreams: this.limits.maxInboundStreams,
        maxOutboundStreams: this.limits.maxInboundStreams
      }
    )
    const on = this.listen()
    const admission = this.components.admission
    const close = (peer: PeerId, err?: Error): void => this.open.get(peer)?.close(err)
    admission.addEventListener('peer:admitted', e => this.openTo(e.detail), on)
    admission.addEventListener('peer:dismissed', e => close(e.detail), on)
    admission.addEventListener(
      'rejected',
      e => close(e.detail.peer, new SessionRefusedError(e.detail.reason)),
      on
    )
    this.components.events.addEventListener('peer:disconnect', e => close(e.detail), on)
    const replica = this.replica
    const toAll = (send: (s: SyncStream) => void): void => {
      for (const s of this.open.values()) send(s)
    }
    replica.addEventListener('change', e => this.changed(e.detail), on)
    replica.addEventListener('trust', () => toAll(s => s.resync()), on)
    replica.addEventListener('equivocation', e => toAll(s => s.sendEvidence(e.detail)), on)
    replica.addEventListener('beacon', e => toAll(s => s.sendBeacon(e.detail.bytes)), on)
    this.timer = setInterval(() => {
      this.antiEntropy()
    }, this.init.antiEntropyMs)
    this.running = true
  }

  async stop(): Promise<void> {
    this.running = false
    clearInterval(this.timer)
    this.unlisten()
    for (const s of [...this.open.values()]) s.close()
    await this.components.registrar.unhandle(SYNC_PROTOCOL)
  }

  /** The sync streams that run now. */
  streams(): SyncStream[] {
    return [...this.open.values()].filter(s => s.isOpen)
  }

  /** Status records arriving on any stream go here (the status service). */
  setStatusReceiver(receiver: StatusReceiver): void {
    this.statusReceiver = receiver
  }

  // ---- SyncStreamHost ----

  mayServe(peer: PeerId): boolean {
    return this.components.admission.mayServe(peer)
  }

  mayAccept(peer: PeerId): boolean {
    return this.components.admission.mayAccept(peer)
  }

  workBudget(peer: PeerId): { kind: string; budget: WorkBudget } {
    const a = this.components.admission.admissionOf(peer)
    if (a === 'none') return { kind: 'bootstrap peer', budget: WORK_BUDGETS.node }
    return { kind: a === 'node' ? 'device' : a, budget: WORK_BUDGETS[a] }
  }

  loadSyncState(peer: PeerId, docId: string): Automerge.SyncState | undefined {
    const bytes = this.syncStates.get(peer)?.get(docId)
    return bytes === undefined ? undefined : Automerge.decodeSyncState(bytes)
  }

  saveSyncState(peer: PeerId, docId: string, state: Automerge.SyncState): void {
    let m = this.syncStates.get(peer)
    if (m === undefined) {
      if (this.syncStates.size >= MAX_REMEMBERED_PEERS) {
        this.syncStates.delete(this.syncStates.keys().next().value as PeerId)
      }
      m = new Map()
      this.syncStates.set(peer, m)
    }
    m.set(docId, Automerge.encodeSyncState(state))
  }

  greeted(stream: SyncStream): void {
    this.safeDispatchEvent('stream:greeted', { detail: stream })
  }

  resyncing(stream: SyncStream): void {
    this.safeDispatchEvent('stream:resync', { detail: stream })
  }

  receiveStatus(record: Uint8Array, from: SyncStream): Promise<void> {
    return this.statusReceiver(record, from)
  }

  invalid(stream: SyncStream, err: Error): void {
    stream.close(err)
    this.components.admission.reject(stream.peerId, err)
  }

  closed(stream: SyncStream): void {
    if (this.open.get(stream.peerId) === stream) this.open.delete(stream.peerId)
  }

  count(what: SyncCount, n: number): void {
    this.init.counters.count(what, n)
  }

  // ---- internals ----

  private changed(d: ChangeEventDetail): void {
    // Relayed once durable, not as soon as applied: measured with the earlier relay by sync round
    // (docs/benchmarks.md), relaying before the fsync made more pushes cross on the wire and cost
    // more CPU than the fsync it saved per hop.
    const push = d.batches.map(b => ({
      bytes: encodeBatch(b),
      hashes: b.signatures.map(sig => sig.hash)
    }))
    if (push.length > 0 && push.every(b => b.bytes.length <= MAX_PUSH_BYTES)) {
      for (const s of this.open.values()) s.push(d.docId, push)
    } else {
      for (const s of this.open.values()) s.announce(d.docId)
    }
  }

  /** Open our sync stream to a peer. Both sides may do this; the stream opened by the lower PeerId wins. */
  private openTo(peer: PeerId): void {
    if (!this.running || this.opening.has(peer) || this.open.has(peer)) return
    const me = this.components.peerId
    this.opening.add(peer)
    const delay = me.toString() < peer.toString() ? 0 : OPEN_DELAY_MS
    setTimeout(() => {
      if (this.open.has(peer) || !this.running) {
        this.opening.delete(peer)
        return
      }
      streamOnConnection(this.components.connectionManager, peer, SYNC_PROTOCOL, {
        signal: AbortSignal.timeout(this.limits.exchangeTimeoutMs)
      })
        .then(stream => {
          this.opening.delete(peer)
          if (stream.status !== 'open') return
          this.run(peer, stream, me)
        })
        .catch(err => {
          this.opening.delete(peer)
          log('opening sync with %p failed: %s', peer, (err as Error).message)
        })
    }, delay)
  }

  private inbound(stream: Stream, connection: Connection): void {
    const peer = connection.remotePeer
    // Strict inbound admission: refuse before sending anything.
    if (this.components.admission.isBanned(peer) || !this.mayServe(peer)) {
      stream.abort(new SessionRefusedError('not admitted'))
      return
    }
    this.run(peer, stream, peer)
  }

  private run(peer: PeerId, stream: Stream, opener: PeerId): void {
    const held = this.open.get(peer)
    if (held !== undefined && held.isOpen) {
      // Duplicate: keep the stream opened by the lower PeerId, on both sides alike.
      if (held.opener.toString() <= opener.toString()) {
        stream
          .close({ signal: AbortSignal.timeout(1000) })
          .catch(() => stream.abort(new Error('duplicate')))
        return
      }
      held.close()
    }
    const s = new SyncStream(this, peer, stream, opener)
    this.open.set(peer, s)
    this.safeDispatchEvent('stream:open', { detail: s })
    s.run().catch(err => log.error('sync stream with %p: %s', peer, (err as Error).message))
  }

  private antiEntropy(): void {
    const list = this.streams()
    if (list.length === 0) return
    ;(list[Math.floor(Math.random() * list.length)] as SyncStream).resync()
  }
}

/** The sync service, for `services:` in createLibp2p. */
export function sync(init: SyncInit): (components: SyncComponents) => SyncService {
  return components => new SyncService(components, init)
}
