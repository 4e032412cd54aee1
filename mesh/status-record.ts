/**
 * Status records: a signed last-writer-wins register per node. Not an Automerge document: status
 * changes often and must not accumulate history; only the newest record per node is kept.
 *
 * Wire format (version 1), integers unsigned LEB128:
 *
 *   u8     version = 1
 *   32 B   node ed25519 public key
 *   varint seq      (strictly increasing per node: its clock in ms at publication)
 *   bytes  body     (UTF-8 JSON object, at most MAX_STATUS_BYTES)
 *   64 B   Ed25519 signature by the node key over
 *          sha-256( "rhizome/status/v1" 0x00 ‖ fleet id (UTF-8) 0x00 ‖ key ‖ varint seq ‖ body )
 *
 * Domain separation (label + fleet id) means a status signature can never pass as a change or
 * session signature, nor as a status of another fleet.
 *
 * The body is the daemon's (crdt/fleet-status.ts), plus one field the mesh adds as it signs:
 * `"meshAddrs": [multiaddr, …]`, where the node can be dialled (at most MAX_ADVERTISED_ADDRS, no
 * /p2p suffix). Peers learn each other's addresses from it, signed by the node itself; it is taken
 * out of the body again before anyone else sees the record (`StatusRecord.addresses`).
 */
import { sha256 } from '@noble/hashes/sha2.js'
import { ByteReader, ByteWriter, fleetDigestInput, toHex, utf8 } from '../crdt/bytes.ts'
import type { Ed25519 } from '../crdt/ed25519.ts'
import type { KeyPair } from '../crdt/keys.ts'
import { multiaddr } from '@multiformats/multiaddr'
import { InvalidStatusError } from './errors.ts'
import { MAX_ADVERTISED_ADDRS, MAX_ADVERTISED_ADDR_CHARS } from './limits.ts'
import { MAX_STATUS_BYTES, type StatusBody } from './types.ts'

const VERSION = 1
const DOMAIN = 'rhizome/status/v1'

export interface SignedStatus {
  node: string
  seq: number
  body: StatusBody
  /** The encoded record, as signed and gossiped. */
  bytes: Uint8Array
}

function digest(fleetId: string, key: Uint8Array, seq: number, body: Uint8Array): Uint8Array {
  return sha256(fleetDigestInput(DOMAIN, fleetId).raw(key).varint(seq).raw(body).finish())
}

export async function signStatus(
  pair: KeyPair,
  fleetId: string,
  seq: number,
  body: StatusBody,
  ed: Ed25519
): Promise<SignedStatus> {
  const json = utf8(JSON.stringify(body))
  if (json.length > MAX_STATUS_BYTES) {
    throw new InvalidStatusError(
      `status body is ${json.length} bytes; at most ${MAX_STATUS_BYTES} are allowed (trim logs or details before publishing)`
    )
  }
  const signature = await ed.sign(pair.seed, digest(fleetId, pair.publicKey, seq, json))
  const bytes = new ByteWriter()
    .u8(VERSION)
    .raw(pair.publicKey)
    .varint(seq)
    .bytes(json)
    .raw(signature)
    .finish()
  return { node: toHex(pair.publicKey), seq, body, bytes }
}

/**
 * A record's node and sequence number, read without verifying anything: enough to drop a record
 * that is not newer than the one held before paying for its signature and body.
 */
export function peekStatus(bytes: Uint8Array): { node: string; seq: number } {
  try {
    const r = new ByteReader(bytes, 'status record')
    const v = r.u8()
    if (v !== VERSION) throw new InvalidStatusError(`status record version ${v} is not supported`)
    return { node: toHex(r.raw(32)), seq: r.varint() }
  } catch (err) {
    if (err instanceof InvalidStatusError) throw err
    throw new InvalidStatusError(`malformed status record: ${(err as Error).message}`)
  }
}

/**
 * Decode and verify a record. Returns undefined for a well-formed record whose key is not (yet)
 * an enrolled device here: it may be a device enrolled in a devices document we have not
 * received yet, so the forwarding peer is not at fault; the record is dropped.
 */
export async function verifyStatus(
  bytes: Uint8Array,
  fleetId: string,
  ed: Ed25519,
  isEnrolled: (keyHex: string) => boolean
): Promise<SignedStatus | undefined> {
  let key: Uint8Array, seq: number, json: Uint8Array, signature: Uint8Array
  try {
    const r = new ByteReader(bytes, 'status record')
    const v = r.u8()
    if (v !== VERSION) throw new InvalidStatusError(`status record version ${v} is not supported`)
    key = r.raw(32)
    seq = r.varint()
    json = r.bytes(MAX_STATUS_BYTES)
    signature = r.raw(64)
    r.end()
  } catch (err) {
    if (err instanceof InvalidStatusError) throw err
    throw new InvalidStatusError(`malformed status record: ${(err as Error).message}`)
  }
  const node = toHex(key)
  if (!isEnrolled(node)) return undefined
  if (!(await ed.verify(key, digest(fleetId, key, seq, json), signature))) {
    throw new InvalidStatusError(`status record from ${node.slice(0, 16)}… has a bad signature`)
  }
  let body: unknown
  try {
    body = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json))
  } catch {
    throw new InvalidStatusError(
      `status record from ${node.slice(0, 16)}… has a body that is not JSON`
    )
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new InvalidStatusError(
      `status record from ${node.slice(0, 16)}… has a body that is not a JSON object`
    )
  }
  return { node, seq, body: body as StatusBody, bytes: bytes.slice() }
}

const ADDRS_FIELD = 'meshAddrs'

/** The body as signed: the daemon's, with the node's dialable addresses added. */
export function withAddresses(body: StatusBody, addresses: readonly string[]): StatusBody {
  const fit = addresses.filter(a => a.length <= MAX_ADVERTISED_ADDR_CHARS)
  return { ...body, [ADDRS_FIELD]: fit.slice(0, MAX_ADVERTISED_ADDRS) }
}

/**
 * The daemon's body and the addresses the mesh added, apart. Addresses that do not parse as
 * multiaddrs, or carry a /p2p part (a record names only its own node's addresses), are dropped.
 */
export function splitAddresses(signed: StatusBody): { body: StatusBody; addresses: string[] } {
  const { [ADDRS_FIELD]: raw, ...body } = signed
  const addresses: string[] = []
  if (Array.isArray(raw)) {
    for (const a of raw.slice(0, MAX_ADVERTISED_ADDRS)) {
      if (typeof a !== 'string' || a.length > MAX_ADVERTISED_ADDR_CHARS) continue
      try {
        const ma = multiaddr(a)
        if (ma.getComponents().some(c => c.name === 'p2p')) continue
        addresses.push(ma.toString())
      } catch {
        // not a multiaddr: left out
      }
    }
  }
  return { body, addresses }
}

/** How a held record is kept in store meta: the record plus when we first received it. */
export function encodeStoredStatus(record: Uint8Array, receivedAt: number): Uint8Array {
  return new ByteWriter().bytes(record).varint(receivedAt).finish()
}

export function decodeStoredStatus(bytes: Uint8Array): { record: Uint8Array; receivedAt: number } {
  const r = new ByteReader(bytes, 'stored status record')
  const record = r.bytes(MAX_STATUS_BYTES + 1024)
  const receivedAt = r.varint()
  r.end()
  return { record, receivedAt }
}
