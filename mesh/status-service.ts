/**
 * The status service: signed status records (`status-record.ts`), one last-writer-wins register
 * per enrolled node, gossiped over the sync streams and kept in the store's meta so a restarted
 * daemon still knows when each node was last seen.
 *
 * - `publish` signs this node's record (sequence: its clock in ms, strictly increasing) and sends
 *   it to every peer.
 * - A record from a peer is verified (enrolled key, signature, fleet), kept if newer than the one
 *   held, and relayed to every other peer.
 * - A peer's first hello and every anti-entropy round with it send it every record held.
 * - A record of a node not enrolled here (yet) is held aside, unverified (at most
 *   STATUS_PENDING_MAX nodes, for STATUS_PENDING_MS), and received again when a document or the
 *   trust chain changes:
 *   a new peer gets every record on its first hello, before the devices document naming those
 *   nodes has synced, and would otherwise wait for each node's next record.
 */
import { TypedEventEmitter } from '@libp2p/interface'
import { logger } from '@libp2p/logger'
import type { AbortOptions, Startable, TypedEventTarget } from '@libp2p/interface'
import type { AddressManager } from '@libp2p/interface-internal'
import { isLoopback } from '@libp2p/utils'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { fromHex, toHex } from '../crdt/bytes.ts'
import type { KeyPair } from '../crdt/keys.ts'
import type { Replica } from '../crdt/replica.ts'
import type { MeshCounters } from './counters.ts'
import { StatusFloodError } from './errors.ts'
import {
  STATUS_FLOOD_BURST,
  STATUS_MIN_INTERVAL_MS,
  STATUS_PENDING_MAX,
  STATUS_PENDING_MS,
  STATUS_RELAY_BURST
} from './limits.ts'
import {
  decodeStoredStatus,
  encodeStoredStatus,
  peekStatus,
  signStatus,
  splitAddresses,
  withAddresses,
  verifyStatus,
  type SignedStatus
} from './status-record.ts'
import type { SyncEvents, StatusReceiver } from './sync-service.ts'
import type { SyncStream } from './sync-stream.ts'
import type { StatusBody, StatusRecord } from './types.ts'
import { TokenBucket } from './work-budget.ts'

const log = logger('rhizome:mesh:status')
/** One line per record received, waited, kept and relayed: where a record's time goes per hop. */
const trace = logger('rhizome:trace:status')
const short = (key: string): string => key.slice(0, 8)
const STATUS_META_PREFIX = 'mesh/status/'

export interface StatusComponents {
  /** Where this node listens: advertised in its records. */
  addressManager: Pick<AddressManager, 'getAddresses'>
  /** The streams status records travel on. */
  sync: TypedEventTarget<SyncEvents> & {
    streams(): Iterable<SyncStream>
    setStatusReceiver(receiver: StatusReceiver): void
  }
  admission: { isEnrolledKey(keyHex: string): boolean }
}

export interface StatusInit {
  replica: Replica
  identity: KeyPair
  /** A record with no newer one for this long is stale, ms. */
  staleAfterMs: number
  counters: MeshCounters
  /** One record per node per this long is kept and relayed (default `STATUS_MIN_INTERVAL_MS`). */
  minIntervalMs?: number
}

export interface StatusEvents {
  /** A newer record arrived or was published. */
  status: CustomEvent<StatusRecord>
}

interface HeldStatus {
  signed: SignedStatus
  peerId: string
  receivedAt: number
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

function peerIdOfKey(keyHex: string): string {
  try {
    return peerIdFromPublicKey(publicKeyFromRaw(fromHex(keyHex))).toString()
  } catch {
    return ''
  }
}

/** A newer record that came before its node's interval was up: kept when it is. */
interface Waiting {
  signed: SignedStatus
  from: SyncStream | undefined
  timer: ReturnType<typeof setTimeout>
}

export class StatusService extends TypedEventEmitter<StatusEvents> implements Startable {
  private readonly components: StatusComponents
  private readonly init: StatusInit
  private readonly held = new Map<string, HeldStatus>()
  private readonly ownKey: string
  private ownSeq = 0
  private readonly intervalMs: number
  /** Per node: when its last record was kept (others') or sent (ours), performance.now(). */
  /** Per node, its records' relay pace (`STATUS_MIN_INTERVAL_MS`, `STATUS_RELAY_BURST`). */
  private readonly relayPace = new Map<string, TokenBucket>()
  private readonly waiting = new Map<string, Waiting>()
  /** Per sending stream, per node: newer records of that node it sent, against the pace. */
  private readonly pace = new WeakMap<SyncStream, Map<string, TokenBucket>>()
  private readonly onGreeted = (e: CustomEvent<SyncStream>): void => {
    this.sendAll(e.detail)
  }
  private readonly onResync = (e: CustomEvent<SyncStream>): void => {
    this.sendAll(e.detail)
  }
  /** Records of nodes not enrolled here yet, by node: the newest seen, with when it came. */
  private readonly pending = new Map<string, { record: Uint8Array; from: SyncStream; at: number }>()
  private readonly onChange = (): void => {
    this.retryPending()
  }

  constructor(components: StatusComponents, init: StatusInit) {
    super()
    this.components = components
    this.init = init
    this.ownKey = toHex(init.identity.publicKey)
    this.intervalMs = init.minIntervalMs ?? STATUS_MIN_INTERVAL_MS
  }

  readonly [Symbol.toStringTag] = '@rhizome/status'

  async start(): Promise<void> {
    await this.load()
    const sync = this.components.sync
    sync.setStatusReceiver((record, from) => this.receive(record, from))
    sync.addEventListener('stream:greeted', this.onGreeted)
    sync.addEventListener('stream:resync', this.onResync)
    // Enrolments arrive in the devices document or in a trust statement's node list.
    this.init.replica.addEventListener('change', this.onChange)
    this.init.replica.addEventListener('trust', this.onChange)
  }

  async stop(): Promise<void> {
    for (const w of this.waiting.values()) clearTimeout(w.timer)
    this.waiting.clear()
    const sync = this.components.sync
    sync.removeEventListener('stream:greeted', this.onGreeted)
    sync.removeEventListener('stream:resync', this.onResync)
    this.init.replica.removeEventListener('change', this.onChange)
    this.init.replica.removeEventListener('trust', this.onChange)
    this.pending.clear()
  }

  get size(): number {
    return this.held.size
  }

  /** The newest record per node, stale ones included. */
  records(): StatusRecord[] {
    return [...this.held.values()].map(h => this.toRecord(h))
  }

  /**
   * Sign this node's status and keep it; it goes to every peer now, or, if the last went out less
   * than the interval ago, when the interval is up (then the newest published goes).
   */
  async publish(body: StatusBody, options: AbortOptions = {}): Promise<StatusRecord> {
    options.signal?.throwIfAborted()
    const replica = this.init.replica
    const seq = Math.max(Date.now(), this.ownSeq + 1)
    this.ownSeq = seq
    const signed = await signStatus(
      this.init.identity,
      replica.fleetId,
      seq,
      withAddresses(body, this.dialable()),
      replica.ed
    )
    const held: HeldStatus = { signed, peerId: peerIdOfKey(this.ownKey), receivedAt: Date.now() }
    await this.keep(held)
    trace('published %s %d', short(this.ownKey), seq)
    await this.paced(signed, undefined, async () => {
      for (const s of this.components.sync.streams()) s.sendStatus(signed.bytes)
      trace('sent %s %d', short(this.ownKey), seq)
    })
    return this.toRecord(held)
  }

  /** A record from a peer: verify, keep if newer (at the node's pace), relay to every other peer. */
  async receive(record: Uint8Array, from: SyncStream): Promise<void> {
    const { node, seq } = peekStatus(record)
    const admission = this.components.admission
    if (node === this.ownKey) {
      // Our own come back by relay.
      this.ownSeq = Math.max(this.ownSeq, seq)
      return
    }
    if (!admission.isEnrolledKey(node)) {
      // Not (yet) enrolled here: the messenger is not at fault.
      this.holdPending(node, seq, record, from)
      return
    }
    if (seq <= (this.held.get(node)?.signed.seq ?? -1)) return
    if (seq <= (this.waiting.get(node)?.signed.seq ?? -1)) return
    const t0 = performance.now()
    trace('recv %s %d from %s', short(node), seq, from.peerId.toString().slice(-8))
    this.checkPace(from, node)
    const replica = this.init.replica
    const signed = await verifyStatus(record, replica.fleetId, replica.ed, k =>
      admission.isEnrolledKey(k)
    )
    if (signed === undefined) return
    trace('verified %s %d in %d ms', short(node), seq, Math.round(performance.now() - t0))
    await this.paced(signed, from, async () => {
      const t1 = performance.now()
      await this.keep({ signed, peerId: peerIdOfKey(node), receivedAt: Date.now() })
      const t2 = performance.now()
      let n = 0
      for (const s of this.components.sync.streams()) {
        if (s === from) continue
        s.sendStatus(signed.bytes)
        n++
      }
      trace(
        'relayed %s %d to %d, kept in %d ms, %d ms after recv',
        short(node),
        seq,
        n,
        Math.round(t2 - t1),
        Math.round(performance.now() - t0)
      )
    })
  }

  /** Keep a record of a node not enrolled here, in case its enrolment is on its way. */
  private holdPending(node: string, seq: number, record: Uint8Array, from: SyncStream): void {
    const held = this.pending.get(node)
    if (held !== undefined && peekStatus(held.record).seq >= seq) return
    if (held === undefined && this.pending.size >= STATUS_PENDING_MAX) {
      // The oldest goes: honest peers resend on every anti-entropy round anyway.
      this.pending.delete(this.pending.keys().next().value as string)
    }
    this.pending.delete(node)
    this.pending.set(node, { record, from, at: performance.now() })
  }

  /** Receive again the held records whose node is enrolled now; forget the expired. */
  private retryPending(): void {
    const now = performance.now()
    for (const [node, p] of this.pending) {
      if (now - p.at > STATUS_PENDING_MS) {
        this.pending.delete(node)
        continue
      }
      if (!this.components.admission.isEnrolledKey(node)) continue
      this.pending.delete(node)
      this.receive(p.record, p.from).catch(err => {
        log('a held record of %s refused: %s', node.slice(0, 16), errMessage(err))
      })
    }
  }

  /**
   * Where peers can dial this node: its listen addresses without /p2p, loopback ones only when it
   * has no other (a node on loopback alone is a test or a single machine).
   */
  private dialable(): string[] {
    const all = this.components.addressManager.getAddresses().map(a => a.decapsulateCode(421))
    const outside = all.filter(a => !isLoopback(a))
    return (outside.length > 0 ? outside : all).map(a => a.toString())
  }

  /** A peer sending one node's newer records faster than that node may publish them is flooding. */
  private checkPace(from: SyncStream, node: string): void {
    let perNode = this.pace.get(from)
    if (perNode === undefined) {
      perNode = new Map()
      this.pace.set(from, perNode)
    }
    const now = performance.now()
    let bucket = perNode.get(node)
    if (bucket === undefined) {
      bucket = new TokenBucket(1000 / this.intervalMs, STATUS_FLOOD_BURST, now)
      perNode.set(node, bucket)
    }
    if (!bucket.take(1, now)) {
      throw new StatusFloodError(
        `peer ${from.peerId.toString()} sent status records of node ${node.slice(0, 16)}… faster than one per ${this.intervalMs} ms (more than ${STATUS_FLOOD_BURST} ahead); cut off`
      )
    }
  }

  /**
   * Run `go` for this record now if its node's last record went out at least the interval ago;
   * otherwise when the interval is up, unless a newer one has replaced it by then.
   */
  private async paced(
    signed: SignedStatus,
    from: SyncStream | undefined,
    go: () => Promise<void>
  ): Promise<void> {
    const node = signed.node
    const now = performance.now()
    let pace = this.relayPace.get(node)
    if (pace === undefined) {
      pace = new TokenBucket(1000 / this.intervalMs, STATUS_RELAY_BURST, now)
      this.relayPace.set(node, pace)
    }
    const before = this.waiting.get(node)
    if (before !== undefined) {
      clearTimeout(before.timer)
      this.waiting.delete(node)
      this.init.counters.statusRecordsCoalesced++
      trace('coalesced %s %d (by %d)', short(node), before.signed.seq, signed.seq)
    }
    const wait = pace.msUntil(1, now)
    if (wait > 0) trace('wait %s %d %d ms for a token', short(node), signed.seq, Math.round(wait))
    if (wait === 0) {
      pace.take(1, now)
      await go()
      return
    }
    const timer = setTimeout(() => {
      if (this.waiting.get(node)?.timer !== timer) return
      this.waiting.delete(node)
      pace.take(1, performance.now())
      void go()
    }, wait)
    this.waiting.set(node, { signed, from, timer })
  }

  private sendAll(to: SyncStream): void {
    for (const h of this.held.values()) to.sendStatus(h.signed.bytes)
  }

  private async keep(h: HeldStatus): Promise<void> {
    this.held.set(h.signed.node, h)
    try {
      await this.init.replica.store.putMeta(
        STATUS_META_PREFIX + h.signed.node,
        encodeStoredStatus(h.signed.bytes, h.receivedAt)
      )
    } catch (err) {
      log.error('could not persist status of %s: %s', h.signed.node.slice(0, 16), errMessage(err))
    }
    this.safeDispatchEvent('status', { detail: this.toRecord(h) })
  }

  private async load(): Promise<void> {
    const replica = this.init.replica
    for (const [, bytes] of await replica.store.listMeta(STATUS_META_PREFIX)) {
      try {
        const { record, receivedAt } = decodeStoredStatus(bytes)
        const signed = await verifyStatus(
          record,
          replica.fleetId,
          replica.ed,
          k => this.components.admission.isEnrolledKey(k) || k === this.ownKey
        )
        if (signed === undefined) continue
        this.held.set(signed.node, { signed, peerId: peerIdOfKey(signed.node), receivedAt })
        if (signed.node === this.ownKey) this.ownSeq = signed.seq
      } catch (err) {
        log.error('stored status record skipped: %s', errMessage(err))
      }
    }
  }

  private toRecord(h: HeldStatus): StatusRecord {
    const { body, addresses } = splitAddresses(h.signed.body)
    return {
      node: h.signed.node,
      peerId: h.peerId,
      seq: h.signed.seq,
      body,
      receivedAt: h.receivedAt,
      stale: Date.now() - h.receivedAt > this.init.staleAfterMs,
      addresses
    }
  }
}

/** The status service, for `services:` in createLibp2p. */
export function status(init: StatusInit): (components: StatusComponents) => StatusService {
  return components => new StatusService(components, init)
}
