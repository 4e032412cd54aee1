/**
 * The mesh's limits, all in one place. Each is set on purpose; `MeshOptions.limits` overrides any.
 */
import type { MeshLimits } from './types.ts'

export const DEFAULT_LIMITS: Readonly<MeshLimits> = Object.freeze({
  /** A fleet site rarely has more than a few dozen daemons in reach; browsers add a handful. */
  maxConnections: 128,
  /** One sync stream and one session stream per peer are normal; a few more allow reconnect overlap. */
  maxInboundStreams: 4,
  /**
   * Large enough for a catch-up batch of several thousand changes (Automerge bundles compress
   * well), small enough that a peer cannot make us buffer much: one frame is held per stream.
   */
  maxFrameBytes: 16 * 1024 * 1024,
  /** A session handshake, a write waiting for the peer to drain, or verifying one received batch. */
  exchangeTimeoutMs: 30_000,
  /** libp2p's own default; tests and benches on loopback raise it, as every peer shares 127.0.0.1. */
  inboundConnectionsPerSecond: 5,
  /** A peer that sent invalid data is refused for ten minutes. */
  banMs: 10 * 60_000
})

/** Defaults for the timers in MeshOptions. */
export const DEFAULT_ANTI_ENTROPY_MS = 10_000
export const DEFAULT_STALE_AFTER_MS = 30_000
/** Bootstrap redial back-off: first retry, cap. */
export const REDIAL_MIN_MS = 500
export const REDIAL_MAX_MS = 30_000
/** Viewer tokens: how many may be outstanding, how long one is valid, how long the session it opens lasts. */
export const MAX_VIEWER_TOKENS = 64
export const VIEWER_TOKEN_TTL_MS = 10 * 60_000
export const VIEWER_SESSION_MS = 12 * 60 * 60_000
/** Browser sessions admitted at once (viewers and admin sessions). */
export const MAX_SESSIONS = 256
/** Bans remembered at once; the oldest is forgotten first. */
export const MAX_BANS = 4096
/** Peers whose sync state is kept across reconnects. */
export const MAX_REMEMBERED_PEERS = 1024
/** Documents named in one hello. */
export const MAX_DOCS_PER_HELLO = 1024
/**
 * Changes up to this size (a batch's encoded bytes) are pushed to peers as they are; larger ones
 * (a catch-up another peer sent) are announced, and each peer's sync pulls only what it lacks.
 */
export const MAX_PUSH_BYTES = 64 * 1024
/** Change hashes remembered per peer as held by it, so a change is not pushed back where it came from. */
export const MAX_HELD_HASHES_PER_PEER = 4096
/**
 * A peer's sync message for a document answered at most this many times running when it is the
 * same each time: the negotiation is stuck (the peer dropped a change ours counts as sent), and
 * the anti-entropy round, which restarts it, is the way out, not the same two messages for ever.
 */
export const MAX_SYNC_REPEATS = 3
/** A peer connected but not admitted is hung up on after this long. */
export const UNADMITTED_GRACE_MS = 15_000

export function resolveLimits(overrides: Partial<MeshLimits> | undefined): MeshLimits {
  const out = { ...DEFAULT_LIMITS, ...overrides }
  for (const [k, v] of Object.entries(out)) {
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
      throw new RangeError(`mesh limit ${k} must be a positive number, got ${String(v)}`)
    }
  }
  return out
}
