/** The artifact subsystem's bounds, each named and set on purpose. */

/** Chunks of 1 MiB: small enough to verify and buffer a few at a time, large enough that a 256 MiB artifact is 256 requests. */
export const DEFAULT_CHUNK_SIZE = 1024 * 1024
/** Smallest and largest chunk size a manifest may name (a peer's frame carries one whole chunk). */
export const MIN_CHUNK_SIZE = 16 * 1024
export const MAX_CHUNK_SIZE = 4 * 1024 * 1024
/** The largest artifact: 64 GiB (a large model). */
export const MAX_ARTIFACT_BYTES = 64 * 1024 * 1024 * 1024
/** Chunks per manifest: 64 GiB at 1 MiB; the manifest is then at most 2 MiB of hashes. */
export const MAX_CHUNKS = 65_536
/** Encoded manifest bound (header + MAX_CHUNKS hashes). */
export const MAX_MANIFEST_BYTES = 64 + MAX_CHUNKS * 32
/**
 * Complete artifacts whose file a daemon keeps open while serving their chunks (one file
 * descriptor each), and how long one stays open after its last chunk read.
 */
export const MAX_OPEN_READERS = 8
export const READER_IDLE_MS = 2000
/** Chunk requests in flight for one fetch, over all sources, and to one source. */
export const DEFAULT_FETCH_CONCURRENCY = 8
export const DEFAULT_PER_SOURCE_CONCURRENCY = 4
/** How often a running fetch asks its sources again which chunks they hold (partial holders grow). */
export const HAVE_REFRESH_MS = 1000
/** A fetch announces the chunks it completed to its peers fetching the same artifact this often, batched. */
export const ANNOUNCE_BATCH_MS = 100
/** Chunk indices in one announce message (the protocol's bound, mesh/artifact-protocol.ts). */
export { MAX_ANNOUNCE_ENTRIES } from '../../mesh/artifact-protocol.ts'
/** A source that failed a request has its announcements ignored this long (it may have lied). */
export const ANNOUNCE_DISTRUST_MS = 30_000
/**
 * A chunk a seed answered busy for is asked of other fetchers only, this long; then of a seed,
 * insisting (never busy): the seed stays the source of last resort.
 */
export const SUPERSEED_FALLBACK_MS = 8000
/** A source that failed a request (not a wrong chunk: a timeout, a hang-up) is left alone this long. */
export const SOURCE_RETRY_MS = 2000
/** A fetch with no source for what it misses looks again at least this often (also on any new peer). */
export const WAITING_RETRY_MS = 3000
/** One chunk request, from asking to the last byte. */
export const CHUNK_TIMEOUT_MS = 30_000
/** Artifacts fetched at once by one daemon; more wait their turn. */
export const MAX_CONCURRENT_FETCHES = 4
/** Referenced artifacts reported in the status record (it is bounded to 64 KiB). */
export const MAX_STATUS_ARTIFACTS = 32
/** A tar artifact unpacks to at most this many entries, and at most 4× its own size. */
export const MAX_TAR_ENTRIES = 100_000
export const MAX_UNPACK_RATIO = 4
/** Default garbage collection: unreferenced artifacts go after a day, sooner when over the disk budget. */
export const DEFAULT_GC_GRACE_MS = 24 * 60 * 60_000
export const DEFAULT_DISK_BUDGET_BYTES = 20 * 1024 * 1024 * 1024
