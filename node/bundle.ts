/**
 * Offline bundles: signed changes and trust statements in one file, carried to a site with no
 * network (`rhizome bundle export` / `import`). Nothing in a bundle is trusted: every batch is
 * verified on import exactly as if a peer had sent it.
 *
 * Wire format (version 1):
 *   "RHZB" ‖ u8 version=1 ‖ varint n ‖ n × bytes(trust statement JSON)
 *                         ‖ varint m ‖ m × bytes(encoded SignedBatch, see crdt/signed-change.ts)
 * where bytes(x) = varint length ‖ x.
 */
import { ByteReader, ByteWriter, utf8 } from '../crdt/bytes.ts'
import { InvalidBundleError } from './errors.ts'

export const BUNDLE_VERSION = 1
export const MAX_BUNDLE_BYTES = 256 * 1024 * 1024
export const MAX_BUNDLE_TRUST = 1024
export const MAX_BUNDLE_BATCHES = 1024
const MAGIC = utf8('RHZB')

export interface Bundle {
  trust: Uint8Array[]
  batches: Uint8Array[]
}

export function encodeBundle(b: Bundle): Uint8Array {
  const w = new ByteWriter().raw(MAGIC).u8(BUNDLE_VERSION).varint(b.trust.length)
  for (const t of b.trust) w.bytes(t)
  w.varint(b.batches.length)
  for (const x of b.batches) w.bytes(x)
  return w.finish()
}

export function decodeBundle(bytes: Uint8Array): Bundle {
  if (bytes.length > MAX_BUNDLE_BYTES) {
    throw new InvalidBundleError(
      `the bundle is ${bytes.length} bytes; at most ${MAX_BUNDLE_BYTES} are accepted`
    )
  }
  if (bytes.length < 5 || MAGIC.some((c, i) => bytes[i] !== c)) {
    throw new InvalidBundleError(
      'not a Rhizome bundle (it does not start with "RHZB"); was it made by `rhizome bundle export`?'
    )
  }
  try {
    const r = new ByteReader(bytes, 'bundle')
    r.raw(4)
    const v = r.u8()
    if (v !== BUNDLE_VERSION) {
      throw new InvalidBundleError(
        `bundle version ${v} is not supported (this rhizome reads version ${BUNDLE_VERSION}); upgrade rhizome`
      )
    }
    const trust: Uint8Array[] = []
    const nt = r.varint(MAX_BUNDLE_TRUST)
    for (let i = 0; i < nt; i++) trust.push(r.bytes(MAX_BUNDLE_BYTES))
    const batches: Uint8Array[] = []
    const nb = r.varint(MAX_BUNDLE_BATCHES)
    for (let i = 0; i < nb; i++) batches.push(r.bytes(MAX_BUNDLE_BYTES))
    r.end()
    return { trust, batches }
  } catch (err) {
    if ((err as Error).name === 'InvalidBundleError') throw err
    throw new InvalidBundleError(`the bundle is damaged: ${(err as Error).message}`)
  }
}
