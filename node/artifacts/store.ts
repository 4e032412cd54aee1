/**
 * The daemon's content store for artifacts, on disk under `<dataDir>/artifacts/`:
 *
 *   m/<hex>        manifest (manifest.ts), named by its digest and checked against it when read
 *   p/<hex>.part   a partial artifact: chunks written at their offsets as they arrive
 *   p/<hex>.have   the chunks of .part that count: u32 little-endian indices, appended only
 *                  after the chunk was verified and the .part file fdatasync'ed
 *   b/<hex>        a complete artifact (the .part renamed once every chunk is there)
 *   u/<hex>/       a tar artifact unpacked (unpacked beside, then renamed: never seen half-done)
 *   tmp/           uploads and unpacks in progress; emptied on open
 *   meta.json      names, pins, what was applied where and when each artifact was last wanted
 *
 * Durability: a chunk counts only once it is verified against the manifest and on disk, so a
 * fetch resumes after a crash or power loss from what `.have` lists, and nothing unverified is
 * ever served or used. Chunks arriving together share one fdatasync (group commit).
 */
import { TypedEventEmitter } from '@libp2p/interface'
import { createHash, randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import {
  chmod,
  mkdir,
  open,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  writeFile,
  type FileHandle
} from 'node:fs/promises'
import { join } from 'node:path'
import { logger } from '@libp2p/logger'
import { extract, list as listTar } from 'tar'
import {
  ArtifactNotHeldError,
  ArtifactTooLargeError,
  ChunkMismatchError,
  UnpackError
} from './errors.ts'
import type { ArtifactHave, ChunkBytes } from '../../mesh/types.ts'
import {
  byteLength,
  chunkLength,
  chunkMatches,
  decodeManifest,
  digestHex,
  encodeManifest,
  type ArtifactDigest,
  type Manifest
} from './manifest.ts'
import {
  DEFAULT_CHUNK_SIZE,
  MAX_ARTIFACT_BYTES,
  MAX_OPEN_READERS,
  MAX_TAR_ENTRIES,
  READER_IDLE_MS,
  MAX_UNPACK_RATIO
} from './limits.ts'

const log = logger('rhizome:node:artifacts:store')

export type ArtifactState = 'absent' | 'partial' | 'complete'

/** Which chunks a holder has: what the artifact protocol says (bit i of byte i>>3, LSB first). */
export type Have = ArtifactHave

export interface ArtifactInfo {
  digest: ArtifactDigest
  name?: string
  state: ArtifactState
  size: number
  /** Verified bytes held. */
  held: number
  chunks: number
  chunksHeld: number
  fileSha256: string
  pinnedBy: string[]
  lastWantedAt?: number
}

interface Meta {
  names: Record<string, string>
  pins: Record<string, string[]>
  lastWanted: Record<string, number>
}

interface PartialFile {
  data: FileHandle
  have: FileHandle
  bits: Uint8Array
  count: number
  queue: Array<{ index: number; done: () => void; fail: (e: Error) => void }>
  /** Chunks written or being written, not yet durable. */
  writing: Set<number>
  flushing: Promise<void> | undefined
  finishing: Promise<void> | undefined
}

interface Entry {
  manifest: Manifest
  state: 'partial' | 'complete'
  partial?: PartialFile
  /** Chunks held (when partial); from .have on open. */
  bits?: Uint8Array
  count: number
}

export const bitSet = (bits: Uint8Array, i: number): boolean =>
  ((bits[i >> 3] ?? 0) & (1 << (i & 7))) !== 0

function setBit(bits: Uint8Array, i: number): void {
  bits[i >> 3] = (bits[i >> 3] ?? 0) | (1 << (i & 7))
}

/** A complete artifact's file kept open while its chunks are being served (`readChunk`). */
interface Reader {
  fh: Promise<FileHandle>
  /** Reads in progress; the idle timer runs only at zero. */
  users: number
  idle?: ReturnType<typeof setTimeout>
}

/** The store's events: an artifact became complete (added, fetched or imported). */
export interface ArtifactStoreEvents {
  complete: CustomEvent<{ digest: ArtifactDigest }>
}

export class ArtifactStore extends TypedEventEmitter<ArtifactStoreEvents> {
  readonly dir: string
  private readonly entries = new Map<string, Entry>()
  /** Per complete artifact being served (hex digest): its open file, at most MAX_OPEN_READERS. */
  private readonly readers = new Map<string, Reader>()
  private meta: Meta = { names: {}, pins: {}, lastWanted: {} }
  private metaWrite: Promise<void> = Promise.resolve()

  private constructor(dir: string) {
    super()
    this.dir = dir
  }

  /** Open (creating) the store in `dir`, re-reading what a previous run left. */
  static async open(dir: string): Promise<ArtifactStore> {
    const s = new ArtifactStore(dir)
    // Complete artifacts and unpacked trees are reachable by workloads (other users) that know
    // their digest, as the config names it; nothing here can be listed, and partial ones, the
    // manifests and uploads in progress are the daemon's alone.
    await mkdir(dir, { recursive: true, mode: 0o711 })
    await chmod(dir, 0o711)
    for (const [d, mode] of [
      ['m', 0o700],
      ['p', 0o700],
      ['b', 0o711],
      ['u', 0o711]
    ] as const) {
      await mkdir(join(dir, d), { recursive: true, mode })
      await chmod(join(dir, d), mode)
    }
    await rm(join(dir, 'tmp'), { recursive: true, force: true })
    await mkdir(join(dir, 'tmp'), { mode: 0o700 })
    await s.load()
    return s
  }

  private path(kind: 'm' | 'b' | 'u', d: ArtifactDigest): string {
    return join(this.dir, kind, digestHex(d))
  }
  private partPath(d: ArtifactDigest, ext: 'part' | 'have'): string {
    return join(this.dir, 'p', `${digestHex(d)}.${ext}`)
  }

  private async load(): Promise<void> {
    try {
      const m = JSON.parse(await readFile(join(this.dir, 'meta.json'), 'utf8')) as Partial<Meta>
      this.meta = { names: m.names ?? {}, pins: m.pins ?? {}, lastWanted: m.lastWanted ?? {} }
    } catch {}
    for (const hex of await readdir(join(this.dir, 'm'))) {
      if (!/^[0-9a-f]{64}$/.test(hex)) continue
      const digest = `sha256:${hex}` as ArtifactDigest
      let manifest: Manifest
      try {
        manifest = decodeManifest(await readFile(join(this.dir, 'm', hex)), digest)
      } catch (err) {
        log.error('manifest %s is damaged; dropped: %e', hex, err)
        await rm(join(this.dir, 'm', hex), { force: true })
        continue
      }
      const n = manifest.chunks.length
      const blob = await stat(this.path('b', digest)).catch(() => undefined)
      if (blob !== undefined && blob.size === manifest.size) {
        this.entries.set(hex, { manifest, state: 'complete', count: n })
        continue
      }
      const bits = new Uint8Array(Math.ceil(n / 8))
      let count = 0
      const part = await stat(this.partPath(digest, 'part')).catch(() => undefined)
      if (part !== undefined) {
        const have = await readFile(this.partPath(digest, 'have')).catch(() => new Uint8Array())
        // A torn last record (a crash mid-append) is ignored: that chunk is fetched again.
        for (let o = 0; o + 4 <= have.length; o += 4) {
          const i = new DataView(have.buffer, have.byteOffset + o, 4).getUint32(0, true)
          if (i < n && !bitSet(bits, i)) {
            setBit(bits, i)
            count++
          }
        }
      }
      this.entries.set(hex, { manifest, state: 'partial', bits, count })
    }
  }

  // ---- reading ----

  manifest(d: ArtifactDigest): Manifest | undefined {
    return this.entries.get(digestHex(d))?.manifest
  }

  state(d: ArtifactDigest): ArtifactState {
    return this.entries.get(digestHex(d))?.state ?? 'absent'
  }

  /** Which chunks of `d` this store can serve, or undefined if it has no manifest for it. */
  have(d: ArtifactDigest): Have | undefined {
    const e = this.entries.get(digestHex(d))
    if (e === undefined) return undefined
    if (e.state === 'complete') return { all: true }
    return { bits: (e.partial?.bits ?? e.bits ?? new Uint8Array()).slice() }
  }

  /** Is chunk `i` of `d` held (and verified)? */
  holds(d: ArtifactDigest, i: number): boolean {
    const e = this.entries.get(digestHex(d))
    if (e === undefined) return false
    return e.state === 'complete' || bitSet(e.partial?.bits ?? e.bits ?? new Uint8Array(), i)
  }

  /** Chunk indices still missing. */
  missing(d: ArtifactDigest): number[] {
    const e = this.entries.get(digestHex(d))
    if (e === undefined) return []
    if (e.state === 'complete') return []
    const bits = e.partial?.bits ?? e.bits ?? new Uint8Array()
    const out: number[] = []
    for (let i = 0; i < e.manifest.chunks.length; i++) if (!bitSet(bits, i)) out.push(i)
    return out
  }

  info(d: ArtifactDigest): ArtifactInfo | undefined {
    const e = this.entries.get(digestHex(d))
    if (e === undefined) return undefined
    const m = e.manifest
    const count = e.partial?.count ?? e.count
    const bits = e.partial?.bits ?? e.bits
    let held = count * m.chunkSize
    if (e.state === 'complete') held = m.size
    else if (bits !== undefined && m.chunks.length > 0 && bitSet(bits, m.chunks.length - 1)) {
      held -= m.chunkSize - chunkLength(m, m.chunks.length - 1)
    }
    const out: ArtifactInfo = {
      digest: d,
      state: e.state,
      size: m.size,
      held,
      chunks: m.chunks.length,
      chunksHeld: e.state === 'complete' ? m.chunks.length : count,
      fileSha256: m.fileSha256,
      pinnedBy: [...(this.meta.pins[d] ?? [])]
    }
    const name = this.meta.names[d]
    if (name !== undefined) out.name = name
    const lw = this.meta.lastWanted[d]
    if (lw !== undefined) out.lastWantedAt = lw
    return out
  }

  list(): ArtifactInfo[] {
    return [...this.entries.keys()]
      .map(hex => this.info(`sha256:${hex}` as ArtifactDigest))
      .filter((x): x is ArtifactInfo => x !== undefined)
  }

  /** The path of a complete artifact's file (read-only use), or undefined. */
  blobPath(d: ArtifactDigest): string | undefined {
    return this.state(d) === 'complete' ? this.path('b', d) : undefined
  }

  /** One verified chunk, read from disk; undefined if not held. */
  /** Chunk `i` of `d`, read into `into` when it is large enough (a reused buffer), else a new one. */
  async readChunk(
    d: ArtifactDigest,
    i: number,
    into?: Uint8Array
  ): Promise<Uint8Array | undefined> {
    const e = this.entries.get(digestHex(d))
    if (e === undefined || !Number.isInteger(i) || i < 0 || i >= e.manifest.chunks.length) {
      return undefined
    }
    let file: string
    if (e.state === 'complete') file = this.path('b', d)
    else if (bitSet(e.partial?.bits ?? e.bits ?? new Uint8Array(), i)) {
      file = this.partPath(d, 'part')
    } else return undefined
    const len = chunkLength(e.manifest, i)
    const buf =
      into !== undefined && into.length >= len
        ? Buffer.from(into.buffer, into.byteOffset, len)
        : Buffer.allocUnsafe(len)
    const at = i * e.manifest.chunkSize
    const bytesRead =
      e.state === 'complete'
        ? await this.readKept(digestHex(d), file, buf, at)
        : await readOnce(file, buf, at)
    if (bytesRead !== len) return undefined
    return new Uint8Array(buf.buffer, buf.byteOffset, len)
  }

  /**
   * Read from a complete artifact's file, kept open between reads (a peer fetching it asks for
   * one chunk after another: an open and a close per chunk cost more than the read). At most
   * MAX_OPEN_READERS files are kept, each closed READER_IDLE_MS after its last read, or when the
   * artifact is removed; beyond that many in use, a read opens and closes its own.
   */
  private async readKept(hex: string, file: string, buf: Buffer, at: number): Promise<number> {
    let r = this.readers.get(hex)
    if (r === undefined) {
      if (this.readers.size >= MAX_OPEN_READERS) {
        const idle = [...this.readers].find(([, x]) => x.users === 0)
        if (idle === undefined) return readOnce(file, buf, at)
        this.closeReader(idle[0])
      }
      r = { fh: open(file, 'r'), users: 0 }
      this.readers.set(hex, r)
    }
    const reader = r
    clearTimeout(reader.idle)
    reader.users++
    try {
      const fh = await reader.fh
      return (await fh.read(buf, 0, buf.length, at)).bytesRead
    } catch (err) {
      this.closeReader(hex, reader)
      throw err
    } finally {
      if (--reader.users === 0 && this.readers.get(hex) === reader) {
        reader.idle = setTimeout(() => this.closeReader(hex, reader), READER_IDLE_MS)
        reader.idle.unref()
      }
    }
  }

  /** Close a kept file (FileHandle.close waits for reads in progress on it). */
  private closeReader(hex: string, only?: Reader): void {
    const r = this.readers.get(hex)
    if (r === undefined || (only !== undefined && r !== only)) return
    this.readers.delete(hex)
    clearTimeout(r.idle)
    void r.fh.then(fh => fh.close()).catch(() => {})
  }

  /** Stream a complete artifact's bytes (bundle export), without holding it in memory. */
  async *read(d: ArtifactDigest): AsyncGenerator<Uint8Array> {
    const m = this.manifest(d)
    if (m === undefined || this.state(d) !== 'complete') {
      throw new ArtifactNotHeldError(`artifact ${d} is not complete on this daemon`)
    }
    for (let i = 0; i < m.chunks.length; i++) {
      const c = await this.readChunk(d, i)
      if (c === undefined) throw new ArtifactNotHeldError(`chunk ${i} of ${d} could not be read`)
      yield c
    }
  }

  // ---- writing ----

  /**
   * Keep a manifest (from a peer or a bundle, checked against its digest by the caller through
   * decodeManifest). Starting a fetch: the artifact is then `partial` with no chunks.
   */
  async putManifest(m: Manifest): Promise<void> {
    const hex = digestHex(m.digest)
    if (this.entries.has(hex)) return
    await writeFileAtomic(this.path('m', m.digest), m.bytes)
    const bits = new Uint8Array(Math.ceil(m.chunks.length / 8))
    this.entries.set(hex, { manifest: m, state: 'partial', bits, count: 0 })
    if (m.chunks.length === 0) await this.finish(m.digest)
  }

  /**
   * Write chunk `i` of `d`: checked against the manifest first (ChunkMismatchError, naming no one:
   * the caller knows who sent it), then written, made durable with the other chunks that arrive
   * meanwhile, and only then counted. Resolves false if the chunk was already held.
   */
  async writeChunk(d: ArtifactDigest, i: number, bytes: ChunkBytes): Promise<boolean> {
    return (await this.stageChunk(d, i, bytes)).durable
  }

  /**
   * `writeChunk` in two steps: resolves once the chunk is checked and written (its bytes are no
   * longer needed), with `durable` resolving once it is on disk and counts (false if it was
   * already held). A fetch asks for more while earlier chunks wait for their fdatasync.
   */
  async stageChunk(
    d: ArtifactDigest,
    i: number,
    bytes: ChunkBytes
  ): Promise<{ durable: Promise<boolean> }> {
    const e = this.entries.get(digestHex(d))
    if (e === undefined) throw new ArtifactNotHeldError(`no manifest for ${d}; fetch it first`)
    if (!chunkMatches(e.manifest, i, bytes)) {
      throw new ChunkMismatchError(
        `chunk ${i} of ${d} (${byteLength(bytes)} bytes) does not match the sha-256 its manifest names`
      )
    }
    if (e.state === 'complete') return { durable: Promise.resolve(false) }
    const p = e.partial ?? (await this.openPartial(d, e))
    if (bitSet(p.bits, i) || p.writing.has(i)) return { durable: Promise.resolve(false) }
    p.writing.add(i)
    try {
      // Straight from the pieces it arrived in (one writev), not from a joined copy.
      const at = i * e.manifest.chunkSize
      if (bytes instanceof Uint8Array) await p.data.write(bytes, 0, bytes.length, at)
      else await p.data.writev(bytes, at)
    } catch (err) {
      p.writing.delete(i)
      throw err
    }
    const durable = new Promise<void>((done, fail) => {
      p.queue.push({ index: i, done, fail })
      p.flushing ??= this.flush(d, e, p)
    }).then(
      // The last chunk: resolve once the artifact is complete, not just the chunk.
      async () => {
        p.writing.delete(i)
        await p.finishing
        return true
      },
      (err: unknown) => {
        p.writing.delete(i)
        throw err
      }
    )
    return { durable }
  }

  private async openPartial(d: ArtifactDigest, e: Entry): Promise<PartialFile> {
    if (e.partial !== undefined) return e.partial
    const data = await open(this.partPath(d, 'part'), constants.O_RDWR | constants.O_CREAT, 0o600)
    const have = await open(this.partPath(d, 'have'), 'a', 0o600)
    // A second caller may have opened it while we awaited.
    if (e.partial !== undefined) {
      await data.close()
      await have.close()
      return e.partial
    }
    e.partial = {
      data,
      have,
      bits: e.bits ?? new Uint8Array(Math.ceil(e.manifest.chunks.length / 8)),
      count: e.count,
      queue: [],
      writing: new Set(),
      flushing: undefined,
      finishing: undefined
    }
    e.bits = undefined
    return e.partial
  }

  /** Group commit: one fdatasync for every chunk written since the last, then their .have records. */
  private async flush(d: ArtifactDigest, e: Entry, p: PartialFile): Promise<void> {
    while (p.queue.length > 0) {
      const batch = p.queue.splice(0)
      try {
        await p.data.datasync()
        const rec = Buffer.allocUnsafe(4 * batch.length)
        batch.forEach((q, k) => rec.writeUInt32LE(q.index, 4 * k))
        await p.have.write(rec)
        for (const q of batch) {
          if (!bitSet(p.bits, q.index)) {
            setBit(p.bits, q.index)
            p.count++
          }
        }
        for (const q of batch) q.done()
      } catch (err) {
        for (const q of batch) q.fail(err as Error)
      }
    }
    p.flushing = undefined
    if (p.count === e.manifest.chunks.length) {
      p.finishing ??= this.finish(d)
      await p.finishing
    }
  }

  /** Every chunk is there: the .part becomes the artifact, durably, and 'complete' is announced. */
  private async finish(d: ArtifactDigest): Promise<void> {
    const e = this.entries.get(digestHex(d))
    if (e === undefined || e.state === 'complete') return
    const p = e.partial
    if (p !== undefined) {
      await p.data.datasync()
      await p.data.close()
      await p.have.close()
    } else {
      await writeFile(this.partPath(d, 'part'), new Uint8Array())
    }
    // Readable by the workloads that run from it (the directory above lets none list it).
    await chmod(this.partPath(d, 'part'), 0o644)
    await rename(this.partPath(d, 'part'), this.path('b', d))
    await rm(this.partPath(d, 'have'), { force: true })
    await this.syncDir(join(this.dir, 'b'))
    e.state = 'complete'
    e.partial = undefined
    e.bits = undefined
    e.count = e.manifest.chunks.length
    log('artifact %s complete (%d bytes)', d, e.manifest.size)
    this.safeDispatchEvent('complete', { detail: { digest: d } })
  }

  /**
   * Add a local file's bytes (`rhizome artifact add`): cut into chunks and hashed as it streams
   * in, written to tmp/, then moved in under its digest. Returns the manifest.
   */
  async add(
    source: AsyncIterable<Uint8Array>,
    opts: { name?: string; chunkSize?: number; maxBytes?: number } = {}
  ): Promise<Manifest> {
    const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE
    const max = Math.min(opts.maxBytes ?? MAX_ARTIFACT_BYTES, MAX_ARTIFACT_BYTES)
    const tmp = join(this.dir, 'tmp', `add-${randomBytes(8).toString('hex')}`)
    const fh = await open(tmp, 'w', 0o600)
    let m: Manifest
    try {
      m = await manifestOf(source, { chunkSize, maxBytes: max, onPiece: piece => fh.write(piece) })
      await fh.datasync()
    } catch (err) {
      await fh.close()
      await rm(tmp, { force: true })
      throw err
    }
    await fh.close()
    const hex = digestHex(m.digest)
    if (this.state(m.digest) === 'complete') {
      await rm(tmp, { force: true })
    } else {
      const e = this.entries.get(hex)
      if (e?.partial !== undefined) {
        // A fetch of the same artifact is under way: let it finish from its own chunks.
        await rm(tmp, { force: true })
      } else {
        await writeFileAtomic(this.path('m', m.digest), m.bytes)
        await chmod(tmp, 0o644)
        await rename(tmp, this.path('b', m.digest))
        await rm(this.partPath(m.digest, 'part'), { force: true })
        await rm(this.partPath(m.digest, 'have'), { force: true })
        await this.syncDir(join(this.dir, 'b'))
        this.entries.set(hex, { manifest: m, state: 'complete', count: m.chunks.length })
        this.safeDispatchEvent('complete', { detail: { digest: m.digest } })
      }
    }
    if (opts.name !== undefined) {
      this.meta.names[m.digest] = opts.name
      await this.saveMeta()
    }
    return m
  }

  /**
   * The directory a complete tar artifact unpacks to (unpacked once, beside, then renamed in).
   * Only files, directories and symbolic links are unpacked; setuid, setgid and sticky bits are
   * dropped, owners are not kept, and the tree is bounded in entries and bytes.
   */
  async unpacked(d: ArtifactDigest): Promise<string> {
    const blob = this.blobPath(d)
    const m = this.manifest(d)
    if (blob === undefined || m === undefined) {
      throw new ArtifactNotHeldError(`artifact ${d} is not complete on this daemon`)
    }
    const dir = this.path('u', d)
    if ((await stat(dir).catch(() => undefined))?.isDirectory() === true) return dir
    // First pass: count, so a tar bomb is refused before anything is written.
    let entries = 0
    let bytes = 0
    const bound = Math.max(m.size * MAX_UNPACK_RATIO, 1024 * 1024)
    try {
      await listTar({
        file: blob,
        strict: true,
        onReadEntry: entry => {
          entries++
          bytes += entry.size ?? 0
        }
      })
    } catch (err) {
      throw new UnpackError(`artifact ${d} is not a tar archive: ${(err as Error).message}`)
    }
    if (entries > MAX_TAR_ENTRIES || bytes > bound) {
      throw new UnpackError(
        `artifact ${d} unpacks to ${entries} entries and ${bytes} bytes; at most ${MAX_TAR_ENTRIES} entries and ${bound} bytes (${MAX_UNPACK_RATIO}× its size) are unpacked`
      )
    }
    const tmp = join(this.dir, 'tmp', `unpack-${randomBytes(8).toString('hex')}`)
    await mkdir(tmp, { mode: 0o755 })
    const skipped: string[] = []
    try {
      await extract({
        file: blob,
        cwd: tmp,
        strict: true,
        preserveOwner: false,
        filter: (path, entry) => {
          const type = 'type' in entry ? entry.type : 'File'
          if (type !== 'File' && type !== 'Directory' && type !== 'SymbolicLink') {
            if (skipped.length < 10) skipped.push(`${path} (${type})`)
            return false
          }
          if ('mode' in entry && typeof entry.mode === 'number') entry.mode &= 0o777
          return true
        }
      })
    } catch (err) {
      await rm(tmp, { recursive: true, force: true })
      throw new UnpackError(`artifact ${d} could not be unpacked: ${(err as Error).message}`)
    }
    if (skipped.length > 0) log('unpacking %s skipped %o', d, skipped)
    try {
      await rename(tmp, dir)
    } catch (err) {
      await rm(tmp, { recursive: true, force: true })
      // Another pass unpacked it meanwhile.
      if ((await stat(dir).catch(() => undefined))?.isDirectory() !== true) throw err
    }
    return dir
  }

  // ---- names, pins, garbage collection ----

  /** Keep `d` whatever the config says until `unpin(d, owner)` (e.g. a rollout's last-known-good). */
  async pin(d: ArtifactDigest, owner: string): Promise<void> {
    const list = new Set(this.meta.pins[d] ?? [])
    if (list.has(owner)) return
    list.add(owner)
    this.meta.pins[d] = [...list]
    await this.saveMeta()
  }

  async unpin(d: ArtifactDigest, owner: string): Promise<void> {
    const list = (this.meta.pins[d] ?? []).filter(o => o !== owner)
    if (list.length === 0) delete this.meta.pins[d]
    else this.meta.pins[d] = list
    await this.saveMeta()
  }

  isPinned(d: ArtifactDigest): boolean {
    return (this.meta.pins[d]?.length ?? 0) > 0
  }

  /** Record that `digests` are wanted now (referenced, applied or kept for rollback). */
  async markWanted(digests: Iterable<ArtifactDigest>, now = Date.now()): Promise<void> {
    let changed = false
    for (const d of digests) {
      // Written at most once a minute per artifact: GC grace periods are hours.
      if ((this.meta.lastWanted[d] ?? 0) < now - 60_000) {
        this.meta.lastWanted[d] = now
        changed = true
      }
    }
    if (changed) await this.saveMeta()
  }

  /** Bytes on disk: complete artifacts plus what partial ones hold (unpacked trees not counted). */
  usedBytes(): number {
    let n = 0
    for (const hex of this.entries.keys()) {
      n += this.info(`sha256:${hex}` as ArtifactDigest)?.held ?? 0
    }
    return n
  }

  /**
   * Delete artifacts nobody wants: not in `keep`, not pinned, and unwanted for longer than
   * `graceMs` — or, while the store is over `budgetBytes`, any such artifact, least recently
   * wanted first. Returns the digests removed.
   */
  async gc(
    keep: Set<string>,
    opts: { graceMs: number; budgetBytes: number; now?: number }
  ): Promise<ArtifactDigest[]> {
    const now = opts.now ?? Date.now()
    const candidates = this.list()
      .filter(a => !keep.has(a.digest) && a.pinnedBy.length === 0)
      .sort((a, b) => (a.lastWantedAt ?? 0) - (b.lastWantedAt ?? 0))
    let used = this.usedBytes()
    const removed: ArtifactDigest[] = []
    for (const a of candidates) {
      const expired = now - (a.lastWantedAt ?? 0) > opts.graceMs
      if (!expired && used <= opts.budgetBytes) continue
      await this.remove(a.digest)
      used -= a.held
      removed.push(a.digest)
    }
    return removed
  }

  private async remove(d: ArtifactDigest): Promise<void> {
    const e = this.entries.get(digestHex(d))
    if (e?.partial !== undefined) {
      await e.partial.data.close().catch(() => {})
      await e.partial.have.close().catch(() => {})
    }
    this.entries.delete(digestHex(d))
    // After the entry is gone, so no read can open it again.
    this.closeReader(digestHex(d))
    await rm(this.path('u', d), { recursive: true, force: true })
    await rm(this.path('b', d), { force: true })
    await rm(this.partPath(d, 'part'), { force: true })
    await rm(this.partPath(d, 'have'), { force: true })
    await rm(this.path('m', d), { force: true })
    delete this.meta.names[d]
    delete this.meta.lastWanted[d]
    await this.saveMeta()
    log('artifact %s removed', d)
  }

  async close(): Promise<void> {
    for (const hex of [...this.readers.keys()]) this.closeReader(hex)
    for (const e of this.entries.values()) {
      const p = e.partial
      if (p === undefined) continue
      await p.flushing?.catch(() => {})
      await p.data.close().catch(() => {})
      await p.have.close().catch(() => {})
      e.bits = p.bits
      e.count = p.count
      e.partial = undefined
    }
    await this.metaWrite
  }

  // ---- files ----

  private saveMeta(): Promise<void> {
    const text = JSON.stringify(this.meta)
    this.metaWrite = this.metaWrite
      .then(() => writeFileAtomic(join(this.dir, 'meta.json'), Buffer.from(text)))
      .catch(err => log.error('cannot save artifact metadata: %e', err))
    return this.metaWrite
  }

  private async syncDir(dir: string): Promise<void> {
    const fh = await open(dir, 'r')
    try {
      await fh.sync()
    } catch {
      // Some filesystems refuse fsync on a directory; the rename is still atomic.
    } finally {
      await fh.close()
    }
  }
}

/** Write a small file so that a reader (or a crash) sees the old content or the new, never half. */
export async function writeFileAtomic(file: string, bytes: Uint8Array): Promise<void> {
  const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`
  const fh = await open(tmp, 'w', 0o600)
  try {
    await fh.write(bytes)
    await fh.datasync()
  } finally {
    await fh.close()
  }
  await rename(tmp, file)
}

/**
 * The manifest of a stream of bytes: cut into `chunkSize` chunks and hashed as it streams, each
 * piece handed to `onPiece` (to be written) before the next is read.
 */
export async function manifestOf(
  source: AsyncIterable<Uint8Array>,
  opts: { chunkSize: number; maxBytes: number; onPiece?: (piece: Uint8Array) => Promise<unknown> }
): Promise<Manifest> {
  const { chunkSize, maxBytes } = opts
  const whole = createHash('sha256')
  const chunks: Uint8Array[] = []
  let cur = createHash('sha256')
  let inChunk = 0
  let size = 0
  for await (const piece of source) {
    size += piece.length
    if (size > maxBytes) {
      throw new ArtifactTooLargeError(`the artifact is over the ${maxBytes}-byte bound`)
    }
    whole.update(piece)
    let off = 0
    while (off < piece.length) {
      const take = Math.min(chunkSize - inChunk, piece.length - off)
      cur.update(piece.subarray(off, off + take))
      inChunk += take
      off += take
      if (inChunk === chunkSize) {
        chunks.push(new Uint8Array(cur.digest()))
        cur = createHash('sha256')
        inChunk = 0
      }
    }
    await opts.onPiece?.(piece)
  }
  if (inChunk > 0) chunks.push(new Uint8Array(cur.digest()))
  return encodeManifest({ size, chunkSize, fileSha256: new Uint8Array(whole.digest()), chunks })
}

/** Read once from `file` at `at`, opening and closing it. */
async function readOnce(file: string, buf: Buffer, at: number): Promise<number> {
  const fh = await open(file, 'r')
  try {
    return (await fh.read(buf, 0, buf.length, at)).bytesRead
  } finally {
    await fh.close()
  }
}
