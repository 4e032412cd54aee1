/**
 * Who may talk to this node, decided in one place.
 *
 * - `node`: an enrolled, unrevoked device (crdt/devices.ts `enrolledDevices`), keyed by its
 *   ed25519 public key, which is also its PeerId's key.
 * - `viewer`: a browser that presented a one-time token this daemon issued.
 * - `admin-session`: a browser that presented a voucher signed by an admin or operator key; the
 *   session ends at once when that key loses its authority (`refresh`).
 * - `none`: everyone else, including strangers; they learn nothing of the fleet's documents or
 *   status.
 *
 * Bans (a peer that sent invalid data) are refused by the connection gater until they expire.
 */
import { PeerMap } from '@libp2p/peer-collections'
import type { PeerId } from '@libp2p/interface'
import { toHex } from '../crdt/bytes.ts'
import {
  DEVICES_DOC,
  enrolledDevices,
  revokedDevices,
  type DevicesDocument,
  type EnrolledDevice
} from '../crdt/devices.ts'
import type { Replica } from '../crdt/replica.ts'
import { signerStanding } from './browser-session.ts'
import {
  MAX_BANS,
  MAX_SESSIONS,
  MAX_VIEWER_TOKENS,
  VIEWER_SESSION_MS,
  VIEWER_TOKEN_TTL_MS
} from './limits.ts'
import type { Admission } from './types.ts'

/** The ed25519 public key (hex) behind an Ed25519 PeerId, or undefined for other key types. */
export function peerKeyHex(peer: PeerId): string | undefined {
  return peer.type === 'Ed25519' ? toHex(peer.publicKey.raw) : undefined
}

/** Keys of PeerIds remembered at once (a cache: hex-encoding a key on every check costs). */
const MAX_KEY_CACHE = 4096

export class AdmissionControl {
  private readonly replica: Replica
  private enrolled = new Map<string, EnrolledDevice>()
  /** Keys the devices document marks revoked: never dialled, bootstrap list or not. */
  private revoked = new Set<string>()
  private readonly sessions = new PeerMap<{
    admission: 'viewer' | 'admin-session'
    expires: number
    /** The key that signed the session's voucher (none for a viewer token). */
    signer?: string
  }>()
  private readonly tokens = new Map<string, number>()
  private readonly bans = new PeerMap<number>()
  private readonly keyCache = new PeerMap<string | undefined>()

  constructor(replica: Replica) {
    this.replica = replica
  }

  /**
   * Re-read enrolment from the trust statement and the devices document, and end every session
   * whose voucher's signer has lost its authority (`signerStanding`). Returns the peers whose
   * sessions were ended: to be hung up on at once.
   */
  async refresh(): Promise<PeerId[]> {
    let value: DevicesDocument | undefined
    if (this.replica.documentIds().includes(DEVICES_DOC)) {
      value = (await this.replica.open(DEVICES_DOC)).value
    }
    this.enrolled = enrolledDevices(this.replica.trust, value)
    this.revoked = revokedDevices(this.replica.trust, value)
    const ended: PeerId[] = []
    for (const [peer, s] of this.sessions) {
      if (s.signer !== undefined && signerStanding(this.replica.trust, s.signer) !== undefined) {
        this.sessions.delete(peer)
        ended.push(peer)
      }
    }
    return ended
  }

  /** The enrolled device named `name`, or whose key (hex) is `name`. */
  findDevice(name: string): EnrolledDevice | undefined {
    const byKey = this.enrolled.get(name)
    if (byKey !== undefined) return byKey
    for (const d of this.enrolled.values()) if (d.name === name) return d
    return undefined
  }

  /** Revoked by some change the devices document holds (for good: crdt/devices.ts). */
  isRevoked(peer: PeerId): boolean {
    const key = this.keyOf(peer)
    return key !== undefined && this.revoked.has(key)
  }

  isEnrolledKey(keyHex: string): boolean {
    return this.enrolled.has(keyHex)
  }

  device(peer: PeerId): EnrolledDevice | undefined {
    const key = this.keyOf(peer)
    return key === undefined ? undefined : this.enrolled.get(key)
  }

  admissionOf(peer: PeerId, now = Date.now()): Admission {
    if (this.device(peer) !== undefined) return 'node'
    const s = this.sessions.get(peer)
    if (s !== undefined) {
      if (s.expires > now) return s.admission
      this.sessions.delete(peer)
    }
    return 'none'
  }

  admitSession(
    peer: PeerId,
    admission: 'viewer' | 'admin-session',
    expires: number,
    signer?: string
  ): void {
    if (this.sessions.size >= MAX_SESSIONS && !this.sessions.has(peer)) {
      const now = Date.now()
      for (const [p, s] of this.sessions) if (s.expires <= now) this.sessions.delete(p)
      if (this.sessions.size >= MAX_SESSIONS) {
        this.sessions.delete(this.sessions.keys().next().value as PeerId)
      }
    }
    this.sessions.set(
      peer,
      signer === undefined ? { admission, expires } : { admission, expires, signer }
    )
  }

  issueViewerToken(now = Date.now()): string {
    for (const [t, exp] of this.tokens) if (exp <= now) this.tokens.delete(t)
    if (this.tokens.size >= MAX_VIEWER_TOKENS) {
      this.tokens.delete(this.tokens.keys().next().value as string)
    }
    const token = toHex(globalThis.crypto.getRandomValues(new Uint8Array(16)))
    this.tokens.set(token, now + VIEWER_TOKEN_TTL_MS)
    return token
  }

  /** Spend a viewer token for `peer`. True if it was valid (it is then gone). */
  redeemViewerToken(token: string, peer: PeerId, now = Date.now()): boolean {
    const exp = this.tokens.get(token)
    if (exp === undefined) return false
    this.tokens.delete(token)
    if (exp <= now) return false
    this.admitSession(peer, 'viewer', now + VIEWER_SESSION_MS)
    return true
  }

  ban(peer: PeerId, ms: number, now = Date.now()): void {
    if (this.bans.size >= MAX_BANS && !this.bans.has(peer)) {
      for (const [p, until] of this.bans) if (until <= now) this.bans.delete(p)
      if (this.bans.size >= MAX_BANS) this.bans.delete(this.bans.keys().next().value as PeerId)
    }
    this.bans.set(peer, now + ms)
    this.sessions.delete(peer)
  }

  isBanned(peer: PeerId, now = Date.now()): boolean {
    const until = this.bans.get(peer)
    if (until === undefined) return false
    if (until > now) return true
    this.bans.delete(peer)
    return false
  }

  get bannedCount(): number {
    const now = Date.now()
    let n = 0
    for (const until of this.bans.values()) if (until > now) n++
    return n
  }

  private keyOf(peer: PeerId): string | undefined {
    if (!this.keyCache.has(peer)) {
      if (this.keyCache.size >= MAX_KEY_CACHE) this.keyCache.clear()
      this.keyCache.set(peer, peerKeyHex(peer))
    }
    return this.keyCache.get(peer)
  }
}
