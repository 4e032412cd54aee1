/**
 * Artifact manifests: what an artifact is, by content. A file is cut into fixed-size chunks;
 * the manifest names its size, the chunk size, the sha-256 of the whole file (what `sha256sum`
 * prints) and the sha-256 of every chunk. The artifact's digest is the sha-256 of the encoded
 * manifest, written `sha256:<64 hex>`: the signed desired config names that digest, so signing
 * the config commits to every chunk, and a manifest or chunk from any peer is checked against
 * it with no further trust.
 *
 * Wire format (version 1), also the file format in the store:
 *
 *   "RHZA"  u8 version=1
 *   varint  size          file bytes, ≤ MAX_ARTIFACT_BYTES
 *   varint  chunkSize     MIN_CHUNK_SIZE..MAX_CHUNK_SIZE
 *   32      fileSha256
 *   n × 32  chunk sha-256, n = ceil(size / chunkSize) (0 for an empty file), in order
 *
 * Nothing else: a name is local metadata, so the same bytes added twice under two names are
 * one artifact.
 */
import { createHash } from 'node:crypto'
import { ByteReader, ByteWriter, toHex, utf8 } from '../../crdt/bytes.ts'
import type { ChunkBytes } from '../../mesh/types.ts'
import { InvalidDigestError, InvalidManifestError } from './errors.ts'
import {
  MAX_ARTIFACT_BYTES,
  MAX_CHUNK_SIZE,
  MAX_CHUNKS,
  MAX_MANIFEST_BYTES,
  MIN_CHUNK_SIZE
} from './limits.ts'

const MAGIC = utf8('RHZA')
export const MANIFEST_VERSION = 1

/** `sha256:` and 64 lower-case hex characters: the digest of a manifest. */
export type ArtifactDigest = string & { __brand: 'ArtifactDigest' }

export interface Manifest {
  digest: ArtifactDigest
  size: number
  chunkSize: number
  /** sha-256 of the whole file, hex. */
  fileSha256: string
  /** sha-256 of each chunk. */
  chunks: Uint8Array[]
  /** The encoded manifest (what the digest hashes). */
  bytes: Uint8Array
}

export function sha256(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(bytes).digest())
}

const DIGEST_RE = /^sha256:[0-9a-f]{64}$/

export function isDigest(v: unknown): v is ArtifactDigest {
  return typeof v === 'string' && DIGEST_RE.test(v)
}

/** Check a digest from a config, a command line or a peer. */
export function parseDigest(v: unknown, where = 'artifact'): ArtifactDigest {
  if (typeof v === 'string' && DIGEST_RE.test(v.toLowerCase())) {
    return v.toLowerCase() as ArtifactDigest
  }
  throw new InvalidDigestError(
    `${where}: ${JSON.stringify(v)} is not an artifact digest ("sha256:" and 64 hex characters, printed by \`rhizome artifact add\`)`
  )
}

/** The 64 hex characters of a digest (file names in the store). */
export function digestHex(d: ArtifactDigest): string {
  return d.slice(7)
}

export function chunkCount(size: number, chunkSize: number): number {
  return Math.ceil(size / chunkSize)
}

/** Bytes of chunk `i` (the last one may be short). */
export function chunkLength(m: Pick<Manifest, 'size' | 'chunkSize'>, i: number): number {
  return Math.min(m.chunkSize, m.size - i * m.chunkSize)
}

export function encodeManifest(m: {
  size: number
  chunkSize: number
  fileSha256: Uint8Array
  chunks: Uint8Array[]
}): Manifest {
  checkShape(m.size, m.chunkSize, m.chunks.length)
  const w = new ByteWriter()
    .raw(MAGIC)
    .u8(MANIFEST_VERSION)
    .varint(m.size)
    .varint(m.chunkSize)
    .raw(m.fileSha256)
  for (const c of m.chunks) w.raw(c)
  const bytes = w.finish()
  return {
    digest: `sha256:${toHex(sha256(bytes))}` as ArtifactDigest,
    size: m.size,
    chunkSize: m.chunkSize,
    fileSha256: toHex(m.fileSha256),
    chunks: m.chunks,
    bytes
  }
}

function checkShape(size: number, chunkSize: number, n: number): void {
  if (!Number.isSafeInteger(size) || size < 0 || size > MAX_ARTIFACT_BYTES) {
    throw new InvalidManifestError(
      `artifact size ${size} is over the ${MAX_ARTIFACT_BYTES}-byte bound`
    )
  }
  if (!Number.isInteger(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
    throw new InvalidManifestError(
      `chunk size ${chunkSize} is outside ${MIN_CHUNK_SIZE}..${MAX_CHUNK_SIZE} bytes`
    )
  }
  if (n !== chunkCount(size, chunkSize) || n > MAX_CHUNKS) {
    throw new InvalidManifestError(
      `a ${size}-byte artifact in ${chunkSize}-byte chunks has ${chunkCount(size, chunkSize)} chunks (at most ${MAX_CHUNKS}), not ${n}`
    )
  }
}

/**
 * Decode a manifest and check it hashes to `expected` (when given: always, for bytes from a peer
 * or a bundle). The digest check comes first, so a wrong manifest costs one hash, nothing more.
 */
export function decodeManifest(bytes: Uint8Array, expected?: ArtifactDigest): Manifest {
  if (bytes.length > MAX_MANIFEST_BYTES) {
    throw new InvalidManifestError(
      `a manifest of ${bytes.length} bytes is over the ${MAX_MANIFEST_BYTES}-byte bound`
    )
  }
  const digest = `sha256:${toHex(sha256(bytes))}` as ArtifactDigest
  if (expected !== undefined && digest !== expected) {
    throw new InvalidManifestError(`the manifest sent for ${expected} hashes to ${digest}`)
  }
  try {
    const r = new ByteReader(bytes, 'artifact manifest')
    const magic = r.raw(4)
    if (MAGIC.some((c, i) => magic[i] !== c)) {
      throw new InvalidManifestError('not an artifact manifest (no "RHZA")')
    }
    const v = r.u8()
    if (v !== MANIFEST_VERSION) {
      throw new InvalidManifestError(
        `artifact manifest version ${v} is not supported (this rhizome reads ${MANIFEST_VERSION}); upgrade rhizome`
      )
    }
    const size = r.varint(MAX_ARTIFACT_BYTES)
    const chunkSize = r.varint(MAX_CHUNK_SIZE)
    const fileSha = r.raw(32)
    const n = Math.floor(r.remaining / 32)
    checkShape(size, chunkSize, n)
    const chunks: Uint8Array[] = []
    for (let i = 0; i < n; i++) chunks.push(r.raw(32))
    r.end()
    return { digest, size, chunkSize, fileSha256: toHex(fileSha), chunks, bytes }
  } catch (err) {
    if (err instanceof InvalidManifestError) throw err
    throw new InvalidManifestError(
      `the manifest of ${digest} is damaged: ${(err as Error).message}`
    )
  }
}

/** Does `bytes` hash to chunk `i` of the manifest? */
export function chunkMatches(m: Manifest, i: number, bytes: ChunkBytes): boolean {
  const want = m.chunks[i]
  if (want === undefined || byteLength(bytes) !== chunkLength(m, i)) return false
  // Hashed piece by piece as it arrived: no joined copy of the chunk.
  const h = createHash('sha256')
  for (const p of bytes instanceof Uint8Array ? [bytes] : bytes) h.update(p)
  const got = h.digest()
  for (let k = 0; k < 32; k++) if (got[k] !== want[k]) return false
  return true
}

/** How many bytes a chunk holds, over all its pieces. */
export function byteLength(bytes: ChunkBytes): number {
  if (bytes instanceof Uint8Array) return bytes.length
  let n = 0
  for (const p of bytes) n += p.length
  return n
}
