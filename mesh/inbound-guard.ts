/**
 * Handshake slots. An inbound connection holds one of libp2p's pending-connection slots
 * (`maxIncomingPendingConnections`) from the moment its socket opens until its Noise and Yamux
 * handshake is done or `handshakeTimeoutMs` runs out; with every slot held, libp2p refuses every
 * new inbound connection. Idle sockets that never start a handshake, reopened as soon as they are
 * dropped, would so lock enrolled devices out. The guard, run as the connection gater's first
 * inbound check, bounds who may hold the slots:
 *
 * - one host (an IPv4 address, an IPv6 /64) holds at most `maxPendingInboundPerHost`;
 * - hosts no enrolled node has connected from share all but `reservedPendingInbound` of
 *   `maxPendingInbound`: a flood from many hosts still leaves room for known ones.
 *
 * A slot is given back when the handshake gets past Noise (the peer proved a key) or the socket
 * closes. Outbound dials hold no inbound slot and are never refused here.
 */
import { getNetConfig, isNetworkAddress } from '@libp2p/utils'
import type { MultiaddrConnection } from '@libp2p/interface'
import type { Multiaddr } from '@multiformats/multiaddr'
import type { MeshCounters } from './counters.ts'
import { MAX_KNOWN_HOSTS } from './limits.ts'
import type { MeshLimits } from './types.ts'

/** The host a handshake slot is counted against: an IPv4 address, or the /64 of an IPv6 one. */
export function hostOf(addr: Multiaddr): string | undefined {
  if (!isNetworkAddress(addr)) return undefined
  const c = getNetConfig(addr)
  if (c.type === 'ip4') return c.host
  if (c.type === 'ip6') return c.host.toLowerCase().split(':').slice(0, 4).join(':') + '::/64'
  return undefined
}

export class InboundGuard {
  private readonly limits: MeshLimits
  private readonly counters: MeshCounters
  private readonly pending = new Map<string, Set<MultiaddrConnection>>()
  private total = 0
  private readonly known = new Set<string>()

  constructor(limits: MeshLimits, counters: MeshCounters) {
    this.limits = limits
    this.counters = counters
  }

  /** The connection gater's `denyInboundConnection`: true refuses the socket before any handshake. */
  deny(maConn: MultiaddrConnection): boolean {
    const host = hostOf(maConn.remoteAddr)
    if (host === undefined) return false
    const held = this.pending.get(host)
    const heldByHost = held?.size ?? 0
    const strangerRoom = this.limits.maxPendingInbound - this.limits.reservedPendingInbound
    if (
      heldByHost >= this.limits.maxPendingInboundPerHost ||
      (!this.known.has(host) && this.total >= strangerRoom)
    ) {
      this.counters.inboundRefused++
      return true
    }
    const set = held ?? new Set()
    set.add(maConn)
    this.pending.set(host, set)
    this.total++
    maConn.addEventListener('close', () => this.release(host, maConn), { once: true })
    return false
  }

  /** The handshake got past Noise: the slot is free again. */
  handshakeDone(maConn: MultiaddrConnection): void {
    const host = hostOf(maConn.remoteAddr)
    if (host !== undefined) this.release(host, maConn)
  }

  /** An enrolled node is connected from `addr`: its host may use the reserved slots from now on. */
  remember(addr: Multiaddr): void {
    const host = hostOf(addr)
    if (host === undefined || this.known.has(host)) return
    if (this.known.size >= MAX_KNOWN_HOSTS) {
      this.known.delete(this.known.values().next().value as string)
    }
    this.known.add(host)
  }

  private release(host: string, maConn: MultiaddrConnection): void {
    const set = this.pending.get(host)
    if (set === undefined || !set.delete(maConn)) return
    this.total--
    if (set.size === 0) this.pending.delete(host)
  }
}
