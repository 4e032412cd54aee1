/**
 * The mesh: a libp2p node plus the Rhizome protocols (sync, status gossip, browser sessions),
 * admission and bans. Browser-safe: the transports and discovery come from a `MeshPlatform`
 * (`transports-node.ts` for daemons, `browser.ts` for the dashboard).
 */
import * as Automerge from '@automerge/automerge'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPairFromSeed, publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey, peerIdFromString } from '@libp2p/peer-id'
import { identify } from '@libp2p/identify'
import { logger } from '@libp2p/logger'
import { ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { createLibp2p, type Libp2p, type Libp2pOptions } from 'libp2p'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { fromHex, toHex } from '../crdt/bytes.ts'
import { DEVICES_DOC } from '../crdt/devices.ts'
import { encodeBatch } from '../crdt/signed-change.ts'
import type { Replica, ChangeEventDetail } from '../crdt/replica.ts'
import type { KeyPair } from '../crdt/keys.ts'
import { AdmissionControl, peerKeyHex } from './admission.ts'
import { MeshNotRunningError, PeerGoneError, SessionRefusedError } from './errors.ts'
import { readOneFrame, sendFrame } from './frames.ts'
import {
  DEFAULT_ANTI_ENTROPY_MS,
  DEFAULT_STALE_AFTER_MS,
  MAX_PUSH_BYTES,
  MAX_REMEMBERED_PEERS,
  REDIAL_MAX_MS,
  REDIAL_MIN_MS,
  resolveLimits,
  UNADMITTED_GRACE_MS
} from './limits.ts'
import { PeerSession, type SessionHost } from './peer-session.ts'
import {
  decodeSessionReply,
  decodeSessionRequest,
  encodeSessionReply,
  encodeSessionRequest,
  SESSION_PROTOCOL,
  verifySessionVoucher,
  type SessionReply
} from './session.ts'
import {
  decodeStoredStatus,
  encodeStoredStatus,
  signStatus,
  verifyStatus,
  type SignedStatus
} from './status-record.ts'
import { SYNC_PROTOCOL } from './sync-messages.ts'
import type {
  Admission,
  Mesh,
  MeshLimits,
  MeshMetrics,
  MeshOptions,
  PeerSummary,
  StatusBody,
  StatusRecord
} from './types.ts'

const log = logger('rhizome:mesh')
const STATUS_META_PREFIX = 'mesh/status/'

type Transports = NonNullable<Libp2pOptions['transports']>
type Discovery = NonNullable<Libp2pOptions['peerDiscovery']>

/** What differs between a daemon and a browser: transports, discovery, default listen addresses. */
export interface MeshPlatform {
  transports: () => Transports
  /** Discovery modules besides the bootstrap list (mDNS for daemons). */
  discovery?: (opts: { mdns: boolean }) => Discovery
  defaultListen?: string[]
}

interface HeldStatus {
  signed: SignedStatus
  peerId: string
  receivedAt: number
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

export class RhizomeMesh extends EventTarget implements Mesh, SessionHost {
  readonly replica: Replica
  readonly limits: MeshLimits
  private readonly opts: MeshOptions
  private readonly platform: MeshPlatform
  private readonly identity: KeyPair
  private node: Libp2p | undefined
  private readonly admission: AdmissionControl
  private readonly sessions = new Map<string, PeerSession>()
  private readonly opening = new Set<string>()
  private readonly syncStates = new Map<string, Map<string, Uint8Array>>()
  private readonly statusHeld = new Map<string, HeldStatus>()
  private readonly bootstrap: Array<{
    addr: Multiaddr
    peerId: string
    next: number
    backoff: number
    dialing: boolean
  }>
  private readonly bootstrapIds: Set<string>
  private readonly graceTimers = new Map<string, ReturnType<typeof setTimeout>>()
  private timers: Array<ReturnType<typeof setInterval>> = []
  private running = false
  private ownSeq = 0
  private readonly counters = {
    changesAccepted: 0,
    batchesAccepted: 0,
    batchesDuplicate: 0,
    changesRejected: 0,
    batchesRejected: 0,
    syncBytesIn: 0,
    syncBytesOut: 0,
    syncMessagesIn: 0,
    syncMessagesOut: 0,
    peersBanned: 0
  }
  private readonly onChange = (e: Event): void => {
    this.handleChange((e as CustomEvent<ChangeEventDetail>).detail)
  }
  private readonly onTrust = (): void => {
    this.handleTrust()
  }

  constructor(opts: MeshOptions, platform: MeshPlatform) {
    super()
    this.opts = opts
    this.platform = platform
    this.replica = opts.replica
    this.identity = opts.identity
    this.limits = resolveLimits(opts.limits)
    this.admission = new AdmissionControl(opts.replica)
    this.bootstrap = (opts.bootstrap ?? []).map(a => {
      const addr = multiaddr(a)
      const peerId = addr.getComponents().findLast(c => c.name === 'p2p')?.value
      if (peerId === undefined) {
        throw new RangeError(
          `bootstrap address ${a} has no /p2p/<PeerId>; add the peer's id so its identity can be checked`
        )
      }
      return { addr, peerId, next: 0, backoff: REDIAL_MIN_MS, dialing: false }
    })
    this.bootstrapIds = new Set(this.bootstrap.map(b => b.peerId))
  }

  get peerId(): string {
    if (this.node === undefined) {
      throw new MeshNotRunningError('the mesh is not started; call start() first')
    }
    return this.node.peerId.toString()
  }

  async start(): Promise<void> {
    if (this.running) return
    await this.admission.refresh()
    await this.loadStatuses()
    const limits = this.limits
    const node = await createLibp2p({
      privateKey: await generateKeyPairFromSeed('Ed25519', this.identity.seed),
      addresses: { listen: this.opts.listen ?? this.platform.defaultListen ?? [] },
      transports: this.platform.transports(),
      connectionEncrypters: [noise()],
      streamMuxers: [
        yamux({
          streamOptions: {
            maxReadBufferLength: limits.maxFrameBytes + 4 * 1024 * 1024,
            maxWriteBufferLength: 4 * limits.maxFrameBytes
          }
        })
      ],
      ...(this.opts.psk !== undefined
        ? { connectionProtector: preSharedKey({ psk: this.opts.psk }) }
        : {}),
      connectionGater: {
        // Browsers refuse ws:// and private addresses by default; daemons on a LAN need both.
        denyDialMultiaddr: () => false,
        denyDialPeer: (peerId: PeerId) => this.admission.isBanned(peerId.toString()),
        denyInboundEncryptedConnection: (peerId: PeerId) =>
          this.admission.isBanned(peerId.toString()),
        denyOutboundEncryptedConnection: (peerId: PeerId) =>
          this.admission.isBanned(peerId.toString())
      },
      connectionManager: {
        maxConnections: limits.maxConnections,
        inboundConnectionThreshold: limits.inboundConnectionsPerSecond
      },
      peerDiscovery: this.platform.discovery?.({ mdns: this.opts.mdns ?? true }) ?? [],
      services: { identify: identify(), ping: ping() },
      start: false
    })
    this.node = node
    const handlerOpts = {
      maxInboundStreams: limits.maxInboundStreams,
      maxOutboundStreams: limits.maxInboundStreams
    }
    await node.handle(
      SYNC_PROTOCOL,
      (stream, connection) => {
        this.onSyncStream(stream, connection)
      },
      handlerOpts
    )
    await node.handle(
      SESSION_PROTOCOL,
      (stream, connection) => {
        this.onSessionStream(stream, connection).catch(err =>
          log('session request from %s failed: %s', connection.remotePeer, errMessage(err))
        )
      },
      handlerOpts
    )
    node.addEventListener('peer:connect', e => {
      this.onPeerConnect(e.detail.toString())
    })
    node.addEventListener('peer:disconnect', e => {
      this.onPeerDisconnect(e.detail.toString())
    })
    node.addEventListener('peer:discovery', e => {
      const id = e.detail.id.toString()
      if (
        node.getConnections(e.detail.id).length > 0 ||
        node.getConnections().length >= limits.maxConnections
      ) {
        return
      }
      node
        .dial(e.detail.id, { signal: AbortSignal.timeout(limits.exchangeTimeoutMs) })
        .catch(err => log('dial of discovered %s failed: %s', id, errMessage(err)))
    })
    this.replica.addEventListener('change', this.onChange)
    this.replica.addEventListener('trust', this.onTrust)
    await node.start()
    this.running = true
    this.timers.push(
      setInterval(() => {
        this.redialBootstrap()
      }, REDIAL_MIN_MS)
    )
    this.timers.push(
      setInterval(() => {
        this.antiEntropy()
      }, this.opts.antiEntropyMs ?? DEFAULT_ANTI_ENTROPY_MS)
    )
    this.redialBootstrap()
  }

  async stop(): Promise<void> {
    if (!this.running) return
    this.running = false
    for (const t of this.timers) clearInterval(t)
    this.timers = []
    for (const t of this.graceTimers.values()) clearTimeout(t)
    this.graceTimers.clear()
    this.replica.removeEventListener('change', this.onChange)
    this.replica.removeEventListener('trust', this.onTrust)
    for (const s of [...this.sessions.values()]) s.close()
    await this.node?.stop()
  }

  addresses(): string[] {
    return this.node?.getMultiaddrs().map(String) ?? []
  }

  peers(): PeerSummary[] {
    const node = this.node
    if (node === undefined) return []
    return node.getPeers().map(p => {
      const id = p.toString()
      const summary: PeerSummary = {
        peerId: id,
        addresses: node.getConnections(p).map(c => c.remoteAddr.toString()),
        admission: this.admission.admissionOf(id)
      }
      const name = this.admission.device(id)?.name
      if (name !== undefined) summary.name = name
      return summary
    })
  }

  async publishStatus(body: StatusBody): Promise<StatusRecord> {
    const seq = Math.max(Date.now(), this.ownSeq + 1)
    this.ownSeq = seq
    const signed = await signStatus(this.identity, this.replica.fleetId, seq, body, this.replica.ed)
    const held: HeldStatus = {
      signed,
      peerId: this.node?.peerId.toString() ?? '',
      receivedAt: Date.now()
    }
    await this.keepStatus(held)
    for (const s of this.sessions.values()) s.sendStatus(signed.bytes)
    return this.toRecord(held)
  }

  statuses(): StatusRecord[] {
    return [...this.statusHeld.values()].map(h => this.toRecord(h))
  }

  issueViewerToken(): string {
    return this.admission.issueViewerToken()
  }

  metrics(): MeshMetrics {
    return {
      peers: this.node?.getPeers().length ?? 0,
      syncSessions: [...this.sessions.values()].filter(s => s.isOpen).length,
      statusRecords: this.statusHeld.size,
      ...this.counters,
      peersBanned: this.admission.bannedCount
    }
  }

  // ---- SessionHost ----

  mayServe(peerId: string): boolean {
    return this.admission.admissionOf(peerId) !== 'none' || this.bootstrapIds.has(peerId)
  }

  mayAccept(peerId: string): boolean {
    const a = this.admission.admissionOf(peerId)
    return a === 'node' || a === 'admin-session' || this.bootstrapIds.has(peerId)
  }

  loadSyncState(peerId: string, docId: string): Automerge.SyncState | undefined {
    const bytes = this.syncStates.get(peerId)?.get(docId)
    return bytes === undefined ? undefined : Automerge.decodeSyncState(bytes)
  }

  saveSyncState(peerId: string, docId: string, state: Automerge.SyncState): void {
    let m = this.syncStates.get(peerId)
    if (m === undefined) {
      if (this.syncStates.size >= MAX_REMEMBERED_PEERS) {
        this.syncStates.delete(this.syncStates.keys().next().value as string)
      }
      m = new Map()
      this.syncStates.set(peerId, m)
    }
    m.set(docId, Automerge.encodeSyncState(state))
  }

  statusRecords(): Uint8Array[] {
    return [...this.statusHeld.values()].map(h => h.signed.bytes)
  }

  async receiveStatus(record: Uint8Array, from: PeerSession): Promise<void> {
    const signed = await verifyStatus(record, this.replica.fleetId, this.replica.ed, k =>
      this.admission.isEnrolledKey(k)
    )
    if (signed === undefined) return
    const held = this.statusHeld.get(signed.node)
    if (held !== undefined && held.signed.seq >= signed.seq) return
    if (signed.node === toHex(this.identity.publicKey)) {
      this.ownSeq = Math.max(this.ownSeq, signed.seq)
    }
    const h: HeldStatus = { signed, peerId: peerIdOfKey(signed.node), receivedAt: Date.now() }
    await this.keepStatus(h)
    for (const s of this.sessions.values()) if (s !== from) s.sendStatus(signed.bytes)
  }

  invalid(session: PeerSession, err: Error): void {
    this.reject(session.peerId, err)
  }

  closed(session: PeerSession): void {
    if (this.sessions.get(session.peerId) === session) this.sessions.delete(session.peerId)
  }

  count(what: 'in' | 'out' | 'accepted' | 'duplicate' | 'refused', n: number): void {
    switch (what) {
      case 'in':
        this.counters.syncBytesIn += n
        this.counters.syncMessagesIn++
        break
      case 'out':
        this.counters.syncBytesOut += n
        this.counters.syncMessagesOut++
        break
      case 'accepted':
        this.counters.changesAccepted += n
        this.counters.batchesAccepted++
        break
      case 'duplicate':
        this.counters.batchesDuplicate++
        break
      case 'refused':
        this.counters.changesRejected += n
    }
  }

  // ---- internals ----

  /** A peer sent invalid data: count it, tell listeners, refuse it for banMs, hang up. */
  private reject(peerId: string, err: Error): void {
    log('rejecting %s for %d ms: %s: %s', peerId, this.limits.banMs, err.name, err.message)
    this.counters.batchesRejected++
    this.counters.peersBanned++
    this.admission.ban(peerId, this.limits.banMs)
    this.sessions.get(peerId)?.close(err)
    this.dispatchEvent(
      new CustomEvent('rejected', { detail: { peerId, reason: err.message, error: err.name } })
    )
    this.node?.hangUp(peerIdFromStringSafe(peerId) ?? (peerId as unknown as PeerId)).catch(() => {})
  }

  private async keepStatus(h: HeldStatus): Promise<void> {
    this.statusHeld.set(h.signed.node, h)
    try {
      await this.replica.store.putMeta(
        STATUS_META_PREFIX + h.signed.node,
        encodeStoredStatus(h.signed.bytes, h.receivedAt)
      )
    } catch (err) {
      log.error('could not persist status of %s: %s', h.signed.node.slice(0, 16), errMessage(err))
    }
    this.dispatchEvent(new CustomEvent('status', { detail: this.toRecord(h) }))
  }

  private async loadStatuses(): Promise<void> {
    const own = toHex(this.identity.publicKey)
    for (const [, bytes] of await this.replica.store.listMeta(STATUS_META_PREFIX)) {
      try {
        const { record, receivedAt } = decodeStoredStatus(bytes)
        const signed = await verifyStatus(
          record,
          this.replica.fleetId,
          this.replica.ed,
          k => this.admission.isEnrolledKey(k) || k === own
        )
        if (signed === undefined) continue
        this.statusHeld.set(signed.node, { signed, peerId: peerIdOfKey(signed.node), receivedAt })
        if (signed.node === own) this.ownSeq = signed.seq
      } catch (err) {
        log.error('stored status record skipped: %s', errMessage(err))
      }
    }
  }

  private toRecord(h: HeldStatus): StatusRecord {
    const staleAfter = this.opts.staleAfterMs ?? DEFAULT_STALE_AFTER_MS
    return {
      node: h.signed.node,
      peerId: h.peerId,
      seq: h.signed.seq,
      body: h.signed.body,
      receivedAt: h.receivedAt,
      stale: Date.now() - h.receivedAt > staleAfter
    }
  }

  private handleChange(d: ChangeEventDetail): void {
    if (d.docId === DEVICES_DOC) {
      this.admission
        .refresh()
        .then(() => {
          this.reviewPeers()
        })
        .catch(err => log.error('enrolment refresh failed: %s', errMessage(err)))
    }
    // Relayed once durable, not as soon as applied: measured with the earlier relay by sync round
    // (docs/benchmarks.md), relaying before the fsync made more pushes cross on the wire and cost
    // more CPU than the fsync it saved per hop.
    const push = d.batches.map(b => ({
      bytes: encodeBatch(b),
      hashes: b.signatures.map(sig => sig.hash)
    }))
    if (push.length > 0 && push.every(b => b.bytes.length <= MAX_PUSH_BYTES)) {
      for (const s of this.sessions.values()) s.push(d.docId, push)
    } else {
      for (const s of this.sessions.values()) s.announce(d.docId)
    }
  }

  private handleTrust(): void {
    this.admission
      .refresh()
      .then(() => {
        this.reviewPeers()
      })
      .catch(err => log.error('enrolment refresh failed: %s', errMessage(err)))
    for (const s of this.sessions.values()) s.resync()
  }

  /** After enrolment changed: drop peers no longer admitted, start sync with newly admitted ones. */
  private reviewPeers(): void {
    const node = this.node
    if (node === undefined || !this.running) return
    for (const p of node.getPeers()) {
      const id = p.toString()
      if (this.mayServe(id)) {
        this.clearGrace(id)
        if (!this.sessions.has(id)) this.openSync(id)
      } else {
        this.sessions.get(id)?.close()
        this.startGrace(id)
      }
    }
  }

  private onPeerConnect(peerId: string): void {
    this.dispatchEvent(new CustomEvent('peer:connect', { detail: { peerId } }))
    const b = this.bootstrap.find(x => x.peerId === peerId)
    if (b !== undefined && this.opts.session !== undefined) {
      this.presentSession(peerId).catch(err =>
        log.error('session with %s refused: %s', peerId, errMessage(err))
      )
      return
    }
    if (this.mayServe(peerId)) this.openSync(peerId)
    else this.startGrace(peerId)
  }

  private onPeerDisconnect(peerId: string): void {
    this.clearGrace(peerId)
    this.sessions.get(peerId)?.close()
    const b = this.bootstrap.find(x => x.peerId === peerId)
    if (b !== undefined) b.next = Date.now() + b.backoff
    this.dispatchEvent(new CustomEvent('peer:disconnect', { detail: { peerId } }))
  }

  /** A connected peer that is not admitted is hung up on after a grace period (time to present a session). */
  private startGrace(peerId: string): void {
    if (this.graceTimers.has(peerId)) return
    this.graceTimers.set(
      peerId,
      setTimeout(() => {
        this.graceTimers.delete(peerId)
        if (!this.mayServe(peerId)) {
          this.node?.hangUp(peerIdFromStringSafe(peerId) as PeerId).catch(() => {})
        }
      }, UNADMITTED_GRACE_MS)
    )
  }

  private clearGrace(peerId: string): void {
    const t = this.graceTimers.get(peerId)
    if (t !== undefined) {
      clearTimeout(t)
      this.graceTimers.delete(peerId)
    }
  }

  /** Open our sync stream to a peer. Both sides may do this; the stream opened by the lower PeerId wins. */
  private openSync(peerId: string): void {
    const node = this.node
    if (node === undefined || this.opening.has(peerId) || this.sessions.has(peerId)) return
    const me = node.peerId.toString()
    this.opening.add(peerId)
    // The higher PeerId waits a moment: usually the lower one's stream arrives and ours is not needed.
    const delay = me < peerId ? 0 : 100
    setTimeout(() => {
      if (this.sessions.has(peerId) || !this.running) {
        this.opening.delete(peerId)
        return
      }
      this.streamOnConnection(peerId, SYNC_PROTOCOL)
        .then(stream => {
          this.opening.delete(peerId)
          if (stream.status !== 'open') return
          this.startSession(peerId, stream, me)
        })
        .catch(err => {
          this.opening.delete(peerId)
          log('opening sync with %s failed: %s', peerId, errMessage(err))
        })
    }, delay)
  }

  private onSyncStream(stream: Stream, connection: Connection): void {
    const peerId = connection.remotePeer.toString()
    // Strict inbound admission: refuse before sending anything.
    if (this.admission.isBanned(peerId) || !this.mayServe(peerId)) {
      stream.abort(new SessionRefusedError('not admitted'))
      return
    }
    this.startSession(peerId, stream, peerId)
  }

  private startSession(peerId: string, stream: Stream, opener: string): void {
    const held = this.sessions.get(peerId)
    if (held !== undefined && held.isOpen) {
      // Duplicate: keep the stream opened by the lower PeerId, on both sides alike.
      if (held.opener <= opener) {
        stream
          .close({ signal: AbortSignal.timeout(1000) })
          .catch(() => stream.abort(new Error('duplicate')))
        return
      }
      held.close()
    }
    const session = new PeerSession(this, peerId, stream, opener)
    this.sessions.set(peerId, session)
    const b = this.bootstrap.find(x => x.peerId === peerId)
    if (b !== undefined) b.backoff = REDIAL_MIN_MS
    session.run().catch(err => log.error('session with %s: %s', peerId, errMessage(err)))
  }

  /** Daemon side of the session protocol: admit a browser on a viewer token or a voucher. */
  private async onSessionStream(stream: Stream, connection: Connection): Promise<void> {
    const peerId = connection.remotePeer.toString()
    let reply: SessionReply
    try {
      const req = decodeSessionRequest(
        await readOneFrame(stream, 4096, this.limits.exchangeTimeoutMs)
      )
      if (req.kind === 'token') {
        if (!this.admission.redeemViewerToken(req.token, peerId)) {
          throw new SessionRefusedError(
            'viewer token unknown, expired or already used; ask the daemon for a new one'
          )
        }
        reply = { ok: true, admission: 'viewer' }
      } else {
        const key = peerKeyHex(peerId)
        if (key === undefined) throw new SessionRefusedError('a session needs an Ed25519 PeerId')
        const v = await verifySessionVoucher(req.voucher, key, this.replica.trust, this.replica.ed)
        this.admission.admitSession(peerId, v.role, v.expires)
        reply = { ok: true, admission: v.role }
      }
    } catch (err) {
      reply = { ok: false, reason: errMessage(err) }
    }
    try {
      await sendFrame(stream, encodeSessionReply(reply), this.limits.exchangeTimeoutMs)
      await stream.close({ signal: AbortSignal.timeout(this.limits.exchangeTimeoutMs) })
    } catch {
      stream.abort(new Error('session reply failed'))
    }
    if (reply.ok) {
      this.clearGrace(peerId)
      this.openSync(peerId)
    }
  }

  /** Browser side: present our viewer token or voucher to a daemon, then sync. */
  private async presentSession(peerId: string): Promise<Admission> {
    const cred = this.opts.session
    if (cred === undefined) return 'none'
    const stream = await this.streamOnConnection(peerId, SESSION_PROTOCOL)
    const req =
      cred.viewerToken !== undefined
        ? { kind: 'token' as const, token: cred.viewerToken }
        : { kind: 'voucher' as const, voucher: cred.voucher }
    await sendFrame(stream, encodeSessionRequest(req), this.limits.exchangeTimeoutMs)
    const reply = decodeSessionReply(
      await readOneFrame(stream, 4096, this.limits.exchangeTimeoutMs)
    )
    await stream
      .close({ signal: AbortSignal.timeout(this.limits.exchangeTimeoutMs) })
      .catch(() => {})
    if (!reply.ok) {
      this.dispatchEvent(
        new CustomEvent('session', { detail: { peerId, ok: false, reason: reply.reason } })
      )
      throw new SessionRefusedError(reply.reason)
    }
    this.dispatchEvent(
      new CustomEvent('session', { detail: { peerId, ok: true, admission: reply.admission } })
    )
    this.openSync(peerId)
    return reply.admission
  }

  /**
   * A protocol stream on a connection we already hold to `peerId`. Never `dialProtocol(peerId)`:
   * that dials a new connection when the old one has just gone, at whatever address identify
   * taught us, which routes around a link the operator (or a test) deliberately cut. Only
   * bootstrap redials and discovery make connections.
   */
  private async streamOnConnection(peerId: string, protocol: string): Promise<Stream> {
    const target = peerIdFromStringSafe(peerId)
    const conn =
      target === undefined
        ? undefined
        : this.node?.getConnections(target).find(c => c.status === 'open')
    if (conn === undefined) throw new PeerGoneError(`no open connection to ${peerId}`)
    return conn.newStream(protocol, { signal: AbortSignal.timeout(this.limits.exchangeTimeoutMs) })
  }

  /** @libp2p/bootstrap dials once; this keeps dialling configured peers, with capped exponential back-off. */
  private redialBootstrap(): void {
    const node = this.node
    if (node === undefined || !this.running) return
    const now = Date.now()
    for (const b of this.bootstrap) {
      if (b.dialing || b.next > now || this.admission.isBanned(b.peerId)) continue
      const target = peerIdFromStringSafe(b.peerId)
      if (target !== undefined && node.getConnections(target).length > 0) continue
      b.dialing = true
      node
        .dial(b.addr, {
          signal: AbortSignal.timeout(Math.min(this.limits.exchangeTimeoutMs, 10_000))
        })
        .catch(err => {
          log('bootstrap %s unreachable, retry in %d ms: %s', b.addr, b.backoff, errMessage(err))
        })
        // The back-off grows on every attempt and is reset only once a sync session runs, so a
        // peer that accepts the connection and then drops it (a ban, a full peer) is not hammered.
        .finally(() => {
          b.next = Date.now() + b.backoff
          b.backoff = Math.min(b.backoff * 2, REDIAL_MAX_MS)
        })
        .finally(() => {
          b.dialing = false
        })
    }
  }

  private antiEntropy(): void {
    const list = [...this.sessions.values()].filter(s => s.isOpen)
    if (list.length === 0) return
    const s = list[Math.floor(Math.random() * list.length)] as PeerSession
    s.resync()
  }
}

function peerIdFromStringSafe(s: string): PeerId | undefined {
  try {
    return peerIdFromString(s)
  } catch {
    return undefined
  }
}

function peerIdOfKey(keyHex: string): string {
  try {
    return peerIdFromPublicKey(publicKeyFromRaw(fromHex(keyHex))).toString()
  } catch {
    return ''
  }
}

/** Build a mesh on a platform (daemons: `createMesh` in index.ts; browsers: `createBrowserMesh`). */
export async function createMeshOn(opts: MeshOptions, platform: MeshPlatform): Promise<Mesh> {
  return new RhizomeMesh(opts, platform)
}
