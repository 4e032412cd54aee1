/**
 * The connection keeper: the only part of the mesh that makes connections.
 *
 * - Bootstrap peers are dialled at start and redialled whenever they are not connected, with
 *   capped exponential back-off (`REDIAL_MIN_MS` … `REDIAL_MAX_MS`). The back-off is reset only
 *   once a sync stream runs with the peer, so a peer that accepts the connection and then drops
 *   it (a ban, a full peer) is not hammered. `@libp2p/bootstrap` dials once; this keeps dialling.
 * - Discovered peers (mDNS) are dialled once when found, while there is room.
 * - Banned peers are never dialled.
 */
import { logger } from '@libp2p/logger'
import type { Libp2pEvents, PeerId, PeerInfo, Startable, TypedEventTarget } from '@libp2p/interface'
import type { ConnectionManager } from '@libp2p/interface-internal'
import type { Multiaddr } from '@multiformats/multiaddr'
import { REDIAL_MAX_MS, REDIAL_MIN_MS } from './limits.ts'
import type { SyncEvents } from './sync-service.ts'
import type { MeshLimits } from './types.ts'

const log = logger('rhizome:mesh:keeper')

export interface KeeperComponents {
  connectionManager: Pick<ConnectionManager, 'getConnections' | 'openConnection'>
  events: TypedEventTarget<Libp2pEvents>
  /** A running sync stream is what proves a link useful. */
  sync: TypedEventTarget<SyncEvents>
  admission: { isBanned(peer: PeerId): boolean }
}

export interface BootstrapPeer {
  addr: Multiaddr
  peerId: PeerId
}

export interface KeeperInit {
  bootstrap: BootstrapPeer[]
  limits: MeshLimits
  /** Redial back-off: first retry and cap, ms (default `REDIAL_MIN_MS`, `REDIAL_MAX_MS`). */
  redialMinMs?: number
  redialMaxMs?: number
}

interface Redial extends BootstrapPeer {
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
  private readonly bootstrap: Redial[]
  private readonly minMs: number
  private readonly maxMs: number
  private timer: ReturnType<typeof setInterval> | undefined
  private running = false
  private readonly onDisconnect = (e: CustomEvent<PeerId>): void => {
    const b = this.find(e.detail)
    if (b !== undefined) b.next = Date.now() + b.backoff
  }
  private readonly onStreamOpen = (e: CustomEvent<{ peerId: PeerId }>): void => {
    const b = this.find(e.detail.peerId)
    if (b !== undefined) b.backoff = this.minMs
  }
  private readonly onDiscovery = (e: CustomEvent<PeerInfo>): void => {
    this.discovered(e.detail.id)
  }

  constructor(components: KeeperComponents, init: KeeperInit) {
    this.components = components
    this.init = init
    this.minMs = init.redialMinMs ?? REDIAL_MIN_MS
    this.maxMs = init.redialMaxMs ?? REDIAL_MAX_MS
    this.bootstrap = init.bootstrap.map(b => ({
      ...b,
      next: 0,
      backoff: this.minMs,
      dialing: false
    }))
  }

  readonly [Symbol.toStringTag] = '@rhizome/connection-keeper'

  async start(): Promise<void> {
    this.components.events.addEventListener('peer:disconnect', this.onDisconnect)
    this.components.events.addEventListener('peer:discovery', this.onDiscovery)
    this.components.sync.addEventListener('stream:open', this.onStreamOpen)
    this.running = true
  }

  /** The first round of dials goes out once the node listens. */
  afterStart(): void {
    this.timer = setInterval(() => {
      this.redial()
    }, this.minMs)
    this.redial()
  }

  async stop(): Promise<void> {
    this.running = false
    clearInterval(this.timer)
    this.components.events.removeEventListener('peer:disconnect', this.onDisconnect)
    this.components.events.removeEventListener('peer:discovery', this.onDiscovery)
    this.components.sync.removeEventListener('stream:open', this.onStreamOpen)
  }

  private find(peer: PeerId): Redial | undefined {
    return this.bootstrap.find(b => b.peerId.equals(peer))
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

  private redial(): void {
    if (!this.running) return
    const cm = this.components.connectionManager
    const now = Date.now()
    for (const b of this.bootstrap) {
      if (b.dialing || b.next > now || this.components.admission.isBanned(b.peerId)) continue
      if (cm.getConnections(b.peerId).length > 0) continue
      b.dialing = true
      cm.openConnection(b.addr, {
        signal: AbortSignal.timeout(Math.min(this.init.limits.exchangeTimeoutMs, 10_000))
      })
        .catch(err => {
          log('bootstrap %a unreachable, retry in %d ms: %s', b.addr, b.backoff, errMessage(err))
        })
        // The back-off grows on every attempt and is reset only once a sync stream runs.
        .finally(() => {
          b.next = Date.now() + b.backoff
          b.backoff = Math.min(b.backoff * 2, this.maxMs)
          b.dialing = false
        })
    }
  }
}

/** The connection keeper, for `services:` in createLibp2p. */
export function connectionKeeper(
  init: KeeperInit
): (components: KeeperComponents) => ConnectionKeeper {
  return components => new ConnectionKeeper(components, init)
}
