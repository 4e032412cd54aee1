/**
 * Framing shared by every Rhizome protocol.
 *
 * Wire format: a stream is a sequence of frames, each
 *
 *   varint  length   (unsigned LEB128, at most `maxFrameBytes`)
 *   bytes   payload  (length bytes)
 *
 * The length is checked before any of the payload is buffered. Long-lived streams are read with
 * `readFrames`, which pauses the stream while a frame is handled: yamux then stops granting the
 * peer send window, so a peer can make us hold one frame of `maxFrameBytes` plus one receive
 * window (`MAX_STREAM_WINDOW_BYTES`) per stream, however fast it sends.
 */
import { LengthPrefixedDecoder } from '@libp2p/utils'
import { ByteWriter } from '../crdt/bytes.ts'
import {
  ExchangeTimeoutError,
  FrameTooLargeError,
  MalformedMessageError,
  PeerGoneError
} from './errors.ts'
import type { Stream } from '@libp2p/interface'

export function encodeFrame(payload: Uint8Array): Uint8Array {
  return new ByteWriter().bytes(payload).finish()
}

/** A chunk as streams yield it: bytes, or a list of byte arrays (uint8arraylist). */
export type Chunk = Uint8Array | { subarray(): Uint8Array }

/** A decoded frame: its bytes as the pieces they arrived in (uint8arraylist), not yet joined. */
type FrameList = ReturnType<LengthPrefixedDecoder['decode']> extends Generator<infer T> ? T : never
type DecoderInput = Parameters<LengthPrefixedDecoder['decode']>[0]
/** How uint8arraylist marks its lists (across its versions): one is taken as is, not joined. */
const LIST = Symbol.for('@achingbrain/uint8arraylist')

/** Split a stream's bytes into frames; throws FrameTooLargeError for one over the cap. */
export async function* decodeFrames(
  source: AsyncIterable<Chunk>,
  maxFrameBytes: number
): AsyncGenerator<Uint8Array> {
  for await (const frame of frameLists(source, maxFrameBytes)) yield frame.subarray()
}

/**
 * The frames of a long-lived stream, with backpressure: the stream is paused from the moment a
 * chunk yields frames until the consumer asks for more after the last of them. (libp2p streams
 * deliver data to their async iterator as fast as it arrives, and yamux grants send window as
 * data arrives, not as it is read: without the pause a slow consumer buffers without bound.)
 */
export async function* readFrames(
  stream: Stream,
  maxFrameBytes: number
): AsyncGenerator<Uint8Array> {
  const decoder = frameDecoder(maxFrameBytes)
  for await (const chunk of stream) {
    const frames = decodeChunk(decoder, chunk, maxFrameBytes)
    if (frames.length === 0) continue
    if (stream.readStatus === 'readable') stream.pause()
    try {
      for (const frame of frames) yield frame.subarray()
    } finally {
      if (stream.readStatus === 'paused') stream.resume()
    }
  }
}

async function* frameLists(
  source: AsyncIterable<Chunk>,
  maxFrameBytes: number
): AsyncGenerator<FrameList> {
  const decoder = frameDecoder(maxFrameBytes)
  for await (const chunk of source) yield* decodeChunk(decoder, chunk, maxFrameBytes)
}

function frameDecoder(maxFrameBytes: number): LengthPrefixedDecoder {
  return new LengthPrefixedDecoder({
    maxDataLength: maxFrameBytes,
    maxBufferSize: maxFrameBytes + 1024 * 1024
  })
}

function decodeChunk(
  decoder: LengthPrefixedDecoder,
  chunk: Chunk,
  maxFrameBytes: number
): FrameList[] {
  try {
    // A list is appended as its pieces (no copy); a frame is joined only by its reader, if at all.
    const input = chunk instanceof Uint8Array || LIST in chunk ? chunk : chunk.subarray()
    return [...decoder.decode(input as DecoderInput)]
  } catch (err) {
    const name = (err as Error).name
    if (
      name === 'InvalidDataLengthError' ||
      name === 'InvalidDataLengthLengthError' ||
      name === 'InvalidMessageLengthError' ||
      name === 'InvalidParametersError'
    ) {
      throw new FrameTooLargeError(
        `a peer sent a frame over the ${maxFrameBytes}-byte limit (${(err as Error).message})`
      )
    }
    throw new MalformedMessageError(`a peer sent a malformed frame: ${(err as Error).message}`)
  }
}

/** Write one frame, waiting (at most `timeoutMs`) for the stream to drain if its buffer is full. */
export async function sendFrame(
  stream: Stream,
  payload: Uint8Array,
  timeoutMs: number
): Promise<number> {
  const frame = encodeFrame(payload)
  if (!stream.send(frame)) {
    try {
      await stream.onDrain({ signal: AbortSignal.timeout(timeoutMs) })
    } catch (err) {
      if ((err as Error).name === 'TimeoutError' || (err as Error).name === 'AbortError') {
        throw new ExchangeTimeoutError(`peer did not read our data within ${timeoutMs} ms`)
      }
      throw err
    }
  }
  return frame.length
}

/** Read exactly one frame from a stream, within `timeoutMs`. Used by request/response protocols. */
export async function readOneFrame(
  stream: Stream,
  maxFrameBytes: number,
  timeoutMs: number
): Promise<Uint8Array> {
  return (await readOneFrameList(stream, maxFrameBytes, timeoutMs)).subarray()
}

/**
 * `readOneFrame`, the frame as the pieces it arrived in (decrypted transport messages), not
 * copied into one buffer: a large reply (an artifact chunk) is hashed and written piece by piece.
 */
export async function readOneFramePieces(
  stream: Stream,
  maxFrameBytes: number,
  timeoutMs: number
): Promise<Uint8Array[]> {
  return [...(await readOneFrameList(stream, maxFrameBytes, timeoutMs))]
}

async function readOneFrameList(
  stream: Stream,
  maxFrameBytes: number,
  timeoutMs: number
): Promise<FrameList> {
  const it = frameLists(stream, maxFrameBytes)[Symbol.asyncIterator]()
  let timer: ReturnType<typeof setTimeout> | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(
      () => reject(new ExchangeTimeoutError(`no reply within ${timeoutMs} ms`)),
      timeoutMs
    )
  })
  try {
    const r = await Promise.race([it.next(), timeout])
    // Not the peer's fault: a connection that drops, or a peer that refuses, ends the stream.
    if (r.done === true) throw new PeerGoneError('the stream ended before a frame arrived')
    return r.value
  } finally {
    clearTimeout(timer)
  }
}
