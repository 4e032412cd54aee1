/**
 * Freeze beacons: an admin's signed statement of what is current — the trust version and every
 * document's heads — with the time it was issued and when it expires. Admin tooling issues one
 * periodically (`rhizome beacon`); it travels like a status record (newest kept, relayed) and
 * in bundles. A node whose newest beacon has expired, or that holds a beacon naming heads or a
 * trust version it does not have, is *stale*: someone may be keeping it on old state (a stolen
 * device serving a site what it had when it was taken). It says so and keeps running its last
 * valid config; staleness never stops a workload. An isolated device cannot tell "nothing new was
 * issued" from a freeze, so it flags, never bricks (TUF's expiry, Uptane's time floor).
 *
 * Wire format (version 1), integers unsigned LEB128:
 *
 *   u8      version = 1
 *   32 B    fleet id
 *   varint  trust version
 *   varint  issued, ms since the epoch (the signer's clock)
 *   varint  expires, ms since the epoch
 *   varint  document count (at most MAX_BEACON_DOCS)
 *     per document: string id ‖ varint head count (at most MAX_BEACON_HEADS) ‖ 32 B × heads
 *   32 B    signer public key (an admin of the statement in force, or of the version it names)
 *   64 B    Ed25519 signature over sha-256("rhizome/beacon/v1" 0x00 ‖ every byte before the key)
 */
import { sha256 } from '@noble/hashes/sha2.js'
import { ByteReader, ByteWriter, concatBytes, fromHex, toHex, utf8 } from './bytes.ts'
import { InvalidSignatureError, MalformedInputError } from './errors.ts'
import type { Ed25519 } from './ed25519.ts'
import type { KeyPair } from './keys.ts'
import type { TrustChain } from './trust.ts'

export const BEACON_VERSION = 1
export const MAX_BEACON_DOCS = 1024
export const MAX_BEACON_HEADS = 64
/** A beacon is at most this large: 1,024 documents of 64 heads would not fit, and need not. */
export const MAX_BEACON_BYTES = 256 * 1024
const DOMAIN = utf8('rhizome/beacon/v1\0')

export interface Beacon {
  fleetId: string
  trustVersion: number
  /** ms since the epoch, the signer's clock. */
  issued: number
  expires: number
  /** Per document, its heads (sorted) when the beacon was issued. */
  docs: Record<string, string[]>
  /** Signer public key, hex. */
  signer: string
  signature: Uint8Array
  /** The encoded beacon, as signed and relayed. */
  bytes: Uint8Array
}

export type BeaconContent = Pick<Beacon, 'fleetId' | 'trustVersion' | 'issued' | 'expires' | 'docs'>

function body(b: BeaconContent): Uint8Array {
  const ids = Object.keys(b.docs).sort()
  if (ids.length > MAX_BEACON_DOCS) {
    throw new MalformedInputError(`a beacon names at most ${MAX_BEACON_DOCS} documents`)
  }
  const w = new ByteWriter()
    .u8(BEACON_VERSION)
    .raw(fromHex(b.fleetId))
    .varint(b.trustVersion)
    .varint(b.issued)
    .varint(b.expires)
    .varint(ids.length)
  for (const id of ids) {
    const heads = [...(b.docs[id] as string[])].sort()
    if (heads.length > MAX_BEACON_HEADS) {
      throw new MalformedInputError(`a beacon names at most ${MAX_BEACON_HEADS} heads a document`)
    }
    w.string(id).varint(heads.length)
    for (const h of heads) w.raw(fromHex(h))
  }
  return w.finish()
}

const digest = (bodyBytes: Uint8Array): Uint8Array => sha256(concatBytes(DOMAIN, bodyBytes))

/** Sign a beacon with an admin key. */
export async function signBeacon(b: BeaconContent, key: KeyPair, ed: Ed25519): Promise<Beacon> {
  const bodyBytes = body(b)
  const signature = await ed.sign(key.seed, digest(bodyBytes))
  const bytes = concatBytes(bodyBytes, key.publicKey, signature)
  return { ...b, docs: { ...b.docs }, signer: toHex(key.publicKey), signature, bytes }
}

/** Decode a beacon's shape (its signature and signer are checked by `verifyBeacon`). */
export function decodeBeacon(bytes: Uint8Array): Beacon {
  const r = ByteReader.versioned(bytes, 'beacon', MAX_BEACON_BYTES, BEACON_VERSION)
  const fleetId = toHex(r.raw(32))
  const trustVersion = r.varint(1 << 30)
  const issued = r.varint()
  const expires = r.varint()
  const n = r.varint(MAX_BEACON_DOCS)
  const docs: Record<string, string[]> = {}
  for (let i = 0; i < n; i++) {
    const id = r.string(128)
    const k = r.varint(MAX_BEACON_HEADS)
    const heads: string[] = []
    for (let j = 0; j < k; j++) heads.push(toHex(r.raw(32)))
    docs[id] = heads
  }
  const signer = toHex(r.raw(32))
  const signature = r.raw(64).slice()
  r.end()
  return { fleetId, trustVersion, issued, expires, docs, signer, signature, bytes }
}

/**
 * Is this a beacon of this fleet, signed by an admin? The signer must be an admin of the
 * statement in force, or of the chain's statement at the version the beacon names. Returns
 * false for one this node cannot judge yet (signed under a statement it does not hold): it is
 * not proof of anything, nor the relaying peer's fault. Throws `InvalidSignatureError` for a
 * signature that does not verify, `MalformedInputError` for another fleet's.
 */
export async function verifyBeacon(b: Beacon, trust: TrustChain, ed: Ed25519): Promise<boolean> {
  if (b.fleetId !== trust.fleetId) {
    throw new MalformedInputError(`a beacon of fleet ${b.fleetId.slice(0, 12)}…, not this one`)
  }
  const at = trust.all.find(s => s.statement.version === b.trustVersion)?.statement
  const admin = (s: typeof at): boolean => s?.admins.some(a => a.key === b.signer) === true
  if (!admin(trust.latest) && !admin(at)) return false
  const bodyBytes = b.bytes.subarray(0, b.bytes.length - 96)
  if (!(await ed.verify(fromHex(b.signer), digest(bodyBytes), b.signature))) {
    throw new InvalidSignatureError('a beacon whose signature does not verify')
  }
  return true
}

export type FreshnessState = 'fresh' | 'stale' | 'unknown'

export interface Freshness {
  state: FreshnessState
  /** Why stale: the newest beacon expired, or it names what this node does not have. */
  reason?: 'expired' | 'behind'
  /** The newest beacon held. */
  beacon?: { issued: number; expires: number; trustVersion: number; signer: string }
  /** For `behind`: the documents whose heads the beacon names and this node lacks. */
  lacking?: string[]
}

/** What a node holds, for judging a beacon against. */
export interface HeldState {
  trustVersion: number
  /** Does this node hold every one of these changes of this document? */
  has(docId: string, heads: string[]): boolean
}

/**
 * A node's freshness: a pure function of its newest beacon, the time and what it holds. `now`
 * must never go back (`node/time-floor.ts`). No beacon ever: `unknown` (a fleet that issues
 * none is never called stale).
 */
export function freshness(newest: Beacon | undefined, now: number, held: HeldState): Freshness {
  if (newest === undefined) return { state: 'unknown' }
  const beacon = {
    issued: newest.issued,
    expires: newest.expires,
    trustVersion: newest.trustVersion,
    signer: newest.signer
  }
  const lacking = Object.entries(newest.docs)
    .filter(([id, heads]) => !held.has(id, heads))
    .map(([id]) => id)
    .sort()
  if (newest.trustVersion > held.trustVersion || lacking.length > 0) {
    return { state: 'stale', reason: 'behind', beacon, lacking }
  }
  if (now > newest.expires) return { state: 'stale', reason: 'expired', beacon }
  return { state: 'fresh', beacon }
}

/** Of two beacons, the newer (later issue; ties by bytes, so every peer picks the same). */
export function newerBeacon(a: Beacon | undefined, b: Beacon): boolean {
  if (a === undefined) return true
  if (b.issued !== a.issued) return b.issued > a.issued
  return toHex(b.bytes) > toHex(a.bytes)
}
