/**
 * The daemon's artifacts: its store, the fetches of what its config references, garbage
 * collection, and the API other parts use.
 *
 * For the rollout engine (last-known-good) and anything else that must keep an artifact the
 * config no longer names: `pin(digest, owner)` / `unpin(digest, owner)` keep it on disk through
 * garbage collection, whatever the config says; `isComplete(digest)` says whether it can be
 * switched to now. The artifact each file or workload ran before its current one is kept too
 * (see apply.ts), without a pin.
 *
 * @example
 * ```ts
 * const artifacts = await Artifacts.open({ dir: join(dataDir, 'artifacts') })
 * artifacts.setSources(() => meshPeersAsChunkSources())
 * artifacts.want(['sha256:…'])          // from the reconciler: fetch what the config references
 * await artifacts.pin(digest, 'rollout:last-known-good')
 * ```
 */
import { TypedEventEmitter } from '@libp2p/interface'
import type { ArtifactStatus } from '../../crdt/fleet-status.ts'
import { logger } from '@libp2p/logger'
import { ArtifactFetch, type ChunkSource, type FetchProgress } from './fetch.ts'
import { ArtifactStore, type ArtifactInfo, type ArtifactStoreEvents } from './store.ts'
import { RateLimiter } from './rate-limit.ts'
import { chunkLength, isDigest, type ArtifactDigest } from './manifest.ts'
import {
  DEFAULT_DISK_BUDGET_BYTES,
  DEFAULT_GC_GRACE_MS,
  MAX_CONCURRENT_FETCHES,
  MAX_STATUS_ARTIFACTS
} from './limits.ts'

const log = logger('rhizome:node:artifacts')

/**
 * The benchmark's A/B switch, RHIZOME_ARTIFACT_SCHEDULING: 'rarest' is the scheduling before
 * partial holders were preferred; 'partial' prefers them but without have-announcements or
 * super-seeding; unset (or anything else) is the deployed one, 'swarm'.
 */
const SCHEDULING = ((): 'rarest' | 'partial' | 'swarm' => {
  const s = process.env.RHIZOME_ARTIFACT_SCHEDULING
  return s === 'rarest' || s === 'partial' ? s : 'swarm'
})()

export interface ArtifactsOptions {
  /** `<dataDir>/artifacts` */
  dir: string
  /** Download limit for all fetches together, bytes per second (0: none). */
  fetchBytesPerSecond?: number
  /** Upload limit for all chunks served to peers together, bytes per second (0: none). */
  serveBytesPerSecond?: number
  /** Unreferenced artifacts are deleted after this long… */
  gcGraceMs?: number
  /** …or sooner, least recently wanted first, while the store holds more than this. */
  diskBudgetBytes?: number
}

/** One referenced artifact as the status record reports it (the status contract defines it). */
export type { ArtifactStatus }

export interface ArtifactCounters {
  bytesFetched: number
  bytesRefetched: number
  chunksRejected: number
  bytesServed: number
  chunksServed: number
}

export class Artifacts extends TypedEventEmitter<ArtifactStoreEvents> {
  readonly store: ArtifactStore
  readonly fetchRate: RateLimiter
  readonly serveRate: RateLimiter
  private readonly opts: ArtifactsOptions
  private sources: () => ChunkSource[] = () => []
  private onFaulty: (source: ChunkSource, err: Error) => void = () => {}
  private readonly fetches = new Map<ArtifactDigest, ArtifactFetch>()
  private wanted: ArtifactDigest[] = []
  private keep = new Set<string>()
  private readonly finished = { bytesFetched: 0, bytesRefetched: 0, chunksRejected: 0 }
  readonly served = { bytes: 0, chunks: 0 }
  private stopped = false

  private constructor(store: ArtifactStore, opts: ArtifactsOptions) {
    super()
    this.store = store
    this.opts = opts
    this.fetchRate = new RateLimiter(opts.fetchBytesPerSecond ?? 0)
    this.serveRate = new RateLimiter(opts.serveBytesPerSecond ?? 0)
    store.addEventListener('complete', e => {
      this.safeDispatchEvent('complete', { detail: e.detail })
    })
  }

  static async open(opts: ArtifactsOptions): Promise<Artifacts> {
    return new Artifacts(await ArtifactStore.open(opts.dir), opts)
  }

  /** Where chunks come from (the mesh's peers), and what to do with one that lies (ban it). */
  setSources(
    sources: () => ChunkSource[],
    onFaulty: (source: ChunkSource, err: Error) => void
  ): void {
    this.sources = sources
    this.onFaulty = onFaulty
    this.poke()
  }

  /**
   * What this daemon serves to its peers (mesh/artifact-service.ts): verified chunks only, from
   * complete and partial artifacts alike (so fetchers of the same artifact serve each other),
   * paced by the serve limit.
   */
  holder(): {
    have(digest: string): ReturnType<ArtifactStore['have']>
    manifest(digest: string): Uint8Array | undefined
    chunk(digest: string, index: number, into?: Uint8Array): Promise<Uint8Array | undefined>
    announced(peerId: string, digest: string, indices: number[]): void
    readonly superSeed: boolean
  } {
    return {
      superSeed: SCHEDULING === 'swarm',
      announced: (peerId, d, indices) => {
        if (isDigest(d)) this.fetches.get(d)?.announced(peerId, indices)
      },
      have: d => (isDigest(d) ? this.store.have(d) : undefined),
      manifest: d => (isDigest(d) ? this.store.manifest(d)?.bytes : undefined),
      chunk: async (d, i, into) => {
        const m = isDigest(d) ? this.store.manifest(d) : undefined
        if (m === undefined || !this.store.holds(m.digest, i)) return undefined
        await this.serveRate.take(chunkLength(m, i))
        const c = await this.store.readChunk(m.digest, i, into)
        if (c !== undefined) {
          this.served.bytes += c.length
          this.served.chunks++
        }
        return c
      }
    }
  }

  /** Peers changed: running fetches look again at once. */
  poke(): void {
    for (const f of this.fetches.values()) f.poke()
  }

  isComplete(d: ArtifactDigest): boolean {
    return this.store.state(d) === 'complete'
  }

  pin(d: ArtifactDigest, owner: string): Promise<void> {
    return this.store.pin(d, owner)
  }

  unpin(d: ArtifactDigest, owner: string): Promise<void> {
    return this.store.unpin(d, owner)
  }

  /**
   * The artifacts the config references now (`wanted`, fetched if missing, in this order) and
   * those kept besides (applied, previous: never collected).
   */
  want(wanted: ArtifactDigest[], kept: Iterable<ArtifactDigest> = []): void {
    if (this.stopped) return
    this.wanted = [...new Set(wanted)]
    this.keep = new Set<string>([...this.wanted, ...kept])
    void this.store.markWanted(this.keep as Set<ArtifactDigest>)
    for (const [d, f] of this.fetches) {
      if (!this.wanted.includes(d)) {
        f.stop()
        this.fetches.delete(d)
      }
    }
    this.startFetches()
  }

  private startFetches(): void {
    for (const d of this.wanted) {
      if (this.fetches.size >= MAX_CONCURRENT_FETCHES) break
      if (this.fetches.has(d) || this.isComplete(d)) continue
      const f = new ArtifactFetch(d, this.store, () => this.sources(), {
        rate: this.fetchRate,
        preferPartial: SCHEDULING !== 'rarest',
        announce: SCHEDULING === 'swarm',
        onFaulty: (s, err) => this.onFaulty(s, err)
      })
      this.fetches.set(d, f)
      f.run().then(
        () => {
          this.retire(d, f)
          log('fetched %s', d)
        },
        err => {
          this.retire(d, f)
          if ((err as Error).name !== 'AbortError') log.error('fetch of %s ended: %e', d, err)
        }
      )
    }
  }

  private retire(d: ArtifactDigest, f: ArtifactFetch): void {
    const p = f.progress()
    this.finished.bytesFetched += p.fetched
    this.finished.bytesRefetched += p.refetched
    this.finished.chunksRejected += p.rejected
    if (this.fetches.get(d) === f) this.fetches.delete(d)
    if (!this.stopped) this.startFetches()
  }

  /** Progress of one referenced artifact. */
  status(d: ArtifactDigest): ArtifactStatus {
    const info = this.store.info(d)
    const f = this.fetches.get(d)
    if (info?.state === 'complete') {
      return withName(
        { state: 'complete', size: info.size, held: info.size, peers: 0, rate: 0 },
        info
      )
    }
    if (f !== undefined) {
      const p: FetchProgress = f.progress()
      const s: ArtifactStatus = {
        state: p.state === 'complete' ? 'complete' : p.state,
        held: p.held,
        peers: p.peers,
        rate: p.rate
      }
      if (p.size !== undefined) s.size = p.size
      if (p.eta !== undefined) s.eta = p.eta
      if (p.reason !== undefined) s.reason = p.reason
      return withName(s, info)
    }
    return withName(
      {
        state: 'waiting',
        held: info?.held ?? 0,
        peers: 0,
        rate: 0,
        reason: 'queued behind other fetches'
      },
      info
    )
  }

  /** The referenced artifacts and their progress, for the status record (bounded). */
  statuses(): Record<string, ArtifactStatus> {
    const out: Record<string, ArtifactStatus> = {}
    for (const d of this.wanted.slice(0, MAX_STATUS_ARTIFACTS)) out[d] = this.status(d)
    return out
  }

  counters(): ArtifactCounters {
    const c = { ...this.finished }
    for (const f of this.fetches.values()) {
      const p = f.progress()
      c.bytesFetched += p.fetched
      c.bytesRefetched += p.refetched
      c.chunksRejected += p.rejected
    }
    return { ...c, bytesServed: this.served.bytes, chunksServed: this.served.chunks }
  }

  list(): ArtifactInfo[] {
    return this.store.list()
  }

  /** Delete what nobody wants (see ArtifactStore.gc). */
  async gc(now = Date.now()): Promise<ArtifactDigest[]> {
    const removed = await this.store.gc(this.keep, {
      graceMs: this.opts.gcGraceMs ?? DEFAULT_GC_GRACE_MS,
      budgetBytes: this.opts.diskBudgetBytes ?? DEFAULT_DISK_BUDGET_BYTES,
      now
    })
    if (removed.length > 0) log('collected %o', removed)
    return removed
  }

  async stop(): Promise<void> {
    this.stopped = true
    for (const f of this.fetches.values()) f.stop()
    this.fetches.clear()
    await this.store.close()
  }
}

function withName(s: ArtifactStatus, info: ArtifactInfo | undefined): ArtifactStatus {
  if (info?.name !== undefined) s.name = info.name
  return s
}
