/**
 * The admission service: decides, for every connected peer, whether the mesh's protocols may
 * serve it, and says so with events the sync service follows (`peer:admitted`,
 * `peer:dismissed`).
 *
 * - Enrolled devices are admitted on connect; enrolment is re-read whenever the devices document
 *   or the trust chain changes, and peers no longer enrolled are dismissed. A revoked device, and
 *   a browser whose voucher's signer lost its authority, are hung up on at once.
 * - Browsers open a session (`/rhizome/session/1.0.0`, `browser-session.ts`) with a one-time
 *   viewer token or an admin/operator voucher; a browser mesh presents its credential to each
 *   bootstrap daemon as soon as it connects.
 * - A connected peer that is not admitted is hung up on after `UNADMITTED_GRACE_MS`.
 * - A peer that sent invalid data is rejected: banned for `banMs` (the connection gater refuses
 *   it meanwhile) and hung up on.
 *
 * Who is admitted is decided by `AdmissionControl` (`admission.ts`), pure state with no network.
 */
import { logger } from '@libp2p/logger'
import { MeshService } from './service.ts'
import type { AbortOptions, Connection, PeerId, Startable, Stream } from '@libp2p/interface'
import type { ConnectionManager } from '@libp2p/interface-internal'
import type { PeerSet } from '@libp2p/peer-collections'
import { PeerMap } from '@libp2p/peer-collections'
import { DEVICES_DOC, type EnrolledDevice } from '../crdt/devices.ts'
import type { Replica } from '../crdt/replica.ts'
import { type AdmissionControl, peerKeyHex } from './admission.ts'
import {
  decodeSessionReply,
  decodeSessionRequest,
  encodeSessionReply,
  encodeSessionRequest,
  MAX_SESSION_FRAME_BYTES,
  SESSION_PROTOCOL,
  signerStanding,
  verifySessionVoucher,
  type SessionReply
} from './browser-session.ts'
import { streamOnConnection, type NodeEvents, type ProtocolComponents } from './connections.ts'
import type { MeshCounters } from './counters.ts'
import { SessionRefusedError } from './errors.ts'
import { readOneFrame, sendFrame } from './frames.ts'
import { UNADMITTED_GRACE_MS } from './limits.ts'
import type {
  Admission,
  MeshLimits,
  PeerRejection,
  SessionAnswer,
  SessionCredential
} from './types.ts'

const log = logger('rhizome:mesh:admission')

export interface AdmissionComponents extends ProtocolComponents {
  /** A banned or revoked peer's connections are closed. */
  connectionManager: Pick<ConnectionManager, 'getConnections' | 'closeConnections'>
  events: NodeEvents
}

export interface AdmissionInit {
  replica: Replica
  control: AdmissionControl
  limits: MeshLimits
  counters: MeshCounters
  /**
   * Configured peers: served and accepted from before enrolment says who they are (a browser's
   * daemon, a new device's first peer, before it has the devices document).
   */
  bootstrap: PeerSet
  /** Browsers: presented to each bootstrap peer on connect. */
  credential?: SessionCredential
  /** How long a connected peer may stay unadmitted, ms (default `UNADMITTED_GRACE_MS`). */
  graceMs?: number
}

export interface AdmissionEvents {
  /** The peer may now be served: open a sync stream with it. */
  'peer:admitted': CustomEvent<PeerId>
  /** The peer may no longer be served: close what runs with it. */
  'peer:dismissed': CustomEvent<PeerId>
  /** The peer sent invalid data: banned and hung up on. */
  rejected: CustomEvent<PeerRejection & { peer: PeerId }>
  /** A daemon's answer to our credential (browsers). */
  session: CustomEvent<SessionAnswer>
}

/** What other services ask of admission. */
export interface PeerAdmission {
  /** May we send fleet data (documents, trust, status) to this peer? */
  mayServe(peer: PeerId): boolean
  /** May we apply (verified) data from this peer? */
  mayAccept(peer: PeerId): boolean
  admissionOf(peer: PeerId): Admission
  isBanned(peer: PeerId): boolean
  isEnrolledKey(keyHex: string): boolean
  /** The peer sent invalid data: ban it for `banMs` and hang up. */
  reject(peer: PeerId, err: Error): void
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

export class AdmissionService
  extends MeshService<AdmissionEvents, AdmissionComponents, AdmissionInit>
  implements PeerAdmission, Startable
{
  private readonly control: AdmissionControl
  private readonly graceTimers = new PeerMap<ReturnType<typeof setTimeout>>()
  private running = false

  constructor(components: AdmissionComponents, init: AdmissionInit) {
    super(components, init)
    this.control = init.control
  }

  readonly [Symbol.toStringTag] = '@rhizome/admission'

  /** Enrolment is read before any service starts: the status service checks records against it. */
  async beforeStart(): Promise<void> {
    await this.control.refresh()
  }

  async start(): Promise<void> {
    await this.components.registrar.handle(
      SESSION_PROTOCOL,
      (stream, connection) => {
        this.answerSession(stream, connection).catch(err =>
          log('session request from %p failed: %s', connection.remotePeer, errMessage(err))
        )
      },
      {
        maxInboundStreams: this.init.limits.maxInboundStreams,
        maxOutboundStreams: this.init.limits.maxInboundStreams
      }
    )
    const on = this.listen()
    this.components.events.addEventListener('peer:connect', e => this.connected(e.detail), on)
    this.components.events.addEventListener('peer:disconnect', e => this.clearGrace(e.detail), on)
    this.init.replica.addEventListener(
      'change',
      e => {
        if (e.detail.docId === DEVICES_DOC) this.reread()
      },
      on
    )
    this.init.replica.addEventListener('trust', () => this.reread(), on)
    this.running = true
  }

  async stop(): Promise<void> {
    this.running = false
    for (const t of this.graceTimers.values()) clearTimeout(t)
    this.graceTimers.clear()
    this.unlisten()
    await this.components.registrar.unhandle(SESSION_PROTOCOL)
  }

  mayServe(peer: PeerId): boolean {
    if (this.control.isRevoked(peer)) return false
    return this.control.admissionOf(peer) !== 'none' || this.init.bootstrap.has(peer)
  }

  mayAccept(peer: PeerId): boolean {
    if (this.control.isRevoked(peer)) return false
    const a = this.control.admissionOf(peer)
    return a === 'node' || a === 'admin-session' || this.init.bootstrap.has(peer)
  }

  admissionOf(peer: PeerId): Admission {
    return this.control.admissionOf(peer)
  }

  device(peer: PeerId): EnrolledDevice | undefined {
    return this.control.device(peer)
  }

  isBanned(peer: PeerId): boolean {
    return this.control.isBanned(peer)
  }

  isNode(peer: PeerId): boolean {
    return this.control.admissionOf(peer) === 'node'
  }

  isRevoked(peer: PeerId): boolean {
    return this.control.isRevoked(peer)
  }

  isEnrolledKey(keyHex: string): boolean {
    return this.control.isEnrolledKey(keyHex)
  }

  issueViewerToken(): string {
    return this.control.issueViewerToken()
  }

  get bannedCount(): number {
    return this.control.bannedCount
  }

  reject(peer: PeerId, err: Error): void {
    log('rejecting %p for %d ms: %s: %s', peer, this.init.limits.banMs, err.name, err.message)
    if (err.name === 'WorkBudgetExceededError' || err.name === 'StatusFloodError') {
      this.init.counters.peersThrottled++
    } else {
      this.init.counters.batchesRejected++
    }
    this.control.ban(peer, this.init.limits.banMs)
    this.safeDispatchEvent('rejected', {
      detail: { peer, peerId: peer.toString(), reason: err.message, error: err.name }
    })
    this.components.connectionManager.closeConnections(peer).catch(() => {})
  }

  /** Enrolment changed: re-read it, then admit or dismiss every connected peer accordingly. */
  private reread(): void {
    this.control
      .refresh()
      .then(ended => {
        this.review(ended)
      })
      .catch(err => log.error('enrolment refresh failed: %s', errMessage(err)))
  }

  private review(ended: readonly PeerId[] = []): void {
    if (!this.running) return
    const cut = new PeerMap<true>()
    for (const p of ended) cut.set(p, true)
    const seen = new PeerMap<true>()
    for (const conn of this.components.connectionManager.getConnections()) {
      const peer = conn.remotePeer
      if (seen.has(peer)) continue
      seen.set(peer, true)
      if (this.mayServe(peer)) {
        this.clearGrace(peer)
        this.safeDispatchEvent('peer:admitted', { detail: peer })
      } else if (this.control.isRevoked(peer) || cut.has(peer)) {
        // Revoked (stolen), or a session whose signer lost its authority: no grace period.
        log('closing the connections of %p: revoked, or its session signer was', peer)
        this.safeDispatchEvent('peer:dismissed', { detail: peer })
        this.components.connectionManager.closeConnections(peer).catch(() => {})
      } else {
        this.safeDispatchEvent('peer:dismissed', { detail: peer })
        this.startGrace(peer)
      }
    }
  }

  private connected(peer: PeerId): void {
    if (this.init.credential !== undefined && this.init.bootstrap.has(peer)) {
      this.presentCredential(peer, this.init.credential).catch(err =>
        log.error('session with %p refused: %s', peer, errMessage(err))
      )
      return
    }
    if (this.mayServe(peer)) this.safeDispatchEvent('peer:admitted', { detail: peer })
    else this.startGrace(peer)
  }

  /** A connected peer that is not admitted is hung up on after a grace period (time to open a session). */
  private startGrace(peer: PeerId): void {
    if (this.graceTimers.has(peer)) return
    this.graceTimers.set(
      peer,
      setTimeout(() => {
        this.graceTimers.delete(peer)
        if (!this.mayServe(peer)) {
          this.components.connectionManager.closeConnections(peer).catch(() => {})
        }
      }, this.init.graceMs ?? UNADMITTED_GRACE_MS)
    )
  }

  private clearGrace(peer: PeerId): void {
    const t = this.graceTimers.get(peer)
    if (t !== undefined) {
      clearTimeout(t)
      this.graceTimers.delete(peer)
    }
  }

  /** Daemon side of the session protocol: admit a browser on a viewer token or a voucher. */
  private async answerSession(stream: Stream, connection: Connection): Promise<void> {
    const peer = connection.remotePeer
    const timeoutMs = this.init.limits.exchangeTimeoutMs
    let reply: SessionReply
    try {
      const req = decodeSessionRequest(
        await readOneFrame(stream, MAX_SESSION_FRAME_BYTES, timeoutMs)
      )
      if (req.kind === 'token') {
        if (!this.control.redeemViewerToken(req.token, peer)) {
          throw new SessionRefusedError(
            'viewer token unknown, expired or already used; ask the daemon for a new one'
          )
        }
        reply = { ok: true, admission: 'viewer' }
      } else {
        const key = peerKeyHex(peer)
        if (key === undefined) throw new SessionRefusedError('a session needs an Ed25519 PeerId')
        const replica = this.init.replica
        const v = await verifySessionVoucher(req.voucher, key, replica.trust, replica.ed)
        // A statement may have arrived while the signature was checked: ask again, at once.
        const lost = signerStanding(replica.trust, v.signer)
        if (lost !== undefined) {
          throw new SessionRefusedError(`session voucher is signed by ${lost}`)
        }
        this.control.admitSession(peer, v.role, v.expires, v.signer)
        reply = { ok: true, admission: v.role }
      }
    } catch (err) {
      reply = { ok: false, reason: errMessage(err) }
    }
    try {
      await sendFrame(stream, encodeSessionReply(reply), timeoutMs)
      await stream.close({ signal: AbortSignal.timeout(timeoutMs) })
    } catch {
      stream.abort(new Error('session reply failed'))
    }
    if (reply.ok) {
      this.clearGrace(peer)
      this.safeDispatchEvent('peer:admitted', { detail: peer })
    }
  }

  /** Browser side: present our viewer token or voucher to a daemon; sync once it admits us. */
  async presentCredential(
    peer: PeerId,
    credential: SessionCredential,
    options: AbortOptions = {}
  ): Promise<Admission> {
    const signal = AbortSignal.any([
      AbortSignal.timeout(this.init.limits.exchangeTimeoutMs),
      ...(options.signal !== undefined ? [options.signal] : [])
    ])
    const timeoutMs = this.init.limits.exchangeTimeoutMs
    const stream = await streamOnConnection(
      this.components.connectionManager,
      peer,
      SESSION_PROTOCOL,
      {
        signal
      }
    )
    const req =
      credential.viewerToken !== undefined
        ? { kind: 'token' as const, token: credential.viewerToken }
        : { kind: 'voucher' as const, voucher: credential.voucher }
    await sendFrame(stream, encodeSessionRequest(req), timeoutMs)
    const reply = decodeSessionReply(await readOneFrame(stream, MAX_SESSION_FRAME_BYTES, timeoutMs))
    await stream.close({ signal }).catch(() => {})
    const peerId = peer.toString()
    if (!reply.ok) {
      this.safeDispatchEvent('session', { detail: { peerId, ok: false, reason: reply.reason } })
      throw new SessionRefusedError(reply.reason)
    }
    this.safeDispatchEvent('session', {
      detail: { peerId, ok: true, admission: reply.admission }
    })
    this.safeDispatchEvent('peer:admitted', { detail: peer })
    return reply.admission
  }
}

/** The admission service, for `services:` in createLibp2p. */
export function admission(
  init: AdmissionInit
): (components: AdmissionComponents) => AdmissionService {
  return components => new AdmissionService(components, init)
}
