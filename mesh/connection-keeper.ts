/**
 * The connection keeper: the only part of the mesh that makes connections.
 *
 * - Bootstrap peers are dialled at start and redialled whenever they are not connected, with
 *   capped exponential back-off (`REDIAL_MIN_MS` … `REDIAL_MAX_MS`). The back-off is reset only
 *   once a sync stream runs with the peer, so a peer that accepts the connection and then drops
 *   it (a ban, a full peer) is not hammered. `@libp2p/bootstrap` dials once; this keeps dialling.
 * - Learned peers: every enrolled node advertises where it can be dialled in its signed status
 *   records (status-record.ts). The keeper keeps `extraPeers` connections to enrolled nodes beyond
 *   the bootstrap list, picked at random among those, so the mesh stays connected when any one
 *   node goes down (a chain of bootstrap links no longer breaks at its middle). Records are kept
 *   in the store, so a restarted node dials known peers at once instead of waiting to be found.
 * - Discovered peers (mDNS) are dialled once when found, while there is room.
 * - Banned peers are never dialled; learned peers only while enrolled, bootstrap peers not once
 *   their enrolment is known to be revoked.
 */
import { logger } from '@libp2p/logger'
import type {
  AbortOptions,
  Connection,
  PeerId,
  Startable,
  TypedEventTarget
} from '@libp2p/interface'
import type { ConnectionManager } from '@libp2p/interface-internal'
import { PeerMap, PeerSet } from '@libp2p/peer-collections'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { PeerGoneError } from './errors.ts'
import {
  EXTRA_PEERS,
  MAX_EXTRA_DIALS,
  MAX_KNOWN_PEERS,
  REDIAL_MAX_MS,
  REDIAL_MIN_MS
} from './limits.ts'
import type { NodeEvents } from './connections.ts'
import type { StatusEvents } from './status-service.ts'
import type { SyncEvents } from './sync-service.ts'
import type { MeshLimits, StatusRecord } from './types.ts'

const log = logger('rhizome:mesh:keeper')

export interface KeeperComponents {
  peerId: PeerId
  connectionManager: Pick<ConnectionManager, 'getConnections' | 'openConnection'>
  events: NodeEvents
  /** A running sync stream is what proves a link useful. */
  sync: TypedEventTarget<SyncEvents>
  /** Where enrolled nodes said they can be dialled. */
  status: TypedEventTarget<StatusEvents> & { records(): StatusRecord[] }
  admission: {
    isBanned(peer: PeerId): boolean
    /** An enrolled node now. */
    isNode(peer: PeerId): boolean
    /** Known to have been revoked (never dialled, even from the bootstrap list). */
    isRevoked(peer: PeerId): boolean
  }
}

export interface BootstrapPeer {
  addr: Multiaddr
  peerId: PeerId
}

export interface KeeperInit {
  bootstrap: BootstrapPeer[]
  limits: MeshLimits
  /** Connections kept to learned peers beyond the bootstrap list (default `EXTRA_PEERS`). */
  extraPeers?: number
  /** Redial back-off: first retry and cap, ms (default `REDIAL_MIN_MS`, `REDIAL_MAX_MS`). */
  redialMinMs?: number
  redialMaxMs?: number
}

/** A peer we dial: by its bootstrap address or the addresses it advertised. */
interface Dialable {
  peerId: PeerId
  addrs: Multiaddr[]
  next: number
  backoff: number
  dialing: boolean
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

export class ConnectionKeeper implements Startable {
  private readonly components: KeeperComponents
  private readonly init: KeeperInit
  private readonly bootstrap: Dialable[]
  private readonly bootstrapIds: PeerSet
  private readonly learned = new PeerMap<Dialable>()
  private readonly minMs: number
  private readonly maxMs: number
  private readonly extraPeers: number
  private extraDialing = 0
  private timer: ReturnType<typeof setInterval> | undefined
  private running = false
  /** The event listeners start adds, all removed by stop's abort. */
  private listening = new AbortController()

  constructor(components: KeeperComponents, init: KeeperInit) {
    this.components = components
    this.init = init
    this.minMs = init.redialMinMs ?? REDIAL_MIN_MS
    this.maxMs = init.redialMaxMs ?? REDIAL_MAX_MS
    this.extraPeers = init.extraPeers ?? EXTRA_PEERS
    this.bootstrap = init.bootstrap.map(b => ({
      peerId: b.peerId,
      addrs: [b.addr],
      next: 0,
      backoff: this.minMs,
      dialing: false
    }))
    this.bootstrapIds = new PeerSet(init.bootstrap.map(b => b.peerId))
  }

  readonly [Symbol.toStringTag] = '@rhizome/connection-keeper'

  async start(): Promise<void> {
    this.listening = new AbortController()
    const on = { signal: this.listening.signal }
    const { events, sync, status } = this.components
    events.addEventListener(
      'peer:disconnect',
      e => {
        const d = this.find(e.detail)
        if (d !== undefined) d.next = Date.now() + d.backoff
      },
      on
    )
    events.addEventListener('peer:discovery', e => this.discovered(e.detail.id), on)
    // A running sync stream proves the link useful: its back-off starts again from the least.
    sync.addEventListener(
      'stream:open',
      e => {
        const d = this.find(e.detail.peerId)
        if (d !== undefined) d.backoff = this.minMs
      },
      on
    )
    status.addEventListener('status', e => this.learn(e.detail), on)
    this.running = true
  }

  /** The first round of dials goes out once the node listens, to known peers too. */
  afterStart(): void {
    for (const r of this.components.status.records()) this.learn(r)
    this.timer = setInterval(() => {
      this.tick()
    }, this.minMs)
    this.tick()
  }

  async stop(): Promise<void> {
    this.running = false
    clearInterval(this.timer)
    this.listening.abort()
  }

  /** Peers whose advertised addresses are known (not counting the bootstrap list). */
  get knownPeers(): number {
    return this.learned.size
  }

  /**
   * A connection to an enrolled node for a request (remote logs): the one held, or a new one to
   * its bootstrap address or the addresses it advertised. Never to a banned or revoked peer.
   */
  async connect(peer: PeerId, options: AbortOptions = {}): Promise<Connection> {
    const cm = this.components.connectionManager
    const held = cm.getConnections(peer).find(c => c.status === 'open')
    if (held !== undefined) return held
    const admission = this.components.admission
    const d = this.find(peer)
    if (d === undefined || admission.isBanned(peer) || admission.isRevoked(peer)) {
      throw new PeerGoneError(
        `no connection to ${peer.toString()} and no address known for it (it advertises its addresses in its status records)`
      )
    }
    try {
      return await cm.openConnection(
        d.addrs.length === 1 ? (d.addrs[0] as Multiaddr) : d.addrs,
        options
      )
    } catch (err) {
      throw new PeerGoneError(`cannot reach ${peer.toString()}: ${errMessage(err)}`)
    }
  }

  private find(peer: PeerId): Dialable | undefined {
    return this.bootstrap.find(b => b.peerId.equals(peer)) ?? this.learned.get(peer)
  }

  /** A status record says where its node can be dialled. */
  private learn(r: StatusRecord): void {
    if (r.addresses === undefined || r.addresses.length === 0) return
    let peer: PeerId
    try {
      peer = peerIdFromString(r.peerId)
    } catch {
      return
    }
    if (peer.equals(this.components.peerId) || this.bootstrapIds.has(peer)) return
    const addrs = r.addresses.map(a => multiaddr(a).encapsulate(`/p2p/${r.peerId}`))
    const held = this.learned.get(peer)
    if (held !== undefined) {
      held.addrs = addrs
      return
    }
    if (this.learned.size >= MAX_KNOWN_PEERS) {
      this.learned.delete(this.learned.keys().next().value as PeerId)
    }
    this.learned.set(peer, { peerId: peer, addrs, next: 0, backoff: this.minMs, dialing: false })
  }

  private discovered(peer: PeerId): void {
    const cm = this.components.connectionManager
    if (
      !this.running ||
      this.components.admission.isBanned(peer) ||
      cm.getConnections(peer).length > 0 ||
      cm.getConnections().length >= this.init.limits.maxConnections
    ) {
      return
    }
    cm.openConnection(peer, {
      signal: AbortSignal.timeout(this.init.limits.exchangeTimeoutMs)
    }).catch(err => log('dial of discovered %p failed: %s', peer, errMessage(err)))
  }

  private tick(): void {
    if (!this.running) return
    const admission = this.components.admission
    for (const b of this.bootstrap) {
      if (!admission.isBanned(b.peerId) && !admission.isRevoked(b.peerId)) this.dial(b, false)
    }
    this.extend()
  }

  /**
   * Keep `extraPeers` connections to enrolled nodes beyond the bootstrap list: while fewer are
   * connected, dial random ones among those whose addresses are known, a few at a time.
   */
  private extend(): void {
    if (this.extraPeers === 0 || this.learned.size === 0) return
    const cm = this.components.connectionManager
    const admission = this.components.admission
    const connected = new PeerSet(cm.getConnections().map(c => c.remotePeer))
    let extra = 0
    for (const p of connected) if (!this.bootstrapIds.has(p) && admission.isNode(p)) extra++
    let room = Math.min(this.extraPeers - extra, MAX_EXTRA_DIALS) - this.extraDialing
    if (room <= 0 || connected.size >= this.init.limits.maxConnections) return
    const now = Date.now()
    const candidates = [...this.learned.values()].filter(
      l =>
        !l.dialing &&
        l.next <= now &&
        !connected.has(l.peerId) &&
        admission.isNode(l.peerId) &&
        !admission.isBanned(l.peerId)
    )
    while (room-- > 0 && candidates.length > 0) {
      const i = Math.floor(Math.random() * candidates.length)
      const pick = candidates[i] as Dialable
      candidates[i] = candidates[candidates.length - 1] as Dialable
      candidates.pop()
      this.dial(pick, true)
    }
  }

  private dial(d: Dialable, extra: boolean): void {
    const cm = this.components.connectionManager
    if (d.dialing || d.next > Date.now() || cm.getConnections(d.peerId).length > 0) return
    d.dialing = true
    if (extra) this.extraDialing++
    cm.openConnection(d.addrs.length === 1 ? (d.addrs[0] as Multiaddr) : d.addrs, {
      signal: AbortSignal.timeout(Math.min(this.init.limits.exchangeTimeoutMs, 10_000))
    })
      .catch(err => {
        log('%p unreachable, retry in %d ms: %s', d.peerId, d.backoff, errMessage(err))
      })
      // The back-off grows on every attempt and is reset only once a sync stream runs, so a peer
      // that accepts the connection and then drops it (a ban, a full peer) is not hammered.
      .finally(() => {
        d.next = Date.now() + d.backoff
        d.backoff = Math.min(d.backoff * 2, this.maxMs)
        d.dialing = false
        if (extra) this.extraDialing--
      })
  }
}

/** The connection keeper, for `services:` in createLibp2p. */
export function connectionKeeper(
  init: KeeperInit
): (components: KeeperComponents) => ConnectionKeeper {
  return components => new ConnectionKeeper(components, init)
}
