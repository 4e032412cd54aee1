/**
 * The artifact protocol, `/rhizome/artifact/1.0.0`: "which chunks of artifact D do you hold",
 * "send me D's manifest", "send me chunk i of D", and the push "I now hold chunks i, j… of D"
 * (a fetcher announces what it completes to the peers fetching the same artifact, so they need
 * not wait for their next "which chunks" poll). One request per stream: the asker opens a
 * stream on a connection it already holds, sends one request frame, reads one reply, and the
 * stream ends. A peer's concurrent requests are therefore bounded by the protocol's inbound
 * stream limit per connection (`MAX_ARTIFACT_STREAMS`).
 *
 * Frames are those of frames.ts (varint length ‖ payload). Digests travel as their 32 raw bytes.
 *
 *   request  = u8 kind ‖ 32 digest ‖ rest
 *     kind 1 have · 2 manifest: no rest
 *     kind 3 chunk · 5 chunk-insist: varint index
 *     kind 4 announce: varint n (1…MAX_ANNOUNCE_ENTRIES) ‖ n × varint index
 *   reply    = u8 status (0 ok · 1 not held · 2 busy) ‖ body (status 0 only):
 *     have     u8 form (1 all · 2 bitfield) ‖ [bytes(bitfield), form 2: bit i of byte i>>3, LSB first]
 *     manifest the encoded manifest (node/artifacts/manifest.ts), the rest of the frame
 *     chunk    the chunk's bytes, the rest of the frame
 *     announce no body; status 1 means "ignored" (over the per-peer rate, or not fetching it)
 *
 * Busy (chunk only): super-seeding. A complete holder whose upload is saturated serves each chunk
 * once and answers "busy, ask elsewhere" for a chunk it has already sent to another peer that is
 * still connected; the asker takes it from that peer once announced. Kind 5 (chunk-insist) is
 * the asker's fall-back after waiting: it is never answered busy, so nothing stalls for good.
 *
 * Nothing in a reply is trusted: the asker checks a manifest against the digest and every chunk
 * against the manifest, and a peer whose reply does not decode or check out is banned.
 */
import { ByteReader, ByteWriter, fromHex, toHex } from '../crdt/bytes.ts'
import { MalformedMessageError } from './errors.ts'
import type { ArtifactHave } from './types.ts'

export const ARTIFACT_PROTOCOL = '/rhizome/artifact/1.0.0'
/**
 * Asking a holder for an artifact link (artifact-link.ts): one request frame (the byte 1), one reply,
 * `u8 status (0 offered · 1 not offered) ‖ [u16 port ‖ 16 identity ‖ 32 key]`. A daemon that does
 * not speak it (older, or with `artifactPort: off`) is asked over ARTIFACT_PROTOCOL streams only.
 */
export const ARTIFACT_LINK_PROTOCOL = '/rhizome/artifact-link/1.0.0'

/** Concurrent artifact requests one peer may have open with us, per connection. */
export const MAX_ARTIFACT_STREAMS = 8
/** Chunk indices in one announce message (a fetcher batches what it completed meanwhile). */
export const MAX_ANNOUNCE_ENTRIES = 64
/** A request is a kind, a digest and an index, or up to MAX_ANNOUNCE_ENTRIES indices (3 bytes each). */
export const MAX_ARTIFACT_REQUEST_BYTES = 40 + 3 * MAX_ANNOUNCE_ENTRIES
/** Largest reply: a 4 MiB chunk (the largest chunk a manifest may name) or a 2 MiB manifest, plus a header. */
export const MAX_ARTIFACT_REPLY_BYTES = 4 * 1024 * 1024 + 64
/**
 * Announce messages taken from one peer per second (a fetcher sends at most one per 100 ms per
 * peer); the rest are answered "ignored" unread. An announce costs at most MAX_ANNOUNCE_ENTRIES
 * bit sets, so a hostile peer's announcements cost bounded work, and no memory beyond the
 * bitfield the fetch already keeps for it.
 */
export const MAX_ANNOUNCES_PER_SECOND = 20
/**
 * Super-seeding: a complete holder with this many chunk replies queued or being sent counts as
 * saturated, and answers "busy" for chunks it already sent to a peer still connected.
 */
export const SUPERSEED_BUSY_SERVES = 4
/** Artifacts whose "which chunk went to whom" a holder remembers for super-seeding (oldest go first). */
export const MAX_SUPERSEED_ARTIFACTS = 4
/**
 * A reply body is handed on as the pieces it arrived in (transport messages, 64 KiB each from an
 * honest peer) and hashed and written piece by piece; one in more pieces than this (a peer
 * sending tiny messages) is joined first, so the calls per chunk stay bounded.
 */
export const MAX_REPLY_PIECES = 1024
/** An offer to open an artifact link: where, and the one-time identity and key of its handshake. */
export interface LinkOffer {
  port: number
  /** 16 random bytes, as hex: names the key in the handshake, valid once. */
  identity: string
  /** 32 random bytes: the TLS pre-shared key. */
  key: Uint8Array
}

export function encodeLinkOffer(o: LinkOffer | undefined): Uint8Array {
  if (o === undefined) return REPLY_NOT_HELD
  return new ByteWriter()
    .u8(0)
    .u8(o.port >> 8)
    .u8(o.port & 0xff)
    .raw(fromHex(o.identity))
    .raw(o.key)
    .finish()
}

export function decodeLinkOffer(bytes: Uint8Array): LinkOffer | undefined {
  try {
    const r = new ByteReader(bytes, 'artifact link offer')
    const status = r.u8()
    if (status === 1) {
      r.end()
      return undefined
    }
    if (status !== 0) throw new MalformedMessageError(`link offer of unknown status ${status}`)
    const port = (r.u8() << 8) | r.u8()
    const identity = toHex(r.raw(16))
    const key = r.raw(32)
    r.end()
    if (port === 0) throw new MalformedMessageError('an artifact link offer on port 0')
    return { port, identity, key }
  } catch (err) {
    if (err instanceof MalformedMessageError) throw err
    throw new MalformedMessageError(`a peer sent a malformed link offer: ${(err as Error).message}`)
  }
}

/** Chunks per artifact (a have bitfield is at most this many bits). */
const MAX_CHUNKS = 65_536

export type ArtifactRequest =
  | { kind: 'have'; digest: string }
  | { kind: 'manifest'; digest: string }
  | { kind: 'chunk'; digest: string; index: number; insist?: boolean }
  | { kind: 'announce'; digest: string; indices: number[] }

const KINDS = { have: 1, manifest: 2, chunk: 3, announce: 4, insist: 5 } as const

function digestBytes(d: string): Uint8Array {
  if (!/^sha256:[0-9a-f]{64}$/.test(d)) throw new RangeError(`not an artifact digest: ${d}`)
  return fromHex(d.slice(7))
}

export function encodeArtifactRequest(r: ArtifactRequest): Uint8Array {
  const kind = r.kind === 'chunk' && r.insist === true ? KINDS.insist : KINDS[r.kind]
  const w = new ByteWriter().u8(kind).raw(digestBytes(r.digest))
  if (r.kind === 'chunk') w.varint(r.index)
  if (r.kind === 'announce') {
    if (r.indices.length < 1 || r.indices.length > MAX_ANNOUNCE_ENTRIES) {
      throw new RangeError(`an announce carries 1 to ${MAX_ANNOUNCE_ENTRIES} chunk indices`)
    }
    w.varint(r.indices.length)
    for (const i of r.indices) w.varint(i)
  }
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
    else if (kind === KINDS.insist) {
      out = { kind: 'chunk', digest, index: r.varint(MAX_CHUNKS - 1), insist: true }
    } else if (kind === KINDS.announce) {
      const n = r.varint(MAX_ANNOUNCE_ENTRIES)
      if (n === 0) throw new MalformedMessageError('an announce of no chunks')
      const indices: number[] = []
      for (let k = 0; k < n; k++) indices.push(r.varint(MAX_CHUNKS - 1))
      out = { kind: 'announce', digest, indices }
    } else throw new MalformedMessageError(`artifact request of unknown kind ${kind}`)
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
export const REPLY_BUSY = Uint8Array.of(2)

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

/** `decodeBodyReply` for a reply read as the pieces it arrived in: the body's pieces, not joined. */
export function decodeBodyPieces(
  pieces: readonly Uint8Array[],
  what: string
): Uint8Array[] | 'busy' | undefined {
  const first = pieces.find(p => p.length > 0)
  const size = pieces.reduce((n, p) => n + p.length, 0)
  if (first === undefined) throw new MalformedMessageError(`a peer sent an empty ${what} reply`)
  if (size === 1 && first[0] === 1) return undefined
  if (size === 1 && first[0] === 2) return 'busy'
  if (first[0] !== 0) throw new MalformedMessageError(`a peer sent a malformed ${what} reply`)
  const body: Uint8Array[] = []
  let skip = 1
  for (const p of pieces) {
    const rest = p.subarray(Math.min(skip, p.length))
    skip -= p.length - rest.length
    if (rest.length > 0) body.push(rest)
  }
  if (body.length <= MAX_REPLY_PIECES) return body
  const joined = new Uint8Array(size - 1)
  let at = 0
  for (const b of body) {
    joined.set(b, at)
    at += b.length
  }
  return [joined]
}

/** The body of a manifest or chunk reply, undefined for "not held", 'busy' for busy. */
export function decodeBodyReply(bytes: Uint8Array): Uint8Array | 'busy' | undefined {
  if (bytes.length === 1 && bytes[0] === 1) return undefined
  if (bytes.length === 1 && bytes[0] === 2) return 'busy'
  if (bytes.length < 1 || bytes[0] !== 0) {
    throw new MalformedMessageError('a peer sent a malformed artifact reply')
  }
  return bytes.subarray(1)
}
