/**
 * Artifacts without a network: the content store (add, chunks counted only once verified and
 * durable, resume from disk, unpack, pins and garbage collection) and the fetch engine over
 * in-memory chunk sources (several at once, bounded, rate-limited, a lying source cut off, no
 * source at all reported as waiting).
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import {
  mkdtemp,
  readFile,
  stat,
  writeFile,
  mkdir,
  appendFile,
  readdir,
  readlink
} from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { create } from 'tar'
import { ArtifactStore, type Have } from '../node/artifacts/store.ts'
import { ArtifactFetch, type ChunkSource } from '../node/artifacts/fetch.ts'
import { RateLimiter } from '../node/artifacts/rate-limit.ts'
import { decodeManifest, parseDigest, type ArtifactDigest } from '../node/artifacts/manifest.ts'
import {
  MAX_CHUNK_SIZE,
  MAX_OPEN_READERS,
  MIN_CHUNK_SIZE,
  SUPERSEED_FALLBACK_MS
} from '../node/artifacts/limits.ts'
import { waitFor } from './fixtures/wait.ts'

const CHUNK = MIN_CHUNK_SIZE

// A full garbage collection on demand, to see what memory is still referenced.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void
async function collect(): Promise<void> {
  // Array buffers are freed after the collection that finds them dead: collect, let it sweep.
  for (let k = 0; k < 3; k++) {
    gc()
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

async function* pieces(bytes: Uint8Array, size = 7000): AsyncGenerator<Uint8Array> {
  for (let o = 0; o < bytes.length; o += size) yield bytes.subarray(o, o + size)
}

async function tempStore(): Promise<ArtifactStore> {
  return ArtifactStore.open(await mkdtemp(join(tmpdir(), 'rhizome-art-')))
}

/**
 * A source serving from a store, counting the chunk requests it serves; `corrupt` flips a byte of
 * every chunk; `busy`: a saturated super-seeding seed, which answers busy for chunk i when busy(i)
 * unless the fetcher insists (those answers are counted in `busied`).
 */
function storeSource(
  id: string,
  store: ArtifactStore,
  opts: { corrupt?: boolean; gate?: () => Promise<void>; busy?: (i: number) => boolean } = {}
): ChunkSource & { requests: number[]; busied: number[]; maxConcurrent: number } {
  let now = 0
  const s = {
    id,
    requests: [] as number[],
    busied: [] as number[],
    maxConcurrent: 0,
    have: async (d: ArtifactDigest): Promise<Have | undefined> => store.have(d),
    manifest: async (d: ArtifactDigest) => store.manifest(d)?.bytes,
    chunk: async (
      d: ArtifactDigest,
      i: number,
      _signal: AbortSignal,
      chunkOpts?: { insist?: boolean }
    ): Promise<Uint8Array | 'busy'> => {
      if (opts.busy?.(i) === true && chunkOpts?.insist !== true) {
        s.busied.push(i)
        return 'busy'
      }
      s.requests.push(i)
      now++
      s.maxConcurrent = Math.max(s.maxConcurrent, now)
      try {
        await opts.gate?.()
        await new Promise(resolve => setImmediate(resolve))
        const c = await store.readChunk(d, i)
        if (c === undefined) throw new Error(`${id} does not hold chunk ${i}`)
        if (opts.corrupt === true) {
          const bad = c.slice()
          bad[0] = (bad[0] as number) ^ 0xff
          return bad
        }
        return c
      } finally {
        now--
      }
    }
  }
  return s
}

describe('artifact store', () => {
  it('adds a file as chunks under the digest of its manifest, and reads it back', async () => {
    const store = await tempStore()
    const bytes = randomBytes(5 * CHUNK + 123)
    const m = await store.add(pieces(bytes), { name: 'model', chunkSize: CHUNK })
    assert.match(m.digest, /^sha256:[0-9a-f]{64}$/)
    assert.equal(m.chunks.length, 6)
    assert.equal(store.state(m.digest), 'complete')
    assert.deepEqual(await readFile(store.blobPath(m.digest)!), bytes)
    assert.deepEqual(decodeManifest(m.bytes, m.digest).fileSha256, m.fileSha256)
    assert.equal(store.info(m.digest)?.name, 'model')
    // The same bytes again: the same artifact.
    const again = await store.add(pieces(bytes, 999), { chunkSize: CHUNK })
    assert.equal(again.digest, m.digest)
    // A reopened store knows it.
    await store.close()
    const reopened = await ArtifactStore.open(store.dir)
    assert.equal(reopened.state(m.digest), 'complete')
    assert.deepEqual(
      Buffer.from((await reopened.readChunk(m.digest, 5))!),
      bytes.subarray(5 * CHUNK)
    )
  })

  it('refuses a chunk that does not match, and a manifest that is not the one asked for', async () => {
    const a = await tempStore()
    const m = await a.add(pieces(randomBytes(3 * CHUNK)), { chunkSize: CHUNK })
    const b = await tempStore()
    const other = await a.add(pieces(randomBytes(CHUNK)), { chunkSize: CHUNK })
    assert.throws(() => decodeManifest(other.bytes, m.digest), { name: 'InvalidManifestError' })
    await b.putManifest(decodeManifest(m.bytes, m.digest))
    const good = (await a.readChunk(m.digest, 1))!
    const bad = good.slice()
    bad[10] = (bad[10] as number) ^ 1
    await assert.rejects(b.writeChunk(m.digest, 1, bad), { name: 'ChunkMismatchError' })
    assert.equal(b.holds(m.digest, 1), false)
    assert.equal(await b.writeChunk(m.digest, 1, good), true)
    assert.equal(await b.writeChunk(m.digest, 1, good), false, 'a held chunk is not written twice')
  })

  it('keeps counted chunks across a restart and ignores a torn record', async () => {
    const a = await tempStore()
    const m = await a.add(pieces(randomBytes(4 * CHUNK)), { chunkSize: CHUNK })
    const b = await tempStore()
    await b.putManifest(decodeManifest(m.bytes, m.digest))
    await b.writeChunk(m.digest, 0, (await a.readChunk(m.digest, 0))!)
    await b.writeChunk(m.digest, 2, (await a.readChunk(m.digest, 2))!)
    await b.close()
    // A crash in the middle of appending the next record leaves a partial one.
    await appendFile(join(b.dir, 'p', `${m.digest.slice(7)}.have`), Buffer.from([3, 0]))
    const again = await ArtifactStore.open(b.dir)
    assert.equal(again.state(m.digest), 'partial')
    assert.deepEqual(again.missing(m.digest), [1, 3])
    assert.equal(again.info(m.digest)?.held, 2 * CHUNK)
  })

  it('unpacks a tar artifact once, without setuid bits, into a directory that appears whole', async () => {
    const src = await mkdtemp(join(tmpdir(), 'rhizome-tar-'))
    await mkdir(join(src, 'app/bin'), { recursive: true })
    await writeFile(join(src, 'app/bin/run'), '#!/bin/sh\necho hi\n', { mode: 0o4755 })
    await writeFile(join(src, 'app/model.bin'), randomBytes(3000))
    const tarFile = join(src, 'app.tar')
    await create({ file: tarFile, cwd: join(src, 'app'), portable: true }, ['bin', 'model.bin'])
    const store = await tempStore()
    const m = await store.add(pieces(await readFile(tarFile)), { chunkSize: CHUNK })
    const dir = await store.unpacked(m.digest)
    assert.equal(await readFile(join(dir, 'bin/run'), 'utf8'), '#!/bin/sh\necho hi\n')
    assert.equal((await stat(join(dir, 'bin/run'))).mode & 0o7000, 0, 'setuid dropped')
    assert.equal(await store.unpacked(m.digest), dir)
    const notTar = await store.add(pieces(randomBytes(2000)), { chunkSize: CHUNK })
    await assert.rejects(store.unpacked(notTar.digest), { name: 'UnpackError' })
  })

  it('collects unwanted artifacts after the grace period or over the budget, never pinned ones', async () => {
    const store = await tempStore()
    const a = await store.add(pieces(randomBytes(CHUNK)), { chunkSize: CHUNK })
    const b = await store.add(pieces(randomBytes(CHUNK)), { chunkSize: CHUNK })
    const c = await store.add(pieces(randomBytes(CHUNK)), { chunkSize: CHUNK })
    const now = Date.now()
    await store.markWanted([a.digest, b.digest, c.digest], now - 10_000)
    await store.pin(c.digest, 'rollout:last-known-good')
    const big = { graceMs: 60_000, budgetBytes: 10 * CHUNK, now }
    assert.deepEqual(await store.gc(new Set(), big), [], 'within grace and budget')
    assert.deepEqual(await store.gc(new Set([a.digest]), { ...big, graceMs: 1000 }), [b.digest])
    assert.deepEqual(await store.gc(new Set(), { ...big, budgetBytes: CHUNK }), [a.digest])
    assert.equal(store.state(c.digest), 'complete', 'pinned')
    await store.unpin(c.digest, 'rollout:last-known-good')
    assert.deepEqual(await store.gc(new Set(), { ...big, graceMs: 1000 }), [c.digest])
    assert.deepEqual(store.list(), [])
  })

  it('keeps a served artifact open between chunk reads, at most MAX_OPEN_READERS files, closed when it goes', async () => {
    const store = await tempStore()
    const added = []
    for (let k = 0; k < MAX_OPEN_READERS + 2; k++) {
      added.push(await store.add(pieces(randomBytes(2 * CHUNK)), { chunkSize: CHUNK }))
    }
    // This process's open files under the store's complete artifacts (b/), by path.
    const open = async (): Promise<string[]> => {
      const fds = await readdir('/proc/self/fd')
      const paths = await Promise.all(
        fds.map(fd => readlink(`/proc/self/fd/${fd}`).catch(() => ''))
      )
      return paths.filter(p => p.startsWith(join(store.dir, 'b')))
    }
    const [a] = added
    assert.equal((await store.readChunk(a!.digest, 0))?.length, CHUNK)
    assert.equal((await store.readChunk(a!.digest, 1))?.length, CHUNK)
    assert.equal((await open()).length, 1, "one file kept open for the artifact's reads")
    for (const m of added) for (const i of [0, 1]) await store.readChunk(m.digest, i)
    assert.equal((await open()).length, MAX_OPEN_READERS)
    // An artifact removed is closed with it (its disk space is not held by an open file).
    const last = added.at(-1)!
    assert.equal((await store.gc(new Set(), { graceMs: 0, budgetBytes: 0 })).length, added.length)
    await waitFor('every removed artifact closed', async () => (await open()).length === 0)
    assert.equal(store.state(last.digest), 'absent')
    await store.close()
  })

  it('parses digests strictly', () => {
    assert.throws(() => parseDigest('sha256:abc'), { name: 'InvalidDigestError' })
    assert.equal(parseDigest('SHA256:' + 'A'.repeat(64)), 'sha256:' + 'a'.repeat(64))
  })
})

describe('artifact fetch engine', () => {
  it('fetches from several sources at once, within its bounds, and cuts off one that lies', async () => {
    const origin = await tempStore()
    const bytes = randomBytes(40 * CHUNK + 5)
    const m = await origin.add(pieces(bytes), { chunkSize: CHUNK })
    const honest1 = storeSource('honest-1', origin)
    const honest2 = storeSource('honest-2', origin)
    const liar = storeSource('liar', origin, { corrupt: true })
    const faulty: string[] = []
    const target = await tempStore()
    const f = new ArtifactFetch(m.digest, target, () => [liar, honest1, honest2], {
      concurrency: 6,
      perSource: 3,
      onFaulty: s => faulty.push(s.id)
    })
    await f.run()
    assert.deepEqual(await readFile(target.blobPath(m.digest)!), bytes)
    assert.deepEqual(faulty, ['liar'])
    assert.ok(liar.requests.length <= 3, `the liar was asked ${liar.requests.length} times`)
    assert.ok(
      honest1.requests.length > 0 && honest2.requests.length > 0,
      'both honest sources used'
    )
    for (const s of [honest1, honest2, liar]) assert.ok(s.maxConcurrent <= 3)
    const p = f.progress()
    assert.equal(p.state, 'complete')
    assert.equal(p.fetched, bytes.length)
    assert.ok(p.rejected >= 1)
  })

  it('resumes after an interruption without fetching a held chunk again', async () => {
    const origin = await tempStore()
    const m = await origin.add(pieces(randomBytes(30 * CHUNK)), { chunkSize: CHUNK })
    let served = 0
    let release: () => void = () => {}
    const stuck = new Promise<void>(resolve => {
      release = resolve
    })
    const src = storeSource('peer', origin, {
      gate: async () => {
        if (++served > 12) await stuck
      }
    })
    const target = await tempStore()
    const f1 = new ArtifactFetch(m.digest, target, () => [src], { concurrency: 2, perSource: 2 })
    const run1 = f1.run()
    while ((target.info(m.digest)?.chunksHeld ?? 0) < 12) {
      await new Promise(resolve => setTimeout(resolve, 5))
    }
    f1.stop()
    await assert.rejects(run1)
    release()
    await target.close()
    const reopened = await ArtifactStore.open(target.dir)
    const heldBefore = reopened.info(m.digest)!.chunksHeld
    assert.ok(heldBefore >= 12)
    const src2 = storeSource('peer', origin)
    const f2 = new ArtifactFetch(m.digest, reopened, () => [src2])
    await f2.run()
    assert.equal(reopened.state(m.digest), 'complete')
    assert.equal(src2.requests.length, 30 - heldBefore, 'only the missing chunks were asked for')
    assert.equal(new Set(src2.requests).size, src2.requests.length)
  })

  it('waits, without failing, while no source holds the artifact, and goes on when one comes', async () => {
    const origin = await tempStore()
    const m = await origin.add(pieces(randomBytes(3 * CHUNK)), { chunkSize: CHUNK })
    const target = await tempStore()
    const sources: ChunkSource[] = []
    const f = new ArtifactFetch(m.digest, target, () => sources)
    const run = f.run()
    await new Promise(resolve => setTimeout(resolve, 50))
    assert.equal(f.progress().state, 'waiting')
    assert.match(f.progress().reason ?? '', /no reachable peer/)
    sources.push(storeSource('late', origin))
    f.poke()
    await run
    assert.equal(target.state(m.digest), 'complete')
  })

  it('takes a chunk another fetcher holds from that fetcher, and only the rest from the seed', async () => {
    const origin = await tempStore()
    const m = await origin.add(pieces(randomBytes(24 * CHUNK)), { chunkSize: CHUNK })
    // A peer that fetched all but the last two chunks so far.
    const partial = await tempStore()
    await partial.putManifest(m)
    for (let i = 0; i < 22; i++) {
      await (
        await partial.stageChunk(m.digest, i, (await origin.readChunk(m.digest, i))!)
      ).durable
    }
    const seed = storeSource('seed', origin)
    const peer = storeSource('peer', partial)
    const target = await tempStore()
    await new ArtifactFetch(m.digest, target, () => [seed, peer]).run()
    assert.equal(target.state(m.digest), 'complete')
    assert.deepEqual(
      seed.requests.sort((a, b) => a - b),
      [22, 23],
      'the seed is asked only for what the peer lacks'
    )
    assert.equal(peer.requests.length, 22)
  })

  it('takes a chunk a seed answered busy for from the fetcher that announces it, not the seed', async () => {
    const origin = await tempStore()
    const m = await origin.add(pieces(randomBytes(8 * CHUNK)), { chunkSize: CHUNK })
    // The seed already sent chunks 0-3 to another fetcher, and is saturated: busy for those.
    const seed = storeSource('seed', origin, { busy: i => i < 4 })
    // That fetcher: its poll answer is stale (it held nothing then); only its announcement tells.
    const other = await tempStore()
    await other.putManifest(m)
    const peer = storeSource('peer', other)
    peer.have = async () => ({ bits: new Uint8Array(1) })
    const target = await tempStore()
    const fetch = new ArtifactFetch(m.digest, target, () => [seed, peer])
    const t0 = performance.now()
    const done = fetch.run()
    await waitFor(
      'the seed to answer busy for chunks 0-3',
      () => new Set(seed.busied).size === 4,
      5000,
      5
    )
    for (let i = 0; i < 4; i++) {
      await (
        await other.stageChunk(m.digest, i, (await origin.readChunk(m.digest, i))!)
      ).durable
    }
    fetch.announced('peer', [0, 1, 2, 3])
    await done
    assert.equal(target.state(m.digest), 'complete')
    assert.deepEqual(
      peer.requests.sort((a, b) => a - b),
      [0, 1, 2, 3]
    )
    assert.ok(
      seed.requests.every(i => i >= 4),
      `the seed sent only chunks nobody else had: ${seed.requests.join(',')}`
    )
    assert.ok(performance.now() - t0 < SUPERSEED_FALLBACK_MS, 'no fall-back wait')
  })

  it('falls back to a busy seed, insisting, when no fetcher has the chunk', async () => {
    const origin = await tempStore()
    const m = await origin.add(pieces(randomBytes(3 * CHUNK)), { chunkSize: CHUNK })
    const seed = storeSource('seed', origin, { busy: () => true })
    const target = await tempStore()
    await new ArtifactFetch(m.digest, target, () => [seed]).run()
    assert.equal(target.state(m.digest), 'complete')
    // Served only when insisted on: every chunk.
    assert.deepEqual(
      seed.requests.sort((a, b) => a - b),
      [0, 1, 2]
    )
  })

  it('does not stall on a peer that announces chunks it cannot serve, and stops believing it', async () => {
    const origin = await tempStore()
    const m = await origin.add(pieces(randomBytes(12 * CHUNK)), { chunkSize: CHUNK })
    let open = (): void => {}
    const gate = new Promise<void>(resolve => {
      open = resolve
    })
    const seed = storeSource('seed', origin, { gate: () => gate })
    const empty = await tempStore()
    await empty.putManifest(m)
    const liar = storeSource('liar', empty)
    let polls = 0
    liar.have = async d => {
      polls++
      return empty.have(d)
    }
    const target = await tempStore()
    const fetch = new ArtifactFetch(m.digest, target, () => [seed, liar])
    const done = fetch.run()
    const all = Array.from({ length: 12 }, (_, i) => i)
    await waitFor('the liar to be polled', () => polls > 0, 5000, 5)
    fetch.announced('liar', all)
    await waitFor('the liar to fail requests', () => liar.requests.length > 0, 5000, 5)
    const asked = liar.requests.length
    // Back among the sources after its pause, it announces again: not believed.
    const seen = polls
    await waitFor('the liar to be polled again', () => polls > seen, 10_000, 5)
    fetch.announced('liar', all)
    open()
    await done
    assert.equal(target.state(m.digest), 'complete')
    assert.equal(liar.requests.length, asked, 'the liar was not asked again')
  })

  it('holds no chunk in memory while it waits for the disk, and takes chunks as the pieces they arrived in', async () => {
    const big = MAX_CHUNK_SIZE
    const origin = await tempStore()
    const m = await origin.add(pieces(randomBytes(8 * big)), { chunkSize: big })
    const target = await tempStore()
    // Every chunk's fdatasync is held back until all eight are written.
    const stage = target.stageChunk.bind(target)
    let staged = 0
    let sync: () => void = () => {}
    const synced = new Promise<void>(resolve => {
      sync = resolve
    })
    let allStaged: () => void = () => {}
    const eight = new Promise<void>(resolve => {
      allStaged = resolve
    })
    target.stageChunk = async (d, i, bytes) => {
      const { durable } = await stage(d, i, bytes)
      if (++staged === 8) allStaged()
      return { durable: synced.then(() => durable) }
    }
    // Fresh bytes per reply, in three pieces as a peer's reply arrives.
    const source: ChunkSource = {
      id: 'p',
      have: async d => origin.have(d),
      manifest: async d => origin.manifest(d)?.bytes,
      chunk: async (d, i) => {
        const c = (await origin.readChunk(d, i))!.slice()
        return [c.subarray(0, 1), c.subarray(1, 70_000), c.subarray(70_000)]
      }
    }
    await collect()
    const before = process.memoryUsage().arrayBuffers
    const f = new ArtifactFetch(m.digest, target, () => [source], { concurrency: 8, perSource: 8 })
    const done = f.run()
    await eight
    await collect()
    const held = process.memoryUsage().arrayBuffers - before
    sync()
    await done
    assert.deepEqual(
      await readFile(target.blobPath(m.digest)!),
      await readFile(origin.blobPath(m.digest)!)
    )
    assert.ok(
      held < 2 * big,
      `${(held / 2 ** 20).toFixed(1)} MiB held while 8 chunks of 4 MiB await the disk`
    )
  })

  it('keeps to the bandwidth limit', async () => {
    const origin = await tempStore()
    const size = 24 * CHUNK
    const m = await origin.add(pieces(randomBytes(size)), { chunkSize: CHUNK })
    const target = await tempStore()
    const rate = new RateLimiter(size * 2, CHUNK)
    const t0 = performance.now()
    await new ArtifactFetch(m.digest, target, () => [storeSource('p', origin)], { rate }).run()
    const ms = performance.now() - t0
    // 24 chunks at 48 chunks/s with a one-chunk burst cannot take less than ~480 ms.
    assert.ok(ms >= 450, `took ${ms.toFixed(0)} ms`)
  })
})
