/**
 * The status service: signed status records (`status-record.ts`), one last-writer-wins register
 * per enrolled node, gossiped over the sync streams and kept in the store's meta so a restarted
 * daemon still knows when each node was last seen.
 *
 * - `publish` signs this node's record (sequence: its clock in ms, strictly increasing) and sends
 *   it to every peer.
 * - A record from a peer is verified (enrolled key, signature, fleet), kept if newer than the one
 *   held, and relayed, then written to the store (a record lost to a crash comes again on the
 *   next anti-entropy round, so the relay does not wait for the disk). A record that brings
 *   rollout news goes to every other peer; any other to every session (a dashboard relays
 *   nothing on) and to `STATUS_RELAY_FANOUT` of the other devices at random (push gossip: the
 *   few a record misses get it at their next anti-entropy round, or with its node's next record),
 *   so a config change's routine records from every node do not cross every link while a rollout
 *   step needs the CPU. A node's first report of a rollout is news only when the rollout (as
 *   held here: `rolloutBudgeted`) has a disruption budget, whose order reads it.
 * - Per node, records are kept and relayed at a pace (`STATUS_MIN_INTERVAL_MS`, bursts of
 *   `STATUS_RELAY_BURST`); one sooner waits and is replaced by a newer one meanwhile. A record
 *   that brings rollout news (`bringsNews`) and finds that pace spent goes on a second budget of
 *   the same rate (`STATUS_NEWS_BURST`), so a rollout step is not held up a second per hop behind
 *   the node's routine records, and a flooding node still gets a bounded rate through.
 * - A peer's first hello and every anti-entropy round with it send it every record held.
 * - A record of a node not enrolled here (yet) is held aside, unverified (at most
 *   STATUS_PENDING_MAX nodes, for STATUS_PENDING_MS), and received again when a document or the
 *   trust chain changes:
 *   a new peer gets every record on its first hello, before the devices document naming those
 *   nodes has synced, and would otherwise wait for each node's next record.
 */
import { logger } from '@libp2p/logger'
import { MeshService } from './service.ts'
import type { AbortOptions, PeerId, Startable, TypedEventTarget } from '@libp2p/interface'
import type { AddressManager } from '@libp2p/interface-internal'
import { isLoopback } from '@libp2p/utils'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { fromHex, toHex } from '../crdt/bytes.ts'
import { STATUS_LIMITS } from '../crdt/fleet-status.ts'
import { bringsNews } from '../crdt/rollout-gate.ts'
import type { KeyPair } from '../crdt/keys.ts'
import type { Replica } from '../crdt/replica.ts'
import type { MeshCounters } from './counters.ts'
import { StatusFloodError } from './errors.ts'
import {
  STATUS_FLOOD_BURST,
  STATUS_MIN_INTERVAL_MS,
  STATUS_NEWS_BURST,
  STATUS_PENDING_MAX,
  STATUS_PENDING_MS,
  STATUS_RELAY_BURST,
  STATUS_RELAY_FANOUT
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
  admission: {
    isEnrolledKey(keyHex: string): boolean
    /** What a peer is admitted as: only devices relay records on. */
    admissionOf?(peer: PeerId): string
  }
}

export interface StatusInit {
  replica: Replica
  identity: KeyPair
  /** A record with no newer one for this long is stale, ms. */
  staleAfterMs: number
  counters: MeshCounters
  /** One record per node per this long is kept and relayed (default `STATUS_MIN_INTERVAL_MS`). */
  minIntervalMs?: number
  /**
   * Does the rollout of this id, as held here, have a disruption budget (so a node first taking
   * part in it is news, `bringsNews`)? One not held here: true. Default: true for every rollout.
   */
  rolloutBudgeted?: (rolloutId: string) => boolean
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

/** At most `n` of `all`, chosen at random (a partial Fisher-Yates shuffle of a copy). */
function pickAtRandom<T>(all: readonly T[], n: number): T[] {
  const a = [...all]
  const k = Math.min(n, a.length)
  for (let i = 0; i < k; i++) {
    const j = i + Math.floor(Math.random() * (a.length - i))
    ;[a[i], a[j]] = [a[j]!, a[i]!]
  }
  return a.slice(0, k)
}

/** A newer record that came before its node's interval was up: kept when it is. */
interface Waiting {
  signed: SignedStatus
  from: SyncStream | undefined
  timer: ReturnType<typeof setTimeout>
}

/** The token bucket of `node` in `map` (one record per `intervalMs`, `burst` at once). */
function bucketOf(
  map: Map<string, TokenBucket>,
  node: string,
  intervalMs: number,
  burst: number,
  now: number
): TokenBucket {
  let bucket = map.get(node)
  if (bucket === undefined) {
    bucket = new TokenBucket(1000 / intervalMs, burst, now)
    map.set(node, bucket)
  }
  return bucket
}

export class StatusService
  extends MeshService<StatusEvents, StatusComponents, StatusInit>
  implements Startable
{
  private readonly held = new Map<string, HeldStatus>()
  private readonly ownKey: string
  private ownSeq = 0
  private readonly intervalMs: number
  /** Per node, its records' relay pace (`STATUS_MIN_INTERVAL_MS`, `STATUS_RELAY_BURST`). */
  private readonly relayPace = new Map<string, TokenBucket>()
  /** Per node, the second budget of records bringing rollout news (`STATUS_NEWS_BURST`). */
  private readonly newsPace = new Map<string, TokenBucket>()
  /** Our own last record sent (others': the one held is the one relayed). */
  private ownSent: SignedStatus | undefined
  /** Records to write to the store, by node (`persist`), and the write under way. */
  private readonly dirty = new Map<string, HeldStatus>()
  private flushing: Promise<void> | undefined
  private readonly waiting = new Map<string, Waiting>()
  /** Per sending stream, per node: newer records of that node it sent, against the pace. */
  private readonly pace = new WeakMap<SyncStream, Map<string, TokenBucket>>()
  /** Records of nodes not enrolled here yet, by node: the newest seen, with when it came. */
  private readonly pending = new Map<string, { record: Uint8Array; from: SyncStream; at: number }>()

  constructor(components: StatusComponents, init: StatusInit) {
    super(components, init)
    this.ownKey = toHex(init.identity.publicKey)
    this.intervalMs = init.minIntervalMs ?? STATUS_MIN_INTERVAL_MS
  }

  readonly [Symbol.toStringTag] = '@rhizome/status'

  async start(): Promise<void> {
    await this.load()
    const sync = this.components.sync
    sync.setStatusReceiver((record, from) => this.receive(record, from))
    const on = this.listen()
    sync.addEventListener('stream:greeted', e => this.sendAll(e.detail), on)
    sync.addEventListener('stream:resync', e => this.sendAll(e.detail), on)
    // Enrolments arrive in the devices document or in a trust statement's node list.
    this.init.replica.addEventListener('change', () => this.retryPending(), on)
    this.init.replica.addEventListener('trust', () => this.retryPending(), on)
  }

  async stop(): Promise<void> {
    for (const w of this.waiting.values()) clearTimeout(w.timer)
    this.waiting.clear()
    this.unlisten()
    this.pending.clear()
    await this.flushing
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
    this.remember(held)
    trace('published %s %d', short(this.ownKey), seq)
    const persisted = this.persist(held)
    const news = this.bringsNews(this.ownSent?.body, signed.body)
    await this.paced(signed, news, undefined, async () => {
      this.ownSent = signed
      let n = 0
      for (const s of this.components.sync.streams()) {
        s.sendStatus(signed.bytes)
        n++
      }
      trace('sent %s %d to %d', short(this.ownKey), seq, n)
    })
    await persisted
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
    if (trace.enabled) {
      trace('recv %s %d from %s', short(node), seq, from.peerId.toString().slice(-8))
    }
    this.checkPace(from, node)
    const replica = this.init.replica
    const signed = await verifyStatus(record, replica.fleetId, replica.ed, k =>
      admission.isEnrolledKey(k)
    )
    // A newer one may have come in while this one was verified.
    if (signed === undefined || seq <= (this.held.get(node)?.signed.seq ?? -1)) return
    trace('verified %s %d in %d ms', short(node), seq, Math.round(performance.now() - t0))
    const held: HeldStatus = { signed, peerId: peerIdOfKey(node), receivedAt: Date.now() }
    const news = this.bringsNews(this.held.get(node)?.signed.body, signed.body)
    await this.paced(signed, news, from, async () => {
      const others = [...this.components.sync.streams()].filter(s => s !== from)
      // A session (a dashboard) relays nothing on, so the push cannot reach it another way.
      const relays = (s: SyncStream): boolean =>
        (this.components.admission.admissionOf?.(s.peerId) ?? 'node') === 'node'
      const to = news
        ? others
        : [
            ...others.filter(s => !relays(s)),
            ...pickAtRandom(others.filter(relays), STATUS_RELAY_FANOUT)
          ]
      for (const s of to) s.sendStatus(signed.bytes)
      const n = to.length
      held.receivedAt = Date.now()
      this.remember(held)
      trace(
        'relayed %s %d to %d, %d ms after recv',
        short(node),
        seq,
        n,
        Math.round(performance.now() - t0)
      )
      // Not awaited: the stream's next message need not wait for the disk.
      void this.persist(held)
    })
  }

  /** Does `next` bring rollout news over `prev`, its node's record before it (`bringsNews`)? */
  private bringsNews(prev: unknown, next: unknown): boolean {
    return bringsNews(prev, next, STATUS_LIMITS.rollouts, this.init.rolloutBudgeted)
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
      // Both paces a relay keeps (paced below) together.
      bucket = new TokenBucket(2000 / this.intervalMs, STATUS_FLOOD_BURST, now)
      perNode.set(node, bucket)
    }
    if (!bucket.take(1, now)) {
      throw new StatusFloodError(
        `peer ${from.peerId.toString()} sent status records of node ${node.slice(0, 16)}… faster than two per ${this.intervalMs} ms (more than ${STATUS_FLOOD_BURST} ahead); cut off`
      )
    }
  }

  /**
   * Run `go` for this record now if its node's pace has room, or its news budget has and it brings
   * rollout news (`news`, over the node's last record sent on); otherwise when the pace has room,
   * unless a newer record has replaced it by then (what `go` does after it sends is then not
   * waited for).
   */
  private async paced(
    signed: SignedStatus,
    news: boolean,
    from: SyncStream | undefined,
    go: () => Promise<void>
  ): Promise<void> {
    const node = signed.node
    const now = performance.now()
    const pace = bucketOf(this.relayPace, node, this.intervalMs, STATUS_RELAY_BURST, now)
    const waiting = this.waiting.get(node)
    if (waiting !== undefined) {
      clearTimeout(waiting.timer)
      this.waiting.delete(node)
      this.init.counters.statusRecordsCoalesced++
      trace('coalesced %s %d (by %d)', short(node), waiting.signed.seq, signed.seq)
    }
    const wait = pace.msUntil(1, now)
    if (wait === 0) {
      pace.take(1, now)
      await go()
      return
    }
    if (news) {
      const budget = bucketOf(this.newsPace, node, this.intervalMs, STATUS_NEWS_BURST, now)
      if (budget.msUntil(1, now) === 0) {
        budget.take(1, now)
        trace('news %s %d goes on its own budget', short(node), signed.seq)
        await go()
        return
      }
    }
    trace('wait %s %d %d ms for a token', short(node), signed.seq, Math.round(wait))
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
    trace('resent all %d to %s', this.held.size, String(to.peerId).slice(-8))
  }

  /** Hold `h` as its node's newest record and say so. */
  private remember(h: HeldStatus): void {
    this.held.set(h.signed.node, h)
    this.safeDispatchEvent('status', { detail: this.toRecord(h) })
  }

  /**
   * Write `h` to the store (a restart starts from it), one record at a time, the newest of each
   * node: a burst of records makes a queue of one write per node, not one per record in flight
   * at once (those filled the thread pool the daemon's other file work waits for, and held up
   * the rollout agent's own saves by seconds).
   */
  private persist(h: HeldStatus): Promise<void> {
    this.dirty.set(h.signed.node, h)
    this.flushing ??= this.flush()
    return this.flushing
  }

  private async flush(): Promise<void> {
    for (const [node, h] of this.dirty) {
      this.dirty.delete(node)
      // A newer one of this node is queued behind, or has been written.
      if (this.held.get(node) === h) await this.write(h)
    }
    this.flushing = undefined
  }

  private async write(h: HeldStatus): Promise<void> {
    try {
      await this.init.replica.store.putMeta(
        STATUS_META_PREFIX + h.signed.node,
        encodeStoredStatus(h.signed.bytes, h.receivedAt),
        // Not worth a flush: every node writes every node's records, and a record lost to a
        // power cut comes again from a peer on its next anti-entropy round.
        { durable: false }
      )
    } catch (err) {
      log.error('could not persist status of %s: %s', h.signed.node.slice(0, 16), errMessage(err))
    }
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
