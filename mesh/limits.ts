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
  banMs: 10 * 60_000,
  /**
   * A Noise and Yamux handshake takes milliseconds on a LAN and well under a second over a slow
   * link; 5 s leaves room for a daemon whose event loop is busy, and frees a slot held by an idle
   * socket quickly (libp2p's default is 10 s).
   */
  handshakeTimeoutMs: 5_000,
  /** libp2p's default is 10; a site with dozens of daemons restarting at once needs more. */
  maxPendingInbound: 32,
  /** One host opens one connection to us at a time; a few more allow a reconnect racing a close. */
  maxPendingInboundPerHost: 4,
  /** A quarter of the handshake slots, for hosts enrolled nodes were seen on. */
  reservedPendingInbound: 8
})

/** Hosts remembered as ones an enrolled node connected from (for `reservedPendingInbound`). */
export const MAX_KNOWN_HOSTS = 1024

/**
 * Yamux receive window per stream, at most (libp2p's default grows to 16 MiB). With a stream's
 * reading paused while a frame is handled, this is what a peer can make us buffer beyond the one
 * frame being handled; 1 MiB still fills a LAN link, as window updates go out as data is read.
 */
export const MAX_STREAM_WINDOW_BYTES = 1024 * 1024

/**
 * A peer's work budget: the messages it may send and the time the daemon may spend handling
 * them, as token buckets (a sustained rate and a burst). Whoever exceeds either is cut off and
 * refused for `banMs`. Handling time is wall time in the handler, including waiting for the
 * store, so it over-counts on a loaded daemon; the rates are set far above what an honest peer of
 * each kind needs, and the bursts cover a first catch-up (answering a dashboard's first sync of a
 * 10,000-change document costs about a second once; afterwards it sends a few small messages per
 * document per anti-entropy round). A viewer asking again and again for early changes (each
 * answer a bundle of most of the document, ~50-130 ms for 200-400 changes) runs dry in seconds.
 */
export interface WorkBudget {
  messagesPerSecond: number
  messageBurst: number
  /** Handling time per second of wall clock, ms. */
  handlingMsPerSecond: number
  handlingBurstMs: number
}

export const WORK_BUDGETS: Readonly<Record<'node' | 'admin-session' | 'viewer', WorkBudget>> =
  Object.freeze({
    node: {
      messagesPerSecond: 1000,
      messageBurst: 20_000,
      handlingMsPerSecond: 500,
      handlingBurstMs: 20_000
    },
    'admin-session': {
      messagesPerSecond: 200,
      messageBurst: 5_000,
      handlingMsPerSecond: 250,
      handlingBurstMs: 10_000
    },
    viewer: {
      messagesPerSecond: 50,
      messageBurst: 5_000,
      handlingMsPerSecond: 100,
      handlingBurstMs: 5_000
    }
  })

/**
 * One peer's messages are handled for at most this long before the event loop gets a turn (a
 * stream's queued frames would otherwise be handled in one run of microtasks, starving timers,
 * other peers and the HTTP API).
 */
export const YIELD_AFTER_MS = 10

/**
 * Status records: a node's records are kept and relayed at most one per this interval on average
 * (a daemon reports every 10 s and after changes); a newer one arriving sooner waits, and only the
 * newest waiting record is kept when its turn comes. The node's own records go out at this pace.
 */
export const STATUS_MIN_INTERVAL_MS = 1_000

/**
 * …with bursts of up to this many records: a node's record saying a rollout failed right after
 * the one saying it switched goes on at once, hop after hop, rather than a second per hop. A
 * flooding node still gets one record per interval through, after its first few.
 */
export const STATUS_RELAY_BURST = 3

/**
 * A record that brings rollout news (a rollout the node's previous record did not report, or a
 * step it did not that moves a gate or the abort rule on: switched, soaked, failed, reverted;
 * `bringsNews`, crdt/rollout-gate.ts) and finds the pace above spent goes on a budget of its own:
 * one more per interval, bursts of up to this many. One rollout makes at most five per node, so
 * its steps do not wait behind the routine records (workload states, reconcile passes) that spend
 * the pace above; a flooding node gets at most one more record per interval through, after this
 * many.
 */
export const STATUS_NEWS_BURST = 8

/**
 * A peer that sends newer records of one node faster than both paces above together (two per
 * `STATUS_MIN_INTERVAL_MS`), by more than this many, is flooding (honest peers relay only what
 * they kept: at most STATUS_RELAY_BURST + STATUS_NEWS_BURST at once) and is cut off.
 */
export const STATUS_FLOOD_BURST = 20

/**
 * A relayed record that brings no rollout news goes on to at most this many of the relay's other
 * peers, chosen at random per record, rather than to all of them; a node's own records go to all
 * its peers, and news goes to all at every hop. Flooded, every record crossed every link (at 30
 * daemons with ~8 links each, ~200 sends and as many decrypts per record, most of them
 * duplicates), and the routine records of a config change (one per node) took the CPU a canary's
 * failure needed to cross the mesh. Pushed to 3 of ~7 others, a node is missed by all its
 * neighbours with a probability of about (1 − 3/7)^8 ≈ 1 %; it gets the record at its next
 * anti-entropy round (every record held goes to each peer then) or with the node's next one. No
 * gate waits for a routine record (what one waits for is news), and a node is judged silent only
 * after 30 s without a record.
 */
export const STATUS_RELAY_FANOUT = 3

/**
 * Records of nodes not enrolled (yet) here, held unverified until the enrolment arrives: a new
 * peer (a browser, say) gets every record on its first hello, before the devices document has
 * synced. At most this many nodes, one record each, for at most this long.
 */
export const STATUS_PENDING_MAX = 32
export const STATUS_PENDING_MS = 30_000

/** Defaults for the timers in MeshOptions. */
export const DEFAULT_ANTI_ENTROPY_MS = 10_000
export const DEFAULT_STALE_AFTER_MS = 30_000
/**
 * Redial back-off (bootstrap peers and learned ones): first retry, cap. The cap is what a peer
 * that comes back waits at most to be dialled again: a TCP dial every 10 s to a peer that is down
 * costs nothing worth saving.
 */
export const REDIAL_MIN_MS = 500
export const REDIAL_MAX_MS = 10_000
/**
 * Connections kept beyond the bootstrap list, to enrolled nodes picked at random from the
 * addresses their signed status records advertise: with a few per node the mesh stays connected
 * when any one node goes down. `MeshOptions.extraPeers` overrides it (0: bootstrap and mDNS only).
 */
export const EXTRA_PEERS = 3
/** Dials to learned peers in flight at once. */
export const MAX_EXTRA_DIALS = 2
/** Addresses a node advertises in its status record, at most; longer ones are left out. */
export const MAX_ADVERTISED_ADDRS = 8
export const MAX_ADVERTISED_ADDR_CHARS = 256
/** Remote logs requests (logs-protocol.ts) one peer may make per second, and in a burst. */
export const LOG_REQUESTS_PER_SECOND = 2
export const LOG_REQUEST_BURST = 10
/** Logs requests of one peer answered at once (more streams are reset). */
export const LOGS_STREAMS_PER_PEER = 2
/** Peers whose advertised addresses are remembered (the newest record of each enrolled node). */
export const MAX_KNOWN_PEERS = 1024
/** Viewer tokens: how many may be outstanding, how long one is valid, how long the session it opens lasts. */
export const MAX_VIEWER_TOKENS = 64
export const VIEWER_TOKEN_TTL_MS = 10 * 60_000
export const VIEWER_SESSION_MS = 12 * 60 * 60_000
/**
 * A session voucher's longest life, from its signed issue time to its expiry (browser-session.ts):
 * a longer one is refused. The dashboard signs 12 hours.
 */
export const MAX_VOUCHER_LIFETIME_MS = 12 * 60 * 60_000
/** How far a voucher's issue time may be ahead of the daemon's clock (signer's clock drift). */
export const VOUCHER_CLOCK_SKEW_MS = 5 * 60_000
/** Browser sessions admitted at once (viewers and admin sessions). */
export const MAX_SESSIONS = 256
/** Bans remembered at once; the oldest is forgotten first. */
export const MAX_BANS = 4096
/** Peers whose sync state is kept across reconnects. */
export const MAX_REMEMBERED_PEERS = 1024
/** Documents named in one hello. */
export const MAX_DOCS_PER_HELLO = 1024
/**
 * Documents this replica does not hold, negotiated per peer at once (from an empty state, without
 * creating them: a document comes into being only with a valid signed change).
 */
export const MAX_UNKNOWN_DOCS_PER_PEER = 1024
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

/*
 * Artifact links (artifact-link.ts): chunks over TLS beside the mesh connection.
 */
/** An offer not used within this long is forgotten. */
export const OFFER_TTL_MS = 30_000
/** Unused offers held at once (all peers); the oldest goes first. */
export const MAX_OFFERS = 256
/** Open links one peer may hold with us. */
export const MAX_LINKS_PER_PEER = 2
/** Sockets, handshaking or open, the link server holds at once (per listening address). */
export const MAX_LINK_SOCKETS = 64
/** Sockets from one remote address at once: idle sockets from one host cannot fill the server. */
export const MAX_LINK_SOCKETS_PER_HOST = 8
/** A link's TLS handshake must finish within this long. */
export const LINK_HANDSHAKE_MS = 5_000
/** Requests of one link being answered at once (their replies still go out in order). */
export const LINK_PIPELINE = 4
/** Unparsed request bytes a link buffers before its socket is paused. */
export const LINK_BUFFER_BYTES = 16 * 1024
/** A link with nothing asked for this long is closed (by either end). */
export const LINK_IDLE_MS = 30_000
/** A holder working on a request writes a keep-alive after this long without writing. */
export const LINK_KEEPALIVE_MS = 1_000
/** A fetcher gives up on a link with requests waiting and no byte for this long. */
export const LINK_STALL_MS = 5_000
/** Requests waiting on one link (fetcher side); over it, the request goes over the mesh. */
export const MAX_LINK_WAITING = 16
/**
 * Chunk buffers kept for reuse on each side (the link server's, the fetcher's), 1 MiB each: a
 * chunk is read into one, reused once the chunk is written, instead of a new buffer per chunk
 * (each is external memory to V8, and churning it cost the daemon a full GC every ~12 MB).
 */
export const LINK_POOL_BUFFERS = 8
