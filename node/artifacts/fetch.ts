/**
 * The fetch engine: brings one artifact into the store from whatever sources hold it, knowing
 * nothing of the network. A `ChunkSource` is anything that can say which chunks it holds and
 * hand one over (a mesh peer in mesh/artifact-protocol.ts, an in-memory fake in tests).
 *
 * - The manifest comes from any source and must hash to the digest; then every chunk is checked
 *   against it before it is written (ArtifactStore.writeChunk). A source that hands over a wrong
 *   manifest or chunk is reported through `onFaulty` (the mesh bans it) and not asked again.
 * - Several sources at once: rarest chunks first (random among equals), so fetchers of the same
 *   artifact hold different chunks early and serve each other; at most `concurrency` requests in
 *   flight, `perSource` to one source; a daemon-wide `RateLimiter` paces requests.
 * - Memory: at most `concurrency` chunks are held at once, never the whole artifact.
 * - Resumable: the store remembers which chunks count, so a fetch restarted after a cut or a
 *   crash asks only for the rest.
 * - Have-announcements: a chunk made durable is announced, batched every ANNOUNCE_BATCH_MS, to
 *   the partial holders among our sources (fetchers of the same artifact), and theirs mark
 *   chunks held by them at once rather than at the next 1 s poll. An announcement is a hint: a
 *   source that then fails a request has its announcements ignored for ANNOUNCE_DISTRUST_MS.
 * - Super-seeding (mesh/artifact-service.ts): a saturated seed answers 'busy' for a chunk it
 *   already sent to another fetcher; the chunk is then asked of partial holders only, and of a
 *   seed again (insisting: never busy) only after SUPERSEED_FALLBACK_MS.
 * - No source holding what is missing is not an error: the fetch is `waiting`, and looks again
 *   when `poke()`d (a new peer) or after WAITING_RETRY_MS.
 */
import { logger } from '@libp2p/logger'
import { isPeerFault } from '../../crdt/errors.ts'
import type { ArtifactSource, ChunkBytes, Lent } from '../../mesh/types.ts'
import { ChunkMismatchError } from './errors.ts'
import { chunkLength, decodeManifest, type ArtifactDigest, type Manifest } from './manifest.ts'
import { bitSet, type ArtifactStore, type Have } from './store.ts'
import type { RateLimiter } from './rate-limit.ts'
import {
  ANNOUNCE_BATCH_MS,
  ANNOUNCE_DISTRUST_MS,
  CHUNK_TIMEOUT_MS,
  DEFAULT_FETCH_CONCURRENCY,
  DEFAULT_PER_SOURCE_CONCURRENCY,
  HAVE_REFRESH_MS,
  MAX_ANNOUNCE_ENTRIES,
  SOURCE_RETRY_MS,
  SUPERSEED_FALLBACK_MS,
  WAITING_RETRY_MS
} from './limits.ts'

const log = logger('rhizome:node:artifacts:fetch')

/**
 * Something that may hold chunks of artifacts: a mesh peer (mesh/types.ts `ArtifactSource`) in
 * production, an in-memory fake in tests, which need not take announcements.
 */
export type ChunkSource = Omit<ArtifactSource<ArtifactDigest>, 'announce'> &
  Partial<Pick<ArtifactSource<ArtifactDigest>, 'announce'>>

export type FetchState = 'waiting' | 'fetching' | 'complete' | 'failed'

export interface FetchProgress {
  digest: ArtifactDigest
  state: FetchState
  /** Artifact size, once the manifest is known. */
  size?: number
  /** Verified bytes held. */
  held: number
  /** Sources that hold some of what is missing. */
  peers: number
  /** Bytes per second over the last few seconds. */
  rate: number
  /** Seconds to completion at that rate. */
  eta?: number
  /** Bytes received and verified by this fetch (since the daemon started). */
  fetched: number
  /** Bytes received for chunks that were already held (wasted). */
  refetched: number
  /** Chunks refused because they did not match the manifest. */
  rejected: number
  /** Why it is waiting or failed. */
  reason?: string
}

export interface FetchOptions {
  concurrency?: number
  perSource?: number
  rate?: RateLimiter
  /** A source sent a wrong manifest or chunk (the caller bans it). */
  onFaulty?: (source: ChunkSource, err: Error) => void
  /**
   * Take a chunk that a partial holder (another fetcher) has from a partial holder, and keep the
   * complete holders (the seed) for chunks only they have (default true; false is the old
   * scheduling, kept for the benchmark's A/B).
   */
  preferPartial?: boolean
  /** Announce completed chunks to partial holders (default true; false for the benchmark's A/B). */
  announce?: boolean
}

const shuffle = <T>(a: T[]): T[] => {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[a[i], a[j]] = [a[j] as T, a[i] as T]
  }
  return a
}

export class ArtifactFetch {
  readonly digest: ArtifactDigest
  private readonly store: ArtifactStore
  private readonly sources: () => ChunkSource[]
  private readonly opts: Required<Omit<FetchOptions, 'rate' | 'onFaulty'>> & FetchOptions
  private readonly abort = new AbortController()
  private state: FetchState = 'waiting'
  private reason: string | undefined = 'looking for peers that hold it'
  private manifest: Manifest | undefined
  private readonly haves = new Map<string, { source: ChunkSource; have: Have }>()
  private haveAt = -Infinity
  private readonly faulty = new Set<string>()
  private readonly retryAt = new Map<string, number>()
  private readonly load = new Map<string, number>()
  private readonly inflight = new Set<number>()
  /** Chunks written, waiting to be durable: not asked for again, not counted as in flight. */
  private readonly committing = new Set<number>()
  private order: number[] = []
  /** Chunks made durable, not yet announced (bounded by the artifact's chunk count). */
  private toAnnounce: number[] = []
  private announceTimer: ReturnType<typeof setTimeout> | undefined
  /** Sources whose announcements are ignored until then (one failed a request since). */
  private readonly distrust = new Map<string, number>()
  /** Chunks a seed answered busy for: asked of partial holders only until then. */
  private readonly deferred = new Map<number, number>()
  private wake: (() => void) | undefined
  private poked = false
  private counters = { fetched: 0, refetched: 0, rejected: 0 }
  private readonly samples: Array<{ t: number; bytes: number }> = []
  private running: Promise<void> | undefined

  constructor(
    digest: ArtifactDigest,
    store: ArtifactStore,
    sources: () => ChunkSource[],
    opts: FetchOptions = {}
  ) {
    this.digest = digest
    this.store = store
    this.sources = sources
    this.opts = {
      concurrency: DEFAULT_FETCH_CONCURRENCY,
      perSource: DEFAULT_PER_SOURCE_CONCURRENCY,
      preferPartial: true,
      announce: true,
      ...opts
    }
  }

  /** Run until the artifact is complete (resolves) or `stop()` (rejects with an AbortError). */
  run(): Promise<void> {
    this.running ??= this.loop()
    return this.running
  }

  stop(): void {
    this.abort.abort()
    clearTimeout(this.announceTimer)
    this.poke()
  }

  /** Something changed (a peer came, a chunk landed): look again now. */
  poke(): void {
    this.haveAt = -Infinity
    const w = this.wake
    this.wake = undefined
    // Not asleep: the next sleep returns at once, so a poke is never lost.
    if (w === undefined) this.poked = true
    w?.()
  }

  /**
   * Source `id` says it now holds `indices`: mark them in what we know it has, and ask for them
   * now. Costs one bit per index (already bounded by the protocol); indices beyond the manifest,
   * sources we do not know yet and distrusted ones are ignored.
   */
  announced(id: string, indices: readonly number[]): void {
    const m = this.manifest
    const h = this.haves.get(id)
    if (m === undefined || h === undefined || h.have.all === true) return
    if ((this.distrust.get(id) ?? 0) > performance.now()) return
    const n = m.chunks.length
    let bits = h.have.bits
    if (bits.length < Math.ceil(n / 8)) {
      const grown = new Uint8Array(Math.ceil(n / 8))
      grown.set(bits.subarray(0, grown.length))
      bits = grown
      h.have = { bits }
    }
    for (const i of indices) if (i < n) bits[i >> 3] = (bits[i >> 3] as number) | (1 << (i & 7))
    if (!this.signal.aborted) this.schedule()
  }

  progress(): FetchProgress {
    const info = this.store.info(this.digest)
    const held = info?.held ?? 0
    const now = performance.now()
    while (this.samples.length > 1 && (this.samples[0] as { t: number }).t < now - 5000) {
      this.samples.shift()
    }
    const first = this.samples[0]
    const rate =
      first === undefined || now - first.t < 200
        ? 0
        : ((this.counters.fetched - first.bytes) * 1000) / (now - first.t)
    const p: FetchProgress = {
      digest: this.digest,
      state: info?.state === 'complete' ? 'complete' : this.state,
      held,
      peers: this.haves.size,
      rate: Math.round(rate),
      ...this.counters
    }
    if (info !== undefined) p.size = info.size
    if (info !== undefined && rate > 0) p.eta = Math.ceil((info.size - held) / rate)
    if (this.reason !== undefined && p.state !== 'complete') p.reason = this.reason
    return p
  }

  private get signal(): AbortSignal {
    return this.abort.signal
  }

  private async sleep(ms: number): Promise<void> {
    if (this.poked) {
      this.poked = false
      return
    }
    await new Promise<void>(resolve => {
      const t = setTimeout(() => {
        this.wake = undefined
        resolve()
      }, ms)
      this.wake = () => {
        clearTimeout(t)
        resolve()
      }
    })
  }

  private async loop(): Promise<void> {
    log('fetch of %s started', this.digest)
    while (this.store.state(this.digest) !== 'complete') {
      this.signal.throwIfAborted()
      try {
        if (this.manifest === undefined) {
          this.manifest = this.store.manifest(this.digest) ?? (await this.findManifest())
          if (this.manifest === undefined) {
            this.setState('waiting', 'no reachable peer holds it')
            await this.sleep(WAITING_RETRY_MS)
            continue
          }
          await this.store.putManifest(this.manifest)
          log(
            'manifest of %s: %d bytes in %d chunks',
            this.digest,
            this.manifest.size,
            this.manifest.chunks.length
          )
          continue
        }
        if (performance.now() - this.haveAt > HAVE_REFRESH_MS) await this.refreshHaves()
        const issued = this.schedule()
        if (this.inflight.size === 0 && this.committing.size === 0 && issued === 0) {
          this.setState('waiting', 'no reachable peer holds the chunks still missing')
          await this.sleep(WAITING_RETRY_MS)
          this.haveAt = -Infinity
        } else {
          this.setState('fetching', undefined)
          await this.sleep(HAVE_REFRESH_MS)
        }
      } catch (err) {
        if (this.signal.aborted) throw err
        this.setState('failed', (err as Error).message)
        log.error('fetch of %s: %e', this.digest, err)
        await this.sleep(WAITING_RETRY_MS)
      }
    }
    // Let requests still in flight settle (their chunks are already counted or not needed).
    this.state = 'complete'
    this.reason = undefined
  }

  private setState(s: FetchState, reason: string | undefined): void {
    this.state = s
    this.reason = reason
  }

  private usable(): ChunkSource[] {
    const now = performance.now()
    return this.sources().filter(
      s => !this.faulty.has(s.id) && (this.retryAt.get(s.id) ?? 0) <= now
    )
  }

  private timeout(ms: number): AbortSignal {
    return AbortSignal.any([this.signal, AbortSignal.timeout(ms)])
  }

  private async findManifest(): Promise<Manifest | undefined> {
    for (const s of shuffle(this.usable())) {
      try {
        const bytes = await s.manifest(this.digest, this.timeout(CHUNK_TIMEOUT_MS))
        if (bytes === undefined) continue
        return decodeManifest(bytes, this.digest)
      } catch (err) {
        this.failed(s, err as Error)
      }
    }
    return undefined
  }

  private async refreshHaves(): Promise<void> {
    const list = this.usable()
    const live = new Set(list.map(s => s.id))
    for (const id of [...this.haves.keys()]) if (!live.has(id)) this.haves.delete(id)
    await Promise.all(
      list.map(async s => {
        try {
          const have = await s.have(this.digest, this.timeout(CHUNK_TIMEOUT_MS / 6))
          if (have === undefined) this.haves.delete(s.id)
          else this.haves.set(s.id, { source: s, have })
        } catch (err) {
          this.haves.delete(s.id)
          this.failed(s, err as Error)
        }
      })
    )
    this.haveAt = performance.now()
    // Rarest first: count holders per missing chunk; random order among equals.
    const missing = shuffle(this.store.missing(this.digest))
    const holders = new Map<number, number>()
    const hs = [...this.haves.values()].map(h => h.have)
    for (const i of missing) {
      let n = 0
      for (const h of hs) if (h.all === true || bitSet(h.bits, i)) n++
      holders.set(i, n)
    }
    this.order = missing.sort((a, b) => (holders.get(a) ?? 0) - (holders.get(b) ?? 0))
  }

  /** Issue requests for missing chunks to sources that hold them, within the bounds. Returns how many. */
  private schedule(): number {
    const m = this.manifest
    if (m === undefined || this.signal.aborted) return 0
    const holders = [...this.haves.values()].filter(
      h =>
        !this.faulty.has(h.source.id) && (this.retryAt.get(h.source.id) ?? 0) <= performance.now()
    )
    let issued = 0
    // Scanning is bounded: chunks done since the last refresh sit at the front of `order`.
    for (let k = 0; k < this.order.length && k < 4096; k++) {
      // Chunks waiting for the disk bound how far ahead of it the link may run.
      if (this.inflight.size >= this.opts.concurrency) break
      if (this.committing.size >= 4 * this.opts.concurrency) break
      const i = this.order[k] as number
      if (this.inflight.has(i) || this.committing.has(i) || this.held(i)) continue
      const best = this.pick(holders, i)
      if (best === undefined) continue
      this.request(best.source, i, m, best.insist)
      issued++
    }
    return issued
  }

  /**
   * The least loaded holder of chunk `i` with a free slot. A seed's upload is the swarm's scarce
   * resource: when any partial holder (a fetcher like us) has the chunk, only partial holders are
   * asked, even if they are busy now (the chunk waits for their next free slot, and the scan goes
   * on to chunks only a seed has), so the seed spends its upload on chunks nobody else has yet.
   */
  private pick(
    holders: Array<{ source: ChunkSource; have: Have }>,
    i: number
  ): { source: ChunkSource; insist: boolean } | undefined {
    let has = holders.filter(h => h.have.all === true || bitSet(h.have.bits, i))
    const partial = has.filter(h => h.have.all !== true)
    // A seed said busy for it: wait for the fetcher it went to, then insist on a seed.
    const until = this.deferred.get(i)
    const insist = until !== undefined && until <= performance.now()
    if (until !== undefined && !insist) has = partial
    const pool = this.opts.preferPartial && partial.length > 0 ? partial : has
    let best: ChunkSource | undefined
    let bestLoad = Infinity
    for (const h of shuffle(pool)) {
      const l = this.load.get(h.source.id) ?? 0
      if (l < this.opts.perSource && l < bestLoad) {
        best = h.source
        bestLoad = l
      }
    }
    return best === undefined ? undefined : { source: best, insist }
  }

  private held(i: number): boolean {
    return this.store.holds(this.digest, i)
  }

  private request(source: ChunkSource, i: number, m: Manifest, insist: boolean): void {
    this.inflight.add(i)
    this.load.set(source.id, (this.load.get(source.id) ?? 0) + 1)
    const len = chunkLength(m, i)
    let released = false
    // The request's slot is free once the chunk is checked and written; its fdatasync (shared
    // with the chunks around it) is waited for apart, so a slow disk does not idle the link.
    const release = (): void => {
      if (released) return
      released = true
      this.inflight.delete(i)
      this.load.set(source.id, (this.load.get(source.id) ?? 1) - 1)
      if (!this.signal.aborted && this.manifest !== undefined) this.schedule()
      if (this.inflight.size === 0 && this.committing.size === 0) this.poke()
    }
    void (async () => {
      try {
        await this.opts.rate?.take(len, this.signal)
        let got: ChunkBytes | Lent | 'busy' | undefined = await source.chunk(
          this.digest,
          i,
          this.timeout(CHUNK_TIMEOUT_MS),
          insist ? { insist } : undefined
        )
        if (got === 'busy') {
          this.deferred.set(i, performance.now() + SUPERSEED_FALLBACK_MS)
          return
        }
        this.deferred.delete(i)
        // Bytes lent by the transport (an artifact link's buffer) go back once written.
        const lent = 'release' in got ? got : undefined
        let bytes: ChunkBytes | undefined = lent?.bytes ?? (got as ChunkBytes)
        got = undefined
        let staged
        try {
          staged = this.store.stageChunk(this.digest, i, bytes)
          // Let go of the bytes before waiting: a local stays alive in the suspended function
          // until its fdatasync, up to 4 × concurrency chunks of memory.
          bytes = undefined
          staged = await staged
        } finally {
          lent?.release()
        }
        const { durable } = staged
        this.committing.add(i)
        release()
        try {
          if (await durable) {
            this.queueAnnounce(i)
            this.counters.fetched += len
            this.samples.push({ t: performance.now(), bytes: this.counters.fetched })
            if (this.samples.length > 256) this.samples.shift()
          } else {
            this.counters.refetched += len
          }
        } finally {
          this.committing.delete(i)
        }
      } catch (err) {
        if (!this.signal.aborted) {
          // It may have announced this chunk: its announcements are not believed for a while.
          this.distrust.set(source.id, performance.now() + ANNOUNCE_DISTRUST_MS)
          this.failed(source, err as Error)
        }
      } finally {
        release()
        if (this.inflight.size === 0 && this.committing.size === 0) this.poke()
      }
    })()
  }

  /** Announce chunk `i` with the others made durable within ANNOUNCE_BATCH_MS. */
  private queueAnnounce(i: number): void {
    if (!this.opts.announce) return
    this.toAnnounce.push(i)
    this.announceTimer ??= setTimeout(() => {
      this.announceTimer = undefined
      this.flushAnnounce()
    }, ANNOUNCE_BATCH_MS)
  }

  /**
   * One announce message to each partial holder we know (fetchers of this artifact; seeds need
   * nothing), at most MAX_ANNOUNCE_ENTRIES chunks; the rest go in the next batch, so a peer gets
   * at most one message per ANNOUNCE_BATCH_MS from this fetch.
   */
  private flushAnnounce(): void {
    if (this.signal.aborted || this.toAnnounce.length === 0) return
    const batch = this.toAnnounce.slice(0, MAX_ANNOUNCE_ENTRIES)
    this.toAnnounce = this.toAnnounce.slice(MAX_ANNOUNCE_ENTRIES)
    for (const { source, have } of this.haves.values()) {
      if (have.all === true || source.announce === undefined) continue
      source.announce(this.digest, batch, this.timeout(CHUNK_TIMEOUT_MS / 6)).catch(err => {
        log('announce to %s: %s', source.id, (err as Error).message)
      })
    }
    if (this.toAnnounce.length > 0) {
      this.announceTimer = setTimeout(() => {
        this.announceTimer = undefined
        this.flushAnnounce()
      }, ANNOUNCE_BATCH_MS)
    }
  }

  /** A source failed us: a wrong manifest or chunk is its fault (banned); anything else is a pause. */
  private failed(source: ChunkSource, err: Error): void {
    if (isPeerFault(err)) {
      if (err instanceof ChunkMismatchError) this.counters.rejected++
      if (!this.faulty.has(source.id)) {
        this.faulty.add(source.id)
        this.haves.delete(source.id)
        log('source %s sent invalid data for %s: %s', source.id, this.digest, err.message)
        this.opts.onFaulty?.(source, err)
      }
      return
    }
    log('source %s: %s', source.id, err.message)
    this.retryAt.set(source.id, performance.now() + SOURCE_RETRY_MS)
    this.haves.delete(source.id)
  }
}
