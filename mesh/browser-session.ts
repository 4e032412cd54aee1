/**
 * Browser sessions: how a peer that is not an enrolled device (a dashboard tab) gets admitted.
 * In the mesh, "session" means only this: a browser admitted for a while on a credential.
 *
 * Protocol `/rhizome/session/1.0.0`, one request frame and one reply frame (`frames.ts`):
 *
 *   request:  u8 kind ‖ body
 *             kind 1 = viewer token: string token (issued by this daemon, one-time)
 *             kind 2 = voucher: bytes voucher (below)
 *   reply:    u8 ok (1 admitted, 0 refused) ‖ string admission ('viewer' | 'admin-session') or reason
 *
 * Voucher (version 2), signed in the browser by an admin or operator key:
 *
 *   u8     version = 2
 *   32 B   the browser's libp2p ed25519 public key (its PeerId's key)
 *   u8     role: 1 admin-session, 2 viewer
 *   varint issued (ms since the epoch)
 *   varint expires (ms since the epoch)
 *   32 B   signer public key (an admin or operator of the fleet's trust statement in force)
 *   64 B   Ed25519 signature over
 *          sha-256( "rhizome/session/v2" 0x00 ‖ fleet id (UTF-8) 0x00 ‖ peer key ‖ role ‖
 *                   varint issued ‖ varint expires )
 *
 * The voucher is bound to the browser's key, so a stolen voucher is useless without that key
 * (Noise proves possession of it when the connection opens). It lasts at most
 * `MAX_VOUCHER_LIFETIME_MS` from its issue time, which may be at most `VOUCHER_CLOCK_SKEW_MS`
 * ahead of the daemon's clock, so no voucher admits anyone for longer than the two together; a
 * voucher asking for more is refused (version 1, which had no issue time, is refused too). A
 * session lasts no longer than its voucher, and ends at once when its signer loses its authority
 * (`signerStanding`, re-checked by the admission service whenever a trust statement arrives).
 */
import { sha256 } from '@noble/hashes/sha2.js'
import { ByteReader, ByteWriter, fleetDigestInput, readWhole, toHex } from '../crdt/bytes.ts'
import type { Ed25519 } from '../crdt/ed25519.ts'
import type { KeyPair } from '../crdt/keys.ts'
import type { TrustChain } from '../crdt/trust.ts'
import { SessionRefusedError } from './errors.ts'
import { MAX_VOUCHER_LIFETIME_MS, VOUCHER_CLOCK_SKEW_MS } from './limits.ts'
import type { Admission } from './types.ts'

export const SESSION_PROTOCOL = '/rhizome/session/1.0.0'
/** A session request or reply is a few hundred bytes; nothing larger is read. */
export const MAX_SESSION_FRAME_BYTES = 4096
const DOMAIN = 'rhizome/session/v2'
const VOUCHER_VERSION = 2
const ROLE_CODE = { 'admin-session': 1, viewer: 2 } as const
export type SessionRole = keyof typeof ROLE_CODE

export interface SessionVoucher {
  peerKey: string
  role: SessionRole
  issued: number
  expires: number
  signer: string
}

function digest(
  fleetId: string,
  peerKey: Uint8Array,
  role: number,
  issued: number,
  expires: number
): Uint8Array {
  return sha256(
    fleetDigestInput(DOMAIN, fleetId).raw(peerKey).u8(role).varint(issued).varint(expires).finish()
  )
}

/**
 * Why `keyHex` may not vouch for a session, or undefined if it may: it must be an admin or
 * operator of the trust statement in force, and no statement held (a fork's other branch
 * included: ambiguity resolves toward less authority) may revoke it. A pure function of the
 * statements held, checked when a voucher is presented and again for every open session when
 * a statement arrives.
 */
export function signerStanding(trust: TrustChain, keyHex: string): string | undefined {
  const info = trust.lookup(keyHex)
  if (info === undefined || (info.role !== 'admin' && info.role !== 'operator')) {
    return `${keyHex.slice(0, 16)}… is not an admin or operator key of trust statement version ${trust.version}`
  }
  for (const { statement: s } of trust.held) {
    const named = s.admins.some(a => a.key === keyHex) || s.operators.some(o => o.key === keyHex)
    if (!named && s.revocations.some(r => r.key === keyHex)) {
      return `${keyHex.slice(0, 16)}… was revoked by trust statement version ${s.version}`
    }
  }
  return undefined
}

/**
 * Sign a voucher admitting the browser key `peerPublicKey` (32 bytes) to the fleet's daemons
 * from `issued` (default now) until `expires` (ms since the epoch), at most
 * `MAX_VOUCHER_LIFETIME_MS` later. The signer must be an admin or operator key.
 */
export async function signSessionVoucher(
  opts: {
    peerPublicKey: Uint8Array
    role?: SessionRole
    issued?: number
    expires: number
    signer: KeyPair
    fleetId: string
  },
  ed: Ed25519
): Promise<Uint8Array> {
  const role = ROLE_CODE[opts.role ?? 'admin-session']
  const issued = opts.issued ?? Date.now()
  const sig = await ed.sign(
    opts.signer.seed,
    digest(opts.fleetId, opts.peerPublicKey, role, issued, opts.expires)
  )
  return new ByteWriter()
    .u8(VOUCHER_VERSION)
    .raw(opts.peerPublicKey)
    .u8(role)
    .varint(issued)
    .varint(opts.expires)
    .raw(opts.signer.publicKey)
    .raw(sig)
    .finish()
}

/** Verify a voucher presented by the peer whose key is `peerKeyHex`. Throws SessionRefusedError. */
export async function verifySessionVoucher(
  bytes: Uint8Array,
  peerKeyHex: string,
  trust: TrustChain,
  ed: Ed25519,
  now = Date.now()
): Promise<SessionVoucher> {
  let peerKey: Uint8Array, role: number, issued: number, expires: number
  let signer: Uint8Array, sig: Uint8Array
  try {
    const r = new ByteReader(bytes, 'session voucher')
    const v = r.u8()
    if (v !== VOUCHER_VERSION) {
      throw new SessionRefusedError(
        `session voucher version ${v} is not supported (this daemon reads version ${VOUCHER_VERSION}); sign a new one`
      )
    }
    peerKey = r.raw(32)
    role = r.u8()
    issued = r.varint()
    expires = r.varint()
    signer = r.raw(32)
    sig = r.raw(64)
    r.end()
  } catch (err) {
    if (err instanceof SessionRefusedError) throw err
    throw new SessionRefusedError(`malformed session voucher: ${(err as Error).message}`)
  }
  const roleName = (Object.keys(ROLE_CODE) as SessionRole[]).find(k => ROLE_CODE[k] === role)
  if (roleName === undefined) {
    throw new SessionRefusedError(`session voucher names unknown role ${role}`)
  }
  if (toHex(peerKey) !== peerKeyHex) {
    throw new SessionRefusedError(
      'session voucher was issued to another browser key; sign a new one for this session'
    )
  }
  if (expires - issued > MAX_VOUCHER_LIFETIME_MS) {
    throw new SessionRefusedError(
      `session voucher asks for ${hours(expires - issued)} h; a voucher lasts at most ${hours(MAX_VOUCHER_LIFETIME_MS)} h (MAX_VOUCHER_LIFETIME_MS): sign a shorter one`
    )
  }
  if (issued > now + VOUCHER_CLOCK_SKEW_MS) {
    throw new SessionRefusedError(
      `session voucher is issued at ${new Date(issued).toISOString()}, ahead of this daemon's clock by more than ${VOUCHER_CLOCK_SKEW_MS / 60_000} min; check the signer's clock and sign a new one`
    )
  }
  if (expires <= now) {
    throw new SessionRefusedError(
      `session voucher expired at ${new Date(expires).toISOString()}; sign a new one`
    )
  }
  const signerHex = toHex(signer)
  const refused = signerStanding(trust, signerHex)
  if (refused !== undefined) {
    throw new SessionRefusedError(`session voucher is signed by ${refused}`)
  }
  if (!(await ed.verify(signer, digest(trust.fleetId, peerKey, role, issued, expires), sig))) {
    throw new SessionRefusedError('session voucher signature does not verify')
  }
  return { peerKey: peerKeyHex, role: roleName, issued, expires, signer: signerHex }
}

function hours(ms: number): string {
  return (ms / 3_600_000).toFixed(1).replace(/\.0$/, '')
}

export type SessionRequest =
  | { kind: 'token'; token: string }
  | { kind: 'voucher'; voucher: Uint8Array }

export function encodeSessionRequest(req: SessionRequest): Uint8Array {
  const w = new ByteWriter()
  if (req.kind === 'token') w.u8(1).string(req.token)
  else w.u8(2).bytes(req.voucher)
  return w.finish()
}

export function decodeSessionRequest(bytes: Uint8Array): SessionRequest {
  return readWhole<SessionRequest>(bytes, 'session request', refusedAsMalformed, r => {
    const kind = r.u8()
    if (kind === 1) return { kind: 'token', token: r.string(128) }
    if (kind === 2) return { kind: 'voucher', voucher: r.bytes(1024) }
    throw new SessionRefusedError(`unknown session request kind ${kind}`)
  })
}

function refusedAsMalformed(err: unknown): SessionRefusedError {
  if (err instanceof SessionRefusedError) return err
  return new SessionRefusedError(`malformed session request: ${(err as Error).message}`)
}

export type SessionReply = { ok: true; admission: Admission } | { ok: false; reason: string }

export function encodeSessionReply(reply: SessionReply): Uint8Array {
  return reply.ok
    ? new ByteWriter().u8(1).string(reply.admission).finish()
    : new ByteWriter().u8(0).string(reply.reason.slice(0, 500)).finish()
}

export function decodeSessionReply(bytes: Uint8Array): SessionReply {
  const r = new ByteReader(bytes, 'session reply')
  const ok = r.u8()
  const text = r.string(1024)
  r.end()
  if (ok === 1) {
    if (text !== 'viewer' && text !== 'admin-session' && text !== 'node') {
      throw new SessionRefusedError(`daemon replied with unknown admission "${text.slice(0, 40)}"`)
    }
    return { ok: true, admission: text }
  }
  return { ok: false, reason: text }
}
