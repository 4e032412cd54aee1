/**
 * The mesh's public surface, as the daemon (node/) and the dashboard (web/) use it.
 * Implementations live beside this file; see index.ts for the factory.
 */
import type { AbortOptions, TypedEventTarget } from '@libp2p/interface'
import type { Replica } from '../crdt/replica.ts'
import type { KeyPair } from '../crdt/keys.ts'
import type { ArtifactRequest, LinkOffer } from './artifact-protocol.ts'

/** A status body is JSON written by the daemon; at most MAX_STATUS_BYTES encoded. */
export type StatusBody = Record<string, unknown>

export const MAX_STATUS_BYTES = 64 * 1024

/** The newest signed status record of one node, as this peer holds it. */
export interface StatusRecord {
  /** The node's ed25519 public key, hex (its device identity). */
  node: string
  /** Its libp2p PeerId (derived from the same key). */
  peerId: string
  /** Last-writer-wins sequence number (the node's clock in ms at publication, strictly increasing). */
  seq: number
  body: StatusBody
  /** Local clock (ms since epoch) when this peer first received this record: for staleness only. */
  receivedAt: number
  /** No newer record within `staleAfterMs`. Stale records are kept, not deleted. */
  stale: boolean
  /**
   * Where the node said it can be dialled (multiaddrs without /p2p): added to the signed record by
   * the node's mesh, not part of `body`.
   */
  addresses?: string[]
}

export interface MeshLimits {
  /** Open connections at most. */
  maxConnections: number
  /** Concurrent inbound streams per protocol per connection. */
  maxInboundStreams: number
  /** Largest frame accepted on any Rhizome protocol, bytes. */
  maxFrameBytes: number
  /** Time allowed for one protocol exchange, ms. */
  exchangeTimeoutMs: number
  /** Inbound connection attempts per second per remote host. */
  inboundConnectionsPerSecond: number
  /** How long a peer that sent invalid data is refused, ms. */
  banMs: number
  /**
   * Time an inbound connection has to finish its handshake (Noise and Yamux), ms: a socket that
   * never starts one holds a handshake slot no longer than this.
   */
  handshakeTimeoutMs: number
  /** Inbound connections still in their handshake, at most, from all hosts together. */
  maxPendingInbound: number
  /** Inbound connections still in their handshake, at most, from one host (IPv4 address or IPv6 /64). */
  maxPendingInboundPerHost: number
  /**
   * Of `maxPendingInbound`, handshake slots kept for hosts an enrolled node has connected from
   * before: strangers flooding from many hosts cannot take them.
   */
  reservedPendingInbound: number
}

export type Admission = 'node' | 'admin-session' | 'viewer' | 'none'

export interface PeerSummary {
  peerId: string
  addresses: string[]
  admission: Admission
  /** Name from enrolment, if enrolled. */
  name?: string
}

export interface MeshMetrics {
  peers: number
  /** Artifact chunks received over artifact links, and over mesh streams (artifact-link.ts). */
  artifactChunksOverLinks: number
  artifactChunksOverStreams: number
  /** Artifact links open: ours to holders, and holders' to us. */
  artifactLinksOut: number
  artifactLinksIn: number
  /** Peers with a running sync session (normally every admitted connected peer). */
  syncSessions: number
  changesAccepted: number
  /** Batches received that held at least one new change (or waited for missing ones). */
  batchesAccepted: number
  /** Batches received that held nothing new (a neighbour pushed what another had already sent). */
  batchesDuplicate: number
  /** Batches of changes refused on verification (bad signature, unauthorised signer, malformed). */
  changesRejected: number
  batchesRejected: number
  syncBytesIn: number
  syncBytesOut: number
  /** Sync protocol messages (frames) received and sent. */
  syncMessagesIn: number
  syncMessagesOut: number
  statusRecords: number
  peersBanned: number
  /** Peers cut off for exceeding their work budget (messages or handling time per second). */
  peersThrottled: number
  /** Status records not kept because their node published faster than one per `STATUS_MIN_INTERVAL_MS` (the newest is kept later). */
  statusRecordsCoalesced: number
  /** Inbound connections refused before their handshake (per-host or reserved handshake slots). */
  inboundRefused: number
}

export interface MeshOptions {
  replica: Replica
  /** The device's ed25519 key: its PeerId is its identity. Browsers pass a fresh one. */
  identity: KeyPair
  /** Multiaddrs to listen on (daemons): e.g. /ip4/0.0.0.0/tcp/4001 and /ip4/0.0.0.0/tcp/4002/ws. */
  listen?: string[]
  /** Multiaddrs with /p2p/<PeerId> to dial and keep dialling. */
  bootstrap?: string[]
  /** mDNS discovery on the LAN (default on for daemons; tests turn it off). */
  mdns?: boolean
  /** Contents of a libp2p private-network swarm key (pnet); peers without it cannot connect. */
  psk?: Uint8Array
  /** Period of the anti-entropy round with a random peer, ms (default 10 s). */
  antiEntropyMs?: number
  /** A status record with no newer one for this long is stale, ms (default 30 s). */
  staleAfterMs?: number
  /**
   * Does the rollout of this id, as this node holds it, have a disruption budget? A node's first
   * report of a rollout is relayed as news (to every peer) only then. One not held: true.
   * Default: true for every rollout (the daemon's rollout agent answers).
   */
  rolloutBudgeted?: (rolloutId: string) => boolean
  limits?: Partial<MeshLimits>
  /**
   * Browsers: the credential presented to each bootstrap daemon (session protocol,
   * `browser-session.ts`) to open a browser session before syncing: a one-time viewer token from
   * that daemon, or a session voucher signed by an admin or operator key (`signSessionVoucher`).
   */
  credential?: SessionCredential
  /**
   * Connections kept beyond `bootstrap`, to enrolled nodes picked at random from the addresses
   * their status records advertise, so the mesh routes around a node that is down (default
   * `EXTRA_PEERS`, 3; 0 turns it off: only bootstrap and mDNS connections are made).
   */
  extraPeers?: number
  /** Daemons: the artifacts this node holds, served to enrolled peers (artifact-service.ts). */
  artifacts?: ArtifactHolder
  /**
   * Daemons: the TCP port artifact links are served on (artifact-link.ts), at the hosts of the
   * `listen` addresses; 0 (default) any free port, `false` none (chunks go over the mesh
   * connections only). Fetching over links others offer needs no port.
   */
  artifactPort?: number | false
}

/** One artifact link, fetcher side (artifact-link.ts). */
export interface ArtifactLink {
  /** False once closed (by either end, a timeout or a fault). */
  readonly open: boolean
  /**
   * Send `req` (chunk or manifest); resolves with the reply's payload (status byte first, as on a
   * stream), in a buffer the link lends (`release` it once read). Undefined when the link cannot
   * take it (closed, or MAX_LINK_WAITING requests wait).
   */
  request(req: ArtifactRequest, signal: AbortSignal): Promise<Lent> | undefined
  close(err?: Error): void
  /**
   * Called once when the link closes; `fault`: a peer fault no request carried to its asker;
   * `stalled`: it went silent with requests waiting.
   */
  onClose: ((fault: Error | undefined, stalled: boolean) => void) | undefined
}

/** What the link server asks of the artifact service. */
export interface LinkServerInit {
  /** Hosts to listen on (one server each, the same port). */
  hosts: string[]
  /** 0: any free port. */
  port: number
  /** Handshake, and a reply's write, within this long. */
  timeoutMs: number
  /** Do we still serve `peer` (an enrolled device with an open mesh connection)? */
  serves(peer: string): boolean
  /**
   * The reply to one request, as frame pieces to write; `done` once written (or dropped). A
   * rejection has nothing to clean up. A chunk is read into `into` if it fits (the link reuses it
   * once `done`).
   */
  answer(
    peer: string,
    req: ArtifactRequest,
    into?: Uint8Array
  ): Promise<{ pieces: Uint8Array[]; done(): void }>
  /** `peer` broke the protocol on a link: ban it. */
  fault(peer: string, err: Error): void
}

export interface LinkServer {
  /** The port served on (0 when no host could be bound). */
  readonly port: number
  /** Links open to us. */
  readonly open: number
  /** A one-time offer for `peer` to open a link; undefined over the bounds. */
  offer(peer: string): LinkOffer | undefined
  /** End `peer`'s links. */
  drop(peer: string): void
  close(): Promise<void>
}

/** Artifact links as a platform provides them (daemons: `tlsArtifactLinks`). */
export interface ArtifactLinks {
  serve(init: LinkServerInit): Promise<LinkServer>
  open(
    host: string,
    offer: LinkOffer,
    timeoutMs: number,
    signal: AbortSignal
  ): Promise<ArtifactLink>
}

/** Which chunks of an artifact a holder has: all of them, or a bitfield (bit i of byte i>>3). */
export type ArtifactHave = { all: true } | { all?: false; bits: Uint8Array }

/** What a node serves on the artifact protocol (the daemon's store implements it). */
export interface ArtifactHolder {
  have(digest: string): ArtifactHave | undefined
  manifest(digest: string): Uint8Array | undefined
  /**
   * A verified chunk, or undefined if not held; may wait (the serve rate limit). Read into `into`
   * when given and large enough (a buffer the caller reuses), else into a new buffer.
   */
  chunk(digest: string, index: number, into?: Uint8Array): Promise<Uint8Array | undefined>
  /** A peer says it now holds these chunks of `digest` (unchecked: the chunk itself is checked). */
  announced?(peerId: string, digest: string, indices: number[]): void
  /** Super-seed the artifacts held complete while the upload is saturated (default true). */
  readonly superSeed?: boolean
}

/**
 * A chunk's bytes: one buffer, or the pieces it arrived in over the wire (in order), which the
 * store hashes and writes without joining them.
 */
export type ChunkBytes = Uint8Array | readonly Uint8Array[]

/**
 * Bytes in a buffer lent by the transport (an artifact link reuses its reply buffers): `release`
 * once they are no longer read (a chunk: once checked and written).
 */
export interface Lent {
  bytes: Uint8Array
  release(): void
}

/**
 * A connected enrolled peer as a source of artifact chunks. Replies are unchecked: the fetcher
 * (node/artifacts/fetch.ts) checks the manifest against the digest and every chunk against it.
 * `Digest`: how digests are typed (the daemon brands them).
 */
export interface ArtifactSource<Digest extends string = string> {
  /** Stable name of the source (a PeerId), for reports and bans. */
  readonly id: string
  /** Which chunks of `digest` it holds; undefined if none (or it does not know the artifact). */
  have(digest: Digest, signal: AbortSignal): Promise<ArtifactHave | undefined>
  /** The encoded manifest. */
  manifest(digest: Digest, signal: AbortSignal): Promise<Uint8Array | undefined>
  /**
   * Chunk `index`, or 'busy': a super-seeding holder says to take it from the peer it went to.
   * `insist`: never answer busy. Rejects if the source cannot send it.
   */
  chunk(
    digest: Digest,
    index: number,
    signal: AbortSignal,
    opts?: { insist?: boolean }
  ): Promise<ChunkBytes | Lent | 'busy'>
  /** Tell the peer we now hold these chunks of `digest` (at most MAX_ANNOUNCE_ENTRIES). */
  announce(digest: Digest, indices: number[], signal: AbortSignal): Promise<void>
}

/** The artifact exchange as the daemon uses it. */
export interface MeshArtifacts {
  /** Connected enrolled peers as chunk sources (streams on connections already held). */
  sources(): ArtifactSource[]
  /** A peer sent a wrong manifest or chunk: ban it like any peer that sends invalid data. */
  faulty(peerId: string, err: Error): void
}

/** A workload's last `lines` output lines on this node, or undefined when no such workload runs. */
export type LogSource = (workload: string, lines: number) => string[] | undefined

/** What a browser presents to open a session: a viewer token, or a signed session voucher. */
export type SessionCredential =
  | { viewerToken: string; voucher?: undefined }
  | { voucher: Uint8Array; viewerToken?: undefined }

/** A peer sent invalid data and was disconnected and banned. */
export interface PeerRejection {
  peerId: string
  /** What it did wrong, for a person. */
  reason: string
  /** The error class's name (`InvalidSignatureError`, `FrameTooLargeError`, …). */
  error: string
}

/** A daemon's answer to the credential this browser presented. */
export interface SessionAnswer {
  peerId: string
  ok: boolean
  admission?: Admission
  reason?: string
}

/** The mesh's events (all `CustomEvent`s). */
export interface MeshEvents {
  'peer:connect': CustomEvent<{ peerId: string }>
  'peer:disconnect': CustomEvent<{ peerId: string }>
  /** A newer status record arrived or was published. */
  status: CustomEvent<StatusRecord>
  rejected: CustomEvent<PeerRejection>
  /** Browsers: a daemon admitted or refused our credential. */
  session: CustomEvent<SessionAnswer>
}

export interface Mesh extends TypedEventTarget<MeshEvents> {
  readonly peerId: string
  start(): Promise<void>
  stop(): Promise<void>
  /** Addresses others can dial, with /p2p/<PeerId>. */
  addresses(): string[]
  peers(): PeerSummary[]
  /** Sign and gossip this node's status. */
  publishStatus(body: StatusBody, options?: AbortOptions): Promise<StatusRecord>
  /** The newest record per node, stale ones included. */
  statuses(): StatusRecord[]
  /** A one-time token a browser presents to be admitted as a read-only viewer of this daemon. */
  issueViewerToken(): string
  metrics(): MeshMetrics
  /** Serve this node's workload output to enrolled nodes and admin sessions (logs-protocol.ts). */
  serveLogs(source: LogSource): void
  /**
   * The last lines of `workload` on the enrolled node named `node` (its name, PeerId or key), by
   * asking it through the mesh (this node's own without asking); undefined when no such workload
   * runs there. Throws UnknownNodeError, PeerGoneError (unreachable) or LogsRefusedError.
   */
  fetchLogs(
    node: string,
    workload: string,
    options?: AbortOptions & { lines?: number }
  ): Promise<string[] | undefined>
  /** Artifact chunks to and from peers (artifact-service.ts). */
  readonly artifacts: MeshArtifacts
}
