/**
 * Artifacts in offline bundles (node/bundle.ts, sections 3 and 4): `rhizome bundle export
 * --with-artifacts` writes each artifact the desired config names as its manifest and then its
 * chunks, read from the daemon one chunk at a time; `rhizome bundle import` streams each one back
 * into a store, every chunk checked against its manifest as it passes. Nothing is held whole in
 * memory, and nothing in a bundle is trusted: a chunk that does not match its manifest makes the
 * bundle damaged, and only the signed config decides whether an artifact is ever used.
 */
import { InvalidBundleError } from '../errors.ts'
import { SectionKind, type BundleEncoder, type BundleSection } from '../bundle.ts'
import {
  chunkMatches,
  decodeManifest,
  isDigest,
  type ArtifactDigest,
  type Manifest
} from './manifest.ts'
import { MAX_CHUNK_SIZE } from './limits.ts'

/** Every artifact digest a set of config documents names (`artifact:` keys, anywhere), in order. */
export function artifactsInDocs(values: unknown[]): ArtifactDigest[] {
  const out = new Set<ArtifactDigest>()
  const walk = (v: unknown, depth: number): void => {
    if (depth > 64 || typeof v !== 'object' || v === null) return
    if (Array.isArray(v)) {
      for (const x of v) walk(x, depth + 1)
      return
    }
    for (const [k, x] of Object.entries(v)) {
      if (k === 'artifact' && isDigest(x)) out.add(x)
      else walk(x, depth + 1)
    }
  }
  for (const v of values) walk(v, 0)
  return [...out]
}

/** Where an export reads artifacts from (the daemon's HTTP API). */
export interface ArtifactReader {
  manifest(d: ArtifactDigest): Promise<Uint8Array>
  chunk(d: ArtifactDigest, index: number): Promise<Uint8Array>
}

/** Write each artifact's sections: its manifest, then every chunk in order. Returns bytes written. */
export async function writeArtifactSections(
  digests: ArtifactDigest[],
  reader: ArtifactReader,
  enc: BundleEncoder,
  write: (bytes: Uint8Array) => Promise<void>
): Promise<number> {
  let total = 0
  for (const d of digests) {
    const bytes = await reader.manifest(d)
    const m = decodeManifest(bytes, d)
    await write(enc.manifest(bytes))
    for (let i = 0; i < m.chunks.length; i++) {
      const c = await reader.chunk(d, i)
      if (!chunkMatches(m, i, c)) {
        throw new InvalidBundleError(
          `the daemon's chunk ${i} of ${d} does not match its manifest; nothing was written`
        )
      }
      await write(enc.chunk(i, c))
      total += c.length
    }
  }
  return total
}

/**
 * Hand each artifact in a bundle to `store` as its manifest and a stream of its checked chunks.
 * `sections` must be a bundle already checked whole (its checksum), read a second time.
 * `store` must read the stream to its end.
 */
export async function readArtifactSections(
  sections: AsyncIterable<BundleSection>,
  store: (m: Manifest, chunks: AsyncIterable<Uint8Array>) => Promise<void>
): Promise<Manifest[]> {
  const it = sections[Symbol.asyncIterator]()
  const done: Manifest[] = []
  let next = await it.next()
  while (next.done !== true) {
    const s = next.value
    if (s.kind === SectionKind.Chunk) {
      throw new InvalidBundleError('the bundle holds an artifact chunk with no manifest before it')
    }
    if (s.kind !== SectionKind.Manifest) {
      next = await it.next()
      continue
    }
    let m: Manifest
    try {
      m = decodeManifest(s.payload)
    } catch (err) {
      throw new InvalidBundleError(
        `the bundle holds a damaged artifact manifest: ${(err as Error).message}`
      )
    }
    let i = 0
    const chunks = async function* (): AsyncGenerator<Uint8Array> {
      for (; i < m.chunks.length; i++) {
        const c = await it.next()
        if (c.done === true || c.value.kind !== SectionKind.Chunk) {
          throw new InvalidBundleError(
            `artifact ${m.digest} is cut short in the bundle: ${i} of its ${m.chunks.length} chunks`
          )
        }
        const p = c.value.payload
        if (p.length < 4 || p.length > MAX_CHUNK_SIZE + 4) {
          throw new InvalidBundleError(`a chunk of ${m.digest} in the bundle has a bad length`)
        }
        const index = new DataView(p.buffer, p.byteOffset, 4).getUint32(0)
        const bytes = p.subarray(4)
        if (index !== i || !chunkMatches(m, i, bytes)) {
          throw new InvalidBundleError(
            `chunk ${i} of ${m.digest} in the bundle does not match its manifest; nothing of it was kept`
          )
        }
        yield bytes
      }
    }
    await store(m, chunks())
    if (i < m.chunks.length) throw new Error(`artifact ${m.digest} was not read to its end`)
    done.push(m)
    next = await it.next()
  }
  return done
}
