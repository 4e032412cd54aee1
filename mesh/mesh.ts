/**
 * The mesh: a libp2p node configured for Rhizome, with the Rhizome protocols as libp2p services:
 *
 * | service      | file                   | job                                                        |
 * |--------------|------------------------|------------------------------------------------------------|
 * | `admission`  | admission-service.ts   | who is served; browser sessions; grace period; bans        |
 * | `sync`       | sync-service.ts        | one sync stream per admitted peer: documents, trust, push  |
 * | `status`     | status-service.ts      | signed status records: publish, verify, keep, relay        |
 * | `keeper`     | connection-keeper.ts   | makes connections: bootstrap, learned and found peers      |
 * | `logs`       | logs-service.ts        | a node's recent workload output, to and from peers         |
 * | `artifacts`  | artifact-service.ts    | artifact chunks served to and fetched from enrolled peers  |
 *
 * Each takes a narrow `*Components` interface (libp2p's own components plus the services it
 * builds on) and its `init`; this file only wires them together and presents the `Mesh` surface
 * (types.ts) to the daemon and the dashboard. Browser-safe: the transports and discovery come
 * from a `MeshPlatform` (`transports-node.ts` for daemons, `browser.ts` for the dashboard).
 */
import { noise, type ICryptoInterface } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { privateKeyFromRaw, publicKeyFromRaw } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { TypedEventEmitter } from '@libp2p/interface'
import type { AbortOptions, PeerId, PrivateKey } from '@libp2p/interface'
import { PeerSet } from '@libp2p/peer-collections'
import { peerIdFromPublicKey, peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p, type Libp2p, type Libp2pOptions } from 'libp2p'
import { concatBytes, fromHex } from '../crdt/bytes.ts'
import { InvalidConfigError } from '../crdt/errors.ts'
import type { KeyPair } from '../crdt/keys.ts'
import type { Replica } from '../crdt/replica.ts'
import { AdmissionControl, peerKeyHex } from './admission.ts'
import { admission, type AdmissionService } from './admission-service.ts'
import { artifactExchange, type ArtifactService } from './artifact-service.ts'
import { corkedEncrypter } from './corked-writes.ts'
import { connectionKeeper, type BootstrapPeer, type ConnectionKeeper } from './connection-keeper.ts'
import { MeshCounters } from './counters.ts'
import { MeshNotRunningError, UnknownNodeError } from './errors.ts'
import { InboundGuard } from './inbound-guard.ts'
import {
  DEFAULT_ANTI_ENTROPY_MS,
  DEFAULT_STALE_AFTER_MS,
  MAX_STREAM_WINDOW_BYTES,
  resolveLimits
} from './limits.ts'
import { logs, type LogsService } from './logs-service.ts'
import { status, type StatusService } from './status-service.ts'
import { sync, type SyncService } from './sync-service.ts'
import type {
  ArtifactLinks,
  LogSource,
  Mesh,
  MeshEvents,
  MeshLimits,
  MeshMetrics,
  MeshOptions,
  PeerSummary,
  StatusBody,
  StatusRecord
} from './types.ts'

type Transports = NonNullable<Libp2pOptions['transports']>
type Discovery = NonNullable<Libp2pOptions['peerDiscovery']>

/** What differs between a daemon and a browser: transports, discovery, default listen addresses. */
export interface MeshPlatform {
  transports: () => Transports
  /** Discovery modules besides the bootstrap list (mDNS for daemons). */
  discovery?: (opts: { mdns: boolean }) => Discovery
  defaultListen?: string[]
  /** Noise's ciphers (daemons: node/crypto without re-importing the key per message, noise-crypto.ts). */
  noiseCrypto?: ICryptoInterface
  /** Artifact links beside the mesh connections (daemons: TLS, artifact-link.ts). */
  artifactLinks?: ArtifactLinks
}

interface RhizomeServices extends Record<string, unknown> {
  admission: AdmissionService
  sync: SyncService
  status: StatusService
  keeper: ConnectionKeeper
  logs: LogsService
  artifacts: ArtifactService
}

/**
 * The hosts of the TCP listen addresses (WebSockets included), each once; an unspecified one
 * (0.0.0.0, ::) alone covers the rest.
 */
function listenHosts(listen: readonly string[]): string[] {
  const hosts = new Set<string>()
  for (const a of listen) {
    const parts = multiaddr(a).getComponents()
    const ip = parts.find(p => p.name === 'ip4' || p.name === 'ip6')?.value
    if (ip !== undefined && parts.some(p => p.name === 'tcp')) hosts.add(ip)
  }
  const any = [...hosts].find(h => h === '0.0.0.0' || h === '::')
  return any !== undefined ? [any] : [...hosts]
}

function parseBootstrap(addrs: readonly string[]): BootstrapPeer[] {
  return addrs.map(a => {
    const addr = multiaddr(a)
    const id = addr.getComponents().findLast(c => c.name === 'p2p')?.value
    if (id === undefined) {
      throw new InvalidConfigError(
        `bootstrap address ${a} has no /p2p/<PeerId>; add the peer's id so its identity can be checked`
      )
    }
    return { addr, peerId: peerIdFromString(id) }
  })
}

/**
 * A device key as libp2p's private key. Built from the seed and the public key the identity
 * already holds: libp2p's own `generateKeyPairFromSeed` derives the public key again in pure
 * JavaScript, which costs ~40 ms of a daemon's start (elliptic-curve tables built on first use).
 */
export function libp2pPrivateKey(pair: KeyPair): PrivateKey {
  return privateKeyFromRaw(concatBytes(pair.seed, pair.publicKey))
}

export class RhizomeMesh extends TypedEventEmitter<MeshEvents> implements Mesh {
  readonly replica: Replica
  readonly limits: MeshLimits
  private readonly opts: MeshOptions
  private readonly platform: MeshPlatform
  private readonly control: AdmissionControl
  private readonly counters = new MeshCounters()
  private readonly bootstrap: BootstrapPeer[]
  private node: Libp2p<RhizomeServices> | undefined
  private running = false
  private logSource: LogSource | undefined

  constructor(opts: MeshOptions, platform: MeshPlatform) {
    super()
    this.opts = opts
    this.platform = platform
    this.replica = opts.replica
    this.limits = resolveLimits(opts.limits)
    this.control = new AdmissionControl(opts.replica)
    this.bootstrap = parseBootstrap(opts.bootstrap ?? [])
  }

  get peerId(): string {
    return this.started().peerId.toString()
  }

  async start(): Promise<void> {
    if (this.running) return
    const limits = this.limits
    const opts = this.opts
    const control = this.control
    // Banned peers, and revoked devices (a stolen device is refused even as a bootstrap peer).
    const banned = (peer: PeerId): boolean => control.isBanned(peer) || control.isRevoked(peer)
    const guard = new InboundGuard(limits, this.counters)
    const node = await createLibp2p({
      privateKey: libp2pPrivateKey(opts.identity),
      addresses: { listen: opts.listen ?? this.platform.defaultListen ?? [] },
      transports: this.platform.transports(),
      connectionEncrypters: [
        corkedEncrypter(
          noise(
            this.platform.noiseCrypto !== undefined ? { crypto: this.platform.noiseCrypto } : {}
          )
        )
      ],
      streamMuxers: [meshMuxer(limits)],
      ...(opts.psk !== undefined ? { connectionProtector: preSharedKey({ psk: opts.psk }) } : {}),
      connectionGater: {
        // Browsers refuse ws:// and private addresses by default; daemons on a LAN need both.
        denyDialMultiaddr: () => false,
        denyDialPeer: banned,
        denyInboundConnection: maConn => guard.deny(maConn),
        denyInboundEncryptedConnection: (peer, maConn) => {
          guard.handshakeDone(maConn)
          return banned(peer)
        },
        denyOutboundEncryptedConnection: banned
      },
      connectionManager: {
        maxConnections: limits.maxConnections,
        inboundConnectionThreshold: limits.inboundConnectionsPerSecond,
        maxIncomingPendingConnections: limits.maxPendingInbound,
        inboundUpgradeTimeout: limits.handshakeTimeoutMs
      },
      peerDiscovery: this.platform.discovery?.({ mdns: opts.mdns ?? true }) ?? [],
      services: {
        identify: identify(),
        ping: ping(),
        admission: admission({
          replica: this.replica,
          control,
          limits,
          counters: this.counters,
          bootstrap: new PeerSet(this.bootstrap.map(b => b.peerId)),
          ...(opts.credential !== undefined ? { credential: opts.credential } : {})
        }),
        sync: sync({
          replica: this.replica,
          limits,
          counters: this.counters,
          antiEntropyMs: opts.antiEntropyMs ?? DEFAULT_ANTI_ENTROPY_MS
        }),
        status: status({
          replica: this.replica,
          identity: opts.identity,
          staleAfterMs: opts.staleAfterMs ?? DEFAULT_STALE_AFTER_MS,
          counters: this.counters,
          ...(opts.rolloutBudgeted !== undefined ? { rolloutBudgeted: opts.rolloutBudgeted } : {})
        }),
        keeper: connectionKeeper({
          bootstrap: this.bootstrap,
          limits,
          ...(opts.extraPeers !== undefined ? { extraPeers: opts.extraPeers } : {})
        }),
        logs: logs({ limits }),
        artifacts: artifactExchange({
          limits,
          ...(opts.artifacts !== undefined ? { holder: opts.artifacts } : {}),
          ...(this.platform.artifactLinks !== undefined
            ? {
                links: {
                  impl: this.platform.artifactLinks,
                  hosts: listenHosts(opts.listen ?? this.platform.defaultListen ?? []),
                  port: opts.artifactPort ?? 0
                }
              }
            : {})
        })
      },
      start: false
    })
    this.node = node
    const { admission: adm, status: st } = node.services
    node.addEventListener('peer:connect', e => {
      this.safeDispatchEvent('peer:connect', { detail: { peerId: e.detail.toString() } })
    })
    node.addEventListener('peer:disconnect', e => {
      this.safeDispatchEvent('peer:disconnect', { detail: { peerId: e.detail.toString() } })
    })
    // Hosts enrolled nodes connect from may use the reserved handshake slots.
    adm.addEventListener('peer:admitted', e => {
      if (adm.admissionOf(e.detail) !== 'node') return
      for (const c of node.getConnections(e.detail)) guard.remember(c.remoteAddr)
    })
    adm.addEventListener('rejected', e => {
      const { peerId, reason, error } = e.detail
      this.safeDispatchEvent('rejected', { detail: { peerId, reason, error } })
    })
    adm.addEventListener('session', e => {
      this.safeDispatchEvent('session', { detail: e.detail })
    })
    st.addEventListener('status', e => {
      this.safeDispatchEvent('status', { detail: e.detail })
    })
    if (this.logSource !== undefined) node.services.logs.serve(this.logSource)
    await node.start()
    this.running = true
  }

  async stop(): Promise<void> {
    if (!this.running) return
    this.running = false
    await this.node?.stop()
  }

  addresses(): string[] {
    return this.node?.getMultiaddrs().map(String) ?? []
  }

  peers(): PeerSummary[] {
    const node = this.node
    if (node === undefined) return []
    const adm = node.services.admission
    return node.getPeers().map(p => {
      const summary: PeerSummary = {
        peerId: p.toString(),
        addresses: node.getConnections(p).map(c => c.remoteAddr.toString()),
        admission: adm.admissionOf(p)
      }
      const name = adm.device(p)?.name
      if (name !== undefined) summary.name = name
      return summary
    })
  }

  async publishStatus(body: StatusBody, options?: AbortOptions): Promise<StatusRecord> {
    return this.started().services.status.publish(body, options)
  }

  statuses(): StatusRecord[] {
    return this.node?.services.status.records() ?? []
  }

  issueViewerToken(): string {
    return this.control.issueViewerToken()
  }

  metrics(): MeshMetrics {
    const node = this.node
    const artifacts = node?.services.artifacts
    const links = artifacts?.linksOpen()
    return {
      peers: node?.getPeers().length ?? 0,
      syncSessions: node?.services.sync.streams().length ?? 0,
      statusRecords: node?.services.status.size ?? 0,
      ...this.counters.snapshot(),
      artifactChunksOverLinks: artifacts?.received.overLinks ?? 0,
      artifactChunksOverStreams: artifacts?.received.overStreams ?? 0,
      artifactLinksOut: links?.out ?? 0,
      artifactLinksIn: links?.in ?? 0,
      peersBanned: this.control.bannedCount
    }
  }

  serveLogs(source: LogSource): void {
    this.logSource = source
    this.node?.services.logs.serve(source)
  }

  async fetchLogs(
    node: string,
    workload: string,
    options: AbortOptions & { lines?: number } = {}
  ): Promise<string[] | undefined> {
    const n = this.started()
    let key = node
    try {
      key = peerKeyHex(peerIdFromString(node)) ?? node
    } catch {
      // a name or a key, not a PeerId
    }
    const device = this.control.findDevice(key)
    if (device === undefined) {
      throw new UnknownNodeError(
        `no enrolled node is called "${node}" (a name, PeerId or key); rhizome status lists the fleet's nodes`
      )
    }
    const peer = peerIdFromPublicKey(publicKeyFromRaw(fromHex(device.key)))
    const svc = n.services.logs
    if (peer.equals(n.peerId)) return svc.own(workload, options.lines ?? Infinity)
    return svc.fetch(peer, workload, options)
  }

  get artifacts(): ArtifactService {
    return this.started().services.artifacts
  }

  private started(): Libp2p<RhizomeServices> {
    if (this.node === undefined) {
      throw new MeshNotRunningError('the mesh is not started; call start() first')
    }
    return this.node
  }
}

/**
 * The stream muxer: yamux with a bounded window. Reading pauses while a frame is handled
 * (frames.ts#readFrames): what a peer can make us buffer per stream is then the frame plus one
 * window, and a paused stream's buffer never holds more than the window it granted.
 */
export function meshMuxer(limits: MeshLimits): ReturnType<typeof yamux> {
  return yamux({
    streamOptions: {
      maxStreamWindowSize: MAX_STREAM_WINDOW_BYTES,
      maxReadBufferLength: 2 * MAX_STREAM_WINDOW_BYTES,
      maxWriteBufferLength: 2 * limits.maxFrameBytes
    }
  })
}

/** Build a mesh on a platform (daemons: `createMesh` in index.ts; browsers: `createBrowserMesh`). */
export async function createMeshOn(opts: MeshOptions, platform: MeshPlatform): Promise<Mesh> {
  return new RhizomeMesh(opts, platform)
}
