/**
 * Offline bundles: signed changes and trust statements in one file, carried to a site with no
 * network (`rhizome bundle export` / `import`). Nothing in a bundle is trusted: every batch is
 * verified on import exactly as if a peer had sent it. What the bundle's own checksum adds is
 * that damage (a flipped bit on a USB stick, a truncated copy) is reported as damage before
 * anything is applied, rather than surfacing as a rejected batch — or not at all, when the
 * damaged batch's changes are already held and it is dropped unread as a duplicate.
 *
 * Wire format (version 2), written and read as a stream, one section at a time:
 *
 *   bundle  := "RHZB" ‖ u8 version=2 ‖ section* ‖ end
 *   section := u8 kind ‖ u32be length ‖ payload[length]        length ≤ MAX_SECTION_BYTES
 *   end     := u8 0 ‖ u32be 32 ‖ sha-256 of every byte before this end section
 *
 *   kind 1: a trust statement (its JSON, as `encodeTrustStatement` writes it)
 *   kind 2: a signed batch (crdt/signed-change.ts), one document's changes
 *   kind 3: an artifact manifest (node/artifacts/manifest.ts), written after the batches
 *   kind 4: a chunk of the artifact whose manifest came last: u32be index ‖ the chunk's bytes;
 *           every chunk of it, in order, before the next manifest (`rhizome bundle export
 *           --with-artifacts`)
 *   kind 5: equivocation evidence (crdt/equivocation.ts), written before the batches: it covers
 *           changes of a leaked key's session that the batches may carry
 *   kind 6: a freeze beacon (crdt/beacon.ts), at most one
 *
 * A writer hashes what it writes and appends `end`; a reader hashes what it reads and accepts
 * the sections only once `end` matches and nothing follows it. Import therefore reads the file
 * twice — once to check it whole, then again to apply it — and never holds more than one
 * section in memory. Readers reject a kind they do not know, naming it (a bundle from a newer
 * rhizome).
 *
 * Artifacts are bounded by bytes, not by the section counts below (which are for statements
 * and batches): at most MAX_BUNDLE_ARTIFACTS manifests, each chunk a section of its own.
 */
import { createHash, type Hash } from 'node:crypto'
import { encodeTrustStatement, type SignedTrustStatement } from '../crdt/trust.ts'
import { concatBytes, utf8 } from '../crdt/bytes.ts'
import { MAX_BATCH_BYTES } from '../crdt/signed-change.ts'
import { InvalidBundleError } from './errors.ts'

export const BUNDLE_VERSION = 2
/** A section holds one signed batch (or one trust statement, which is smaller). */
export const MAX_SECTION_BYTES = MAX_BATCH_BYTES
export const MAX_BUNDLE_TRUST = 1024
export const MAX_BUNDLE_BATCHES = 1024
export const MAX_BUNDLE_ARTIFACTS = 256
/** Equivocation evidence: one per leaked session per document, each at most MAX_EQUIVOCATION_BYTES. */
export const MAX_BUNDLE_EVIDENCE = 1024

export const SectionKind = {
  End: 0,
  Trust: 1,
  Batch: 2,
  Manifest: 3,
  Chunk: 4,
  Evidence: 5,
  Beacon: 6
} as const
export type SectionKind = (typeof SectionKind)[keyof typeof SectionKind]

const MAGIC = utf8('RHZB')
const HEADER_BYTES = MAGIC.length + 1
const SECTION_HEAD_BYTES = 5
const DIGEST_BYTES = 32

export interface Bundle {
  trust: Uint8Array[]
  batches: Uint8Array[]
  /** Equivocation evidence (absent: none). */
  evidence?: Uint8Array[]
  /** A freeze beacon (absent: none). */
  beacon?: Uint8Array
}

export interface BundleSection {
  kind: Exclude<SectionKind, typeof SectionKind.End>
  payload: Uint8Array
}

function sectionHead(kind: number, length: number): Uint8Array {
  const head = new Uint8Array(SECTION_HEAD_BYTES)
  head[0] = kind
  new DataView(head.buffer).setUint32(1, length)
  return head
}

/**
 * Encodes a bundle section by section, hashing as it goes: each call returns the bytes to write
 * next (the first also carries the header), `end()` the checksum that closes the bundle.
 *
 * @example
 * ```ts
 * const enc = new BundleEncoder()
 * out.write(enc.trust(statement))
 * out.write(enc.batch(encodedBatch))
 * out.write(enc.end())
 * ```
 */
export class BundleEncoder {
  private readonly hash: Hash = createHash('sha256')
  private started = false
  private ended = false

  private emit(...parts: Uint8Array[]): Uint8Array {
    if (this.ended) throw new Error('the bundle has already ended')
    if (!this.started) {
      this.started = true
      parts.unshift(MAGIC, Uint8Array.of(BUNDLE_VERSION))
    }
    const out = concatBytes(...parts)
    this.hash.update(out)
    return out
  }

  private section(kind: number, payload: Uint8Array): Uint8Array {
    if (payload.length > MAX_SECTION_BYTES) {
      throw new InvalidBundleError(
        `a bundle section is at most ${MAX_SECTION_BYTES} bytes; this one is ${payload.length}`
      )
    }
    return this.emit(sectionHead(kind, payload.length), payload)
  }

  trust(statement: SignedTrustStatement | Uint8Array): Uint8Array {
    return this.section(
      SectionKind.Trust,
      statement instanceof Uint8Array ? statement : encodeTrustStatement(statement)
    )
  }

  batch(encoded: Uint8Array): Uint8Array {
    return this.section(SectionKind.Batch, encoded)
  }

  /** An artifact's encoded manifest; its chunks follow, in order. */
  manifest(encoded: Uint8Array): Uint8Array {
    return this.section(SectionKind.Manifest, encoded)
  }

  /** Chunk `index` of the artifact whose manifest came last. */
  chunk(index: number, bytes: Uint8Array): Uint8Array {
    const head = new Uint8Array(4)
    new DataView(head.buffer).setUint32(0, index)
    return this.section(SectionKind.Chunk, concatBytes(head, bytes))
  }

  /** Equivocation evidence (crdt/equivocation.ts). */
  evidence(encoded: Uint8Array): Uint8Array {
    return this.section(SectionKind.Evidence, encoded)
  }

  /** A freeze beacon (crdt/beacon.ts). */
  beacon(encoded: Uint8Array): Uint8Array {
    return this.section(SectionKind.Beacon, encoded)
  }

  end(): Uint8Array {
    const header = this.emit()
    const digest = new Uint8Array(this.hash.digest())
    this.ended = true
    return concatBytes(header, sectionHead(SectionKind.End, DIGEST_BYTES), digest)
  }
}

/** A bundle in one piece (small bundles, tests). */
export function encodeBundle(b: Bundle): Uint8Array {
  const enc = new BundleEncoder()
  const parts = [
    ...b.trust.map(t => enc.trust(t)),
    ...(b.evidence ?? []).map(e => enc.evidence(e)),
    ...(b.beacon === undefined ? [] : [enc.beacon(b.beacon)]),
    ...b.batches.map(x => enc.batch(x))
  ]
  return concatBytes(...parts, enc.end())
}

/** Bytes arriving in pieces of any size, taken off the front as whole fields. */
class Pending {
  private parts: Uint8Array[] = []
  length = 0

  push(bytes: Uint8Array): void {
    if (bytes.length === 0) return
    this.parts.push(bytes)
    this.length += bytes.length
  }

  /** The first `n` bytes, left in place. */
  peek(n: number): Uint8Array {
    const first = this.parts[0]
    if (first !== undefined && first.length >= n) return first.subarray(0, n)
    const out = new Uint8Array(n)
    let off = 0
    for (const p of this.parts) {
      if (off >= n) break
      const k = Math.min(p.length, n - off)
      out.set(p.subarray(0, k), off)
      off += k
    }
    return out
  }

  take(n: number): Uint8Array {
    const first = this.parts[0]
    let out: Uint8Array
    if (first !== undefined && first.length >= n) {
      out = first.subarray(0, n)
      if (first.length === n) this.parts.shift()
      else this.parts[0] = first.subarray(n)
    } else {
      out = new Uint8Array(n)
      let off = 0
      while (off < n) {
        const p = this.parts[0] as Uint8Array
        const k = Math.min(p.length, n - off)
        out.set(p.subarray(0, k), off)
        off += k
        if (k === p.length) this.parts.shift()
        else this.parts[0] = p.subarray(k)
      }
    }
    this.length -= n
    return out
  }
}

const KNOWN_KINDS = new Set<number>([
  SectionKind.Trust,
  SectionKind.Batch,
  SectionKind.Manifest,
  SectionKind.Chunk,
  SectionKind.Evidence,
  SectionKind.Beacon
])
/** Count bounds per kind (chunks are bounded by their manifests' sizes instead). */
const SECTION_BOUNDS: Record<number, { max: number; what: string } | undefined> = {
  [SectionKind.Trust]: { max: MAX_BUNDLE_TRUST, what: 'trust statements' },
  [SectionKind.Batch]: { max: MAX_BUNDLE_BATCHES, what: 'batches' },
  [SectionKind.Manifest]: { max: MAX_BUNDLE_ARTIFACTS, what: 'artifacts' },
  [SectionKind.Evidence]: { max: MAX_BUNDLE_EVIDENCE, what: 'pieces of equivocation evidence' },
  [SectionKind.Beacon]: { max: 1, what: 'freeze beacons' }
}

const damaged = (what: string): InvalidBundleError =>
  new InvalidBundleError(
    `the bundle is damaged (${what}); nothing was imported. Copy it again, or export it again with \`rhizome bundle export\``
  )

/**
 * The sections of a bundle, read from `source` (a file stream, say) one at a time. Sections are
 * yielded as they are read, before the digest at the end is known: to act only on a bundle that
 * is whole, read it through once first (as `rhizome bundle import` does), then again to act. Throws `InvalidBundleError` for
 * anything that is not a whole, undamaged version-2 bundle.
 */
export async function* readBundle(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>
): AsyncGenerator<BundleSection> {
  const hash = createHash('sha256')
  const pending = new Pending()
  const counts: Record<number, number> = {}
  let header = false
  let ended = false
  for await (const chunk of source) {
    pending.push(chunk instanceof Uint8Array ? chunk : new Uint8Array(chunk))
    if (ended) {
      if (pending.length > 0) throw damaged('bytes follow its end')
      continue
    }
    if (!header) {
      if (pending.length < HEADER_BYTES) continue
      const head = pending.take(HEADER_BYTES)
      if (MAGIC.some((c, i) => head[i] !== c)) {
        throw new InvalidBundleError(
          'not a Rhizome bundle (it does not start with "RHZB"); was it made by `rhizome bundle export`?'
        )
      }
      const v = head[MAGIC.length] as number
      if (v === 1) {
        throw new InvalidBundleError(
          'this bundle was written by an older rhizome (format 1, without a checksum); export it again with this version'
        )
      }
      if (v !== BUNDLE_VERSION) {
        throw new InvalidBundleError(
          `bundle format ${v} is not supported (this rhizome reads format ${BUNDLE_VERSION}); upgrade rhizome`
        )
      }
      hash.update(head)
      header = true
    }
    while (!ended && pending.length >= SECTION_HEAD_BYTES) {
      const head = pending.peek(SECTION_HEAD_BYTES)
      const kind = head[0] as number
      const length = new DataView(head.buffer, head.byteOffset, SECTION_HEAD_BYTES).getUint32(1)
      if (kind === SectionKind.End) {
        if (length !== DIGEST_BYTES) throw damaged('its end section has the wrong length')
      } else if (!KNOWN_KINDS.has(kind)) {
        throw new InvalidBundleError(
          `the bundle holds a section of kind ${kind}, which this rhizome does not know (written by a newer version?); upgrade rhizome, or the bundle is damaged`
        )
      } else if (length > MAX_SECTION_BYTES) {
        throw damaged(`a section claims ${length} bytes, over the bound of ${MAX_SECTION_BYTES}`)
      }
      if (pending.length < SECTION_HEAD_BYTES + length) break
      pending.take(SECTION_HEAD_BYTES)
      const payload = pending.take(length)
      if (kind === SectionKind.End) {
        if (!hash.digest().equals(payload)) throw damaged('its checksum does not match its content')
        ended = true
        if (pending.length > 0) throw damaged('bytes follow its end')
        break
      }
      const bound = SECTION_BOUNDS[kind]
      counts[kind] = (counts[kind] ?? 0) + 1
      if (bound !== undefined && (counts[kind] ?? 0) > bound.max) {
        throw new InvalidBundleError(`the bundle holds more than ${bound.max} ${bound.what}`)
      }
      hash.update(head)
      hash.update(payload)
      yield { kind: kind as BundleSection['kind'], payload }
    }
  }
  if (!header) throw damaged('it is shorter than its header')
  if (!ended) throw damaged('it ends before its checksum: truncated?')
}

/** A bundle in one piece, checked whole (small bundles, tests, the fuzzer). */
export async function decodeBundle(bytes: Uint8Array): Promise<Bundle> {
  const out: Bundle = { trust: [], batches: [] }
  const sections: BundleSection[] = []
  for await (const s of readBundle([bytes])) sections.push(s)
  for (const s of sections) {
    if (s.kind === SectionKind.Trust) out.trust.push(s.payload)
    else if (s.kind === SectionKind.Batch) out.batches.push(s.payload)
    else if (s.kind === SectionKind.Evidence) (out.evidence ??= []).push(s.payload)
    else if (s.kind === SectionKind.Beacon) out.beacon = s.payload
  }
  return out
}
