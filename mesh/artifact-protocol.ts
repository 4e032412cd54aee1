/**
 * The artifact protocol, `/rhizome/artifact/1.0.0`: "which chunks of artifact D do you hold",
 * "send me D's manifest", "send me chunk i of D". One request per stream: the asker opens a
 * stream on a connection it already holds, sends one request frame, reads one reply, and the
 * stream ends. A peer's concurrent requests are therefore bounded by the protocol's inbound
 * stream limit per connection (`MAX_ARTIFACT_STREAMS`).
 *
 * Frames are those of frames.ts (varint length ‖ payload). Digests travel as their 32 raw bytes.
 *
 *   request  = u8 kind (1 have · 2 manifest · 3 chunk) ‖ 32 digest ‖ [varint index, kind 3 only]
 *   reply    = u8 status (0 ok · 1 not held) ‖ body (status 0 only):
 *     have     u8 form (1 all · 2 bitfield) ‖ [bytes(bitfield), form 2: bit i of byte i>>3, LSB first]
 *     manifest the encoded manifest (node/artifacts/manifest.ts), the rest of the frame
 *     chunk    the chunk's bytes, the rest of the frame
 *
 * Nothing in a reply is trusted: the asker checks a manifest against the digest and every chunk
 * against the manifest, and a peer whose reply does not decode or check out is banned.
 */
import { ByteReader, ByteWriter, fromHex, toHex } from '../crdt/bytes.ts'
import { MalformedMessageError } from './errors.ts'
import type { ArtifactHave } from './types.ts'

export const ARTIFACT_PROTOCOL = '/rhizome/artifact/1.0.0'

/** Concurrent artifact requests one peer may have open with us, per connection. */
export const MAX_ARTIFACT_STREAMS = 8
/** A request is a kind, a digest and an index. */
export const MAX_ARTIFACT_REQUEST_BYTES = 64
/** Largest reply: a 4 MiB chunk (the largest chunk a manifest may name) or a 2 MiB manifest, plus a header. */
export const MAX_ARTIFACT_REPLY_BYTES = 4 * 1024 * 1024 + 64
/** Chunks per artifact (a have bitfield is at most this many bits). */
const MAX_CHUNKS = 65_536

export type ArtifactRequest =
  | { kind: 'have'; digest: string }
  | { kind: 'manifest'; digest: string }
  | { kind: 'chunk'; digest: string; index: number }

const KINDS = { have: 1, manifest: 2, chunk: 3 } as const

function digestBytes(d: string): Uint8Array {
  if (!/^sha256:[0-9a-f]{64}$/.test(d)) throw new RangeError(`not an artifact digest: ${d}`)
  return fromHex(d.slice(7))
}

export function encodeArtifactRequest(r: ArtifactRequest): Uint8Array {
  const w = new ByteWriter().u8(KINDS[r.kind]).raw(digestBytes(r.digest))
  if (r.kind === 'chunk') w.varint(r.index)
  return w.finish()
}

export function decodeArtifactRequest(bytes: Uint8Array): ArtifactRequest {
  try {
    const r = new ByteReader(bytes, 'artifact request')
    const kind = r.u8()
    const digest = `sha256:${toHex(r.raw(32))}`
    let out: ArtifactRequest
    if (kind === KINDS.have) out = { kind: 'have', digest }
    else if (kind === KINDS.manifest) out = { kind: 'manifest', digest }
    else if (kind === KINDS.chunk) out = { kind: 'chunk', digest, index: r.varint(MAX_CHUNKS - 1) }
    else throw new MalformedMessageError(`artifact request of unknown kind ${kind}`)
    r.end()
    return out
  } catch (err) {
    if (err instanceof MalformedMessageError) throw err
    throw new MalformedMessageError(
      `a peer sent a malformed artifact request: ${(err as Error).message}`
    )
  }
}

/** The header of a reply that carries a body of raw bytes after it (manifest, chunk). */
export const REPLY_OK = Uint8Array.of(0)
export const REPLY_NOT_HELD = Uint8Array.of(1)

export function encodeHaveReply(h: ArtifactHave | undefined): Uint8Array {
  if (h === undefined) return REPLY_NOT_HELD
  if (h.all === true) return Uint8Array.of(0, 1)
  return new ByteWriter().u8(0).u8(2).bytes(h.bits).finish()
}

export function decodeHaveReply(bytes: Uint8Array): ArtifactHave | undefined {
  try {
    const r = new ByteReader(bytes, 'artifact have reply')
    if (r.u8() === 1) {
      r.end()
      return undefined
    }
    const form = r.u8()
    if (form === 1) {
      r.end()
      return { all: true }
    }
    if (form !== 2) throw new MalformedMessageError(`have reply of unknown form ${form}`)
    const bits = r.bytes(MAX_CHUNKS / 8)
    r.end()
    return { bits }
  } catch (err) {
    if (err instanceof MalformedMessageError) throw err
    throw new MalformedMessageError(`a peer sent a malformed have reply: ${(err as Error).message}`)
  }
}

/** The body of a manifest or chunk reply, or undefined for "not held". */
export function decodeBodyReply(bytes: Uint8Array, what: string): Uint8Array | undefined {
  if (bytes.length === 1 && bytes[0] === 1) return undefined
  if (bytes.length < 1 || bytes[0] !== 0) {
    throw new MalformedMessageError(`a peer sent a malformed ${what} reply`)
  }
  return bytes.subarray(1)
}
