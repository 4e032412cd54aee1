/**
 * Byte helpers shared by every codec in crdt/: hex, concatenation, equality, and a bounded
 * binary reader/writer (unsigned LEB128 varints and length-prefixed fields). Every read is
 * checked against the remaining input and a caller-supplied cap, so a decoder built on
 * `ByteReader` cannot be made to allocate more than its caps or read past its input.
 */
import { MalformedInputError, OversizedInputError, UnsupportedVersionError } from './errors.ts'

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'))

export function toHex(bytes: Uint8Array): string {
  let out = ''
  for (let i = 0; i < bytes.length; i++) out += HEX[bytes[i] as number]
  return out
}

export function fromHex(hex: string): Uint8Array {
  if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new MalformedInputError(
      `not a hex string: ${hex.slice(0, 20)}${hex.length > 20 ? '…' : ''}`
    )
  }
  const out = new Uint8Array(hex.length / 2)
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16)
  return out
}

export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  let len = 0
  for (const p of parts) len += p.length
  const out = new Uint8Array(len)
  let off = 0
  for (const p of parts) {
    out.set(p, off)
    off += p.length
  }
  return out
}

const utf8Encoder = new TextEncoder()
const utf8Decoder = new TextDecoder('utf-8', { fatal: true })

export function utf8(s: string): Uint8Array {
  return utf8Encoder.encode(s)
}

export class ByteWriter {
  private chunks: Uint8Array[] = []
  private scratch: number[] = []

  u8(n: number): this {
    this.scratch.push(n & 0xff)
    return this
  }

  varint(n: number): this {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`varint out of range: ${n}`)
    while (n >= 0x80) {
      this.scratch.push((n % 0x80) | 0x80)
      n = Math.floor(n / 0x80)
    }
    this.scratch.push(n)
    return this
  }

  raw(bytes: Uint8Array): this {
    this.flush()
    this.chunks.push(bytes)
    return this
  }

  bytes(bytes: Uint8Array): this {
    return this.varint(bytes.length).raw(bytes)
  }

  string(s: string): this {
    return this.bytes(utf8(s))
  }

  finish(): Uint8Array {
    this.flush()
    return concatBytes(...this.chunks)
  }

  private flush(): void {
    if (this.scratch.length > 0) {
      this.chunks.push(Uint8Array.from(this.scratch))
      this.scratch = []
    }
  }
}

/**
 * The start of a signed format's digest input: its domain string and the fleet id, each
 * NUL-terminated, so a signature made for one format or one fleet never verifies as another.
 */
export function fleetDigestInput(domain: string, fleetId: string): ByteWriter {
  return new ByteWriter().raw(utf8(domain)).u8(0).raw(utf8(fleetId)).u8(0)
}

export class ByteReader {
  private offset = 0
  private readonly what: string
  private readonly buf: Uint8Array

  constructor(buf: Uint8Array, what: string) {
    this.buf = buf
    this.what = what
  }

  /**
   * A reader after the version byte of one message of a versioned format (`what`, e.g. `beacon`):
   * a message over `maxBytes` is refused before anything is read, and one of another version
   * than `version` with the advice to upgrade (a newer peer may speak a newer version).
   */
  static versioned(buf: Uint8Array, what: string, maxBytes: number, version: number): ByteReader {
    if (buf.length > maxBytes) {
      throw new OversizedInputError(`${what} is at most ${maxBytes} bytes; got ${buf.length}`)
    }
    const r = new ByteReader(buf, what)
    const got = r.u8()
    if (got !== version) {
      throw new UnsupportedVersionError(
        `${what} version ${got} is not supported (this build reads ${version}); upgrade this node`
      )
    }
    return r
  }

  get remaining(): number {
    return this.buf.length - this.offset
  }

  u8(): number {
    if (this.remaining < 1) throw this.truncated()
    return this.buf[this.offset++] as number
  }

  /** Unsigned LEB128, at most `max` (and never beyond 2^53). */
  varint(max = Number.MAX_SAFE_INTEGER): number {
    let result = 0
    let scale = 1
    for (let i = 0; i < 8; i++) {
      const b = this.u8()
      result += (b & 0x7f) * scale
      if ((b & 0x80) === 0) {
        if (result > max) {
          throw new OversizedInputError(`${this.what}: value ${result} is over its bound of ${max}`)
        }
        return result
      }
      scale *= 0x80
    }
    throw new MalformedInputError(`${this.what}: varint longer than 8 bytes`)
  }

  raw(n: number): Uint8Array {
    if (this.remaining < n) throw this.truncated()
    const out = this.buf.subarray(this.offset, this.offset + n)
    this.offset += n
    return out
  }

  /** A length-prefixed byte field of at most `max` bytes. */
  bytes(max: number): Uint8Array {
    return this.raw(this.varint(max))
  }

  string(max: number): string {
    try {
      return utf8Decoder.decode(this.bytes(max))
    } catch (err) {
      if (err instanceof TypeError) throw new MalformedInputError(`${this.what}: invalid UTF-8`)
      throw err
    }
  }

  end(): void {
    if (this.remaining !== 0) {
      throw new MalformedInputError(`${this.what}: ${this.remaining} unexpected trailing bytes`)
    }
  }

  private truncated(): MalformedInputError {
    return new MalformedInputError(`${this.what}: truncated input (${this.buf.length} bytes)`)
  }
}

/**
 * Decode one whole message: `read` takes its fields from a reader over `bytes` (named `what` in
 * errors), then no byte may be left over. Whatever goes wrong is thrown as `fail(err)`, so each
 * protocol reports the error class its callers act on.
 */
export function readWhole<T>(
  bytes: Uint8Array,
  what: string,
  fail: (err: unknown) => Error,
  read: (r: ByteReader) => T
): T {
  try {
    const r = new ByteReader(bytes, what)
    const out = read(r)
    r.end()
    return out
  } catch (err) {
    throw fail(err)
  }
}
