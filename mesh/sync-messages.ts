/**
 * Messages of the sync protocol `/rhizome/sync/1.0.0`. One long-lived stream per peer carries
 * every document's sync, the trust chain and status gossip; each message is one frame
 * (`frames.ts`). All integers unsigned LEB128; `string` and `bytes` are length-prefixed.
 *
 *   u8 type, then by type:
 *   1 HELLO   varint protocol version (1) ‖ string fleet id ‖ varint trust version ‖
 *             varint n ‖ n × string document id
 *   2 TRUST   bytes trust statement (crdt/trust.ts encodeTrustStatement: canonical JSON)
 *   3 SYNC    string document id ‖ bytes Automerge sync message with its changes removed ‖
 *             bytes signed batch (crdt/signed-change.ts encodeBatch) or empty
 *   4 STATUS  bytes status record (status-record.ts)
 *   5 PUSH    string document id ‖ bytes signed batch: changes the sender just made or accepted,
 *             relayed as they are, without a sync round (see sync-stream.ts)
 *   6 EVIDENCE bytes equivocation evidence (crdt/equivocation.ts): a key caught using one
 *             sequence number twice; sent after the trust statements, before any document
 *   7 BEACON  bytes freeze beacon (crdt/beacon.ts): the newest one held, on greeting and when a
 *             newer one arrives
 *
 * The Automerge sync message inside SYNC is checked before Automerge sees it (`checkSyncMessage`):
 * it must decode, carry no changes, and each Bloom filter in it must be what Automerge itself
 * writes (num entries ‖ bits per entry ‖ probes ‖ ⌈entries × bits / 8⌉ bytes of bits, with at
 * most MAX_BLOOM_BITS_PER_ENTRY bits and MAX_BLOOM_PROBES probes): a filter with zero bits
 * panicked Automerge's wasm module (found by the fuzzer), and one with a billion probes would
 * spin for as long.
 *
 * Why one stream per peer and not one per document: a fleet has a handful to hundreds of
 * documents, and a stream per document would multiply yamux streams, handshakes and per-stream
 * limits by that number; message order on one stream also gives a useful guarantee, that a trust
 * statement reaches the peer before changes signed by keys it introduces.
 */
import * as Automerge from '@automerge/automerge'
import { ByteReader, ByteWriter, readWhole } from '../crdt/bytes.ts'
import { MAX_BATCH_BYTES } from '../crdt/signed-change.ts'
import { MAX_TRUST_STATEMENT_BYTES } from '../crdt/trust.ts'
import { MAX_EQUIVOCATION_BYTES } from '../crdt/equivocation.ts'
import { MAX_BEACON_BYTES } from '../crdt/beacon.ts'
import { MalformedMessageError } from './errors.ts'
import { MAX_DOCS_PER_HELLO, MAX_PUSH_BYTES } from './limits.ts'
import { MAX_STATUS_BYTES } from './types.ts'

export const SYNC_PROTOCOL = '/rhizome/sync/1.0.0'
export const SYNC_WIRE_VERSION = 1
/** An Automerge sync message without changes holds heads, needs and Bloom filters: small. */
export const MAX_SYNC_MESSAGE_BYTES = 4 * 1024 * 1024
const MAX_ID = 256
/** Automerge writes 10 bits per entry and 7 probes; a little room above that, no more. */
export const MAX_BLOOM_BITS_PER_ENTRY = 32
export const MAX_BLOOM_PROBES = 32

export type SyncWireMessage =
  | { type: 'hello'; fleetId: string; trustVersion: number; docIds: string[] }
  | { type: 'trust'; statement: Uint8Array }
  | { type: 'sync'; docId: string; message: Uint8Array; batch: Uint8Array }
  | { type: 'status'; record: Uint8Array }
  | { type: 'push'; docId: string; batch: Uint8Array }
  | { type: 'evidence'; evidence: Uint8Array }
  | { type: 'beacon'; beacon: Uint8Array }

const TYPE = { hello: 1, trust: 2, sync: 3, status: 4, push: 5, evidence: 6, beacon: 7 } as const

export function encodeSyncWire(m: SyncWireMessage): Uint8Array {
  const w = new ByteWriter().u8(TYPE[m.type])
  switch (m.type) {
    case 'hello':
      w.varint(SYNC_WIRE_VERSION).string(m.fleetId).varint(m.trustVersion).varint(m.docIds.length)
      for (const id of m.docIds) w.string(id)
      break
    case 'trust':
      w.bytes(m.statement)
      break
    case 'sync':
      w.string(m.docId).bytes(m.message).bytes(m.batch)
      break
    case 'status':
      w.bytes(m.record)
      break
    case 'push':
      w.string(m.docId).bytes(m.batch)
      break
    case 'evidence':
      w.bytes(m.evidence)
      break
    case 'beacon':
      w.bytes(m.beacon)
      break
  }
  return w.finish()
}

export function decodeSyncWire(bytes: Uint8Array): SyncWireMessage {
  return readWhole<SyncWireMessage>(bytes, 'sync protocol message', malformedSyncWire, r => {
    const type = r.u8()
    switch (type) {
      case TYPE.hello: {
        const version = r.varint()
        if (version !== SYNC_WIRE_VERSION) {
          throw new MalformedMessageError(
            `sync protocol version ${version} is not supported (this node speaks ${SYNC_WIRE_VERSION})`
          )
        }
        const fleetId = r.string(MAX_ID)
        const trustVersion = r.varint(1 << 30)
        const n = r.varint(MAX_DOCS_PER_HELLO)
        const docIds: string[] = []
        for (let i = 0; i < n; i++) docIds.push(r.string(MAX_ID))
        return { type: 'hello', fleetId, trustVersion, docIds }
      }
      case TYPE.trust:
        return { type: 'trust', statement: r.bytes(MAX_TRUST_STATEMENT_BYTES) }
      case TYPE.sync:
        return {
          type: 'sync',
          docId: r.string(MAX_ID),
          message: r.bytes(MAX_SYNC_MESSAGE_BYTES),
          batch: r.bytes(MAX_BATCH_BYTES)
        }
      case TYPE.status:
        return { type: 'status', record: r.bytes(MAX_STATUS_BYTES + 1024) }
      case TYPE.push:
        return { type: 'push', docId: r.string(MAX_ID), batch: r.bytes(MAX_PUSH_BYTES) }
      case TYPE.evidence:
        return { type: 'evidence', evidence: r.bytes(MAX_EQUIVOCATION_BYTES) }
      case TYPE.beacon:
        return { type: 'beacon', beacon: r.bytes(MAX_BEACON_BYTES) }
      default:
        throw new MalformedMessageError(`unknown sync protocol message type ${type}`)
    }
  })
}

function malformedSyncWire(err: unknown): MalformedMessageError {
  if (err instanceof MalformedMessageError) return err
  return new MalformedMessageError(
    `a peer sent a malformed sync protocol message: ${(err as Error).message}`
  )
}

/**
 * Check an Automerge sync message from a peer before Automerge reads it: it decodes, and its
 * Bloom filters are well-formed and bounded (see the header). Throws MalformedMessageError.
 * Whether it carries changes is the caller's to judge (a held document refuses them itself).
 */
export function checkSyncMessage(message: Uint8Array): Automerge.DecodedSyncMessage {
  let decoded: Automerge.DecodedSyncMessage
  try {
    decoded = Automerge.decodeSyncMessage(message)
  } catch (err) {
    throw new MalformedMessageError(
      `a peer sent a sync message Automerge cannot decode: ${(err as Error).message}`
    )
  }
  for (const have of decoded.have) checkBloom(have.bloom)
  return decoded
}

function checkBloom(bloom: Uint8Array): void {
  if (bloom.length === 0) return
  try {
    const r = new ByteReader(bloom, 'Bloom filter')
    const entries = r.varint(1 << 24)
    const bitsPerEntry = r.varint(MAX_BLOOM_BITS_PER_ENTRY)
    const probes = r.varint(MAX_BLOOM_PROBES)
    const bytes = Math.ceil((entries * bitsPerEntry) / 8)
    if (entries > 0 && (bitsPerEntry === 0 || probes === 0)) {
      throw new MalformedMessageError('a Bloom filter with entries has no bits or no probes')
    }
    r.raw(bytes)
    r.end()
  } catch (err) {
    if (err instanceof MalformedMessageError) throw err
    throw new MalformedMessageError(
      `a peer sent a malformed Bloom filter: ${(err as Error).message}`
    )
  }
}
