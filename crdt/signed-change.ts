/**
 * Signed change batches: the only form in which Automerge changes enter or leave a replica.
 *
 * Wire format (version 1), all integers unsigned LEB128:
 *
 *   u8      version = 1
 *   bytes   docId            (UTF-8, at most 128 bytes)
 *   varint  chunk count      (at most 64)
 *   bytes   chunk × count    (an Automerge change chunk, type 1 or 2, or a bundle chunk, type 3)
 *   varint  signature count  (at most 4,096)
 *   per signature:
 *     32 B  signer public key
 *     32 B  signed change hash (the Automerge change hash)
 *     64 B  Ed25519 signature over the digest below
 *
 * A batch is at most 32 MiB in all.
 *
 * Digest: sha-256( "rhizome/change/v1" 0x00 ‖ fleet id (32 B) ‖ len ‖ docId ‖ change hash (32 B) ).
 *
 * Why signatures name change hashes: an Automerge change hash is a sha-256 over the change's
 * canonical bytes, and those bytes include the hashes of its dependencies. A signature on a
 * change therefore commits to that change and its whole ancestry. Each signature *covers* the
 * signed change and every ancestor written by the same actor; a batch is valid only if every
 * change in it is covered by a signature in the same batch, by the key its actor id names, and
 * that key may write the document. So catching up on 10,000 changes by three admins carries
 * three signatures and needs three verifications, not 10,000.
 *
 * Actor ids are the signer's 32-byte public key followed by 8 random session bytes: the key is
 * read off the actor, so a change cannot be re-attributed, and two sessions of one key (a
 * laptop and a browser tab) never collide on a sequence number.
 */
import * as Automerge from '@automerge/automerge'
import { sha256 } from '@noble/hashes/sha2.js'
import { ByteReader, ByteWriter, concatBytes, fromHex, toHex, utf8 } from './bytes.ts'
import {
  ActorMismatchError,
  InvalidSignatureError,
  MalformedInputError,
  OversizedInputError,
  UnsignedChangeError
} from './errors.ts'
import type { Ed25519 } from './ed25519.ts'
import type { KeyPair } from './keys.ts'

export const BATCH_VERSION = 1
export const MAX_BATCH_BYTES = 32 * 1024 * 1024
export const MAX_DOC_ID_BYTES = 128
export const MAX_CHUNKS_PER_BATCH = 64
export const MAX_SIGNATURES_PER_BATCH = 4096
export const MAX_CHANGES_PER_BATCH = 200_000

const DOMAIN = utf8('rhizome/change/v1\0')
const ACTOR_BYTES = 40

export interface ChangeSignature {
  /** 32-byte signer public key. */
  key: Uint8Array
  /** Hex Automerge hash of the signed change. */
  hash: string
  /** 64-byte Ed25519 signature over `changeDigest(fleetId, docId, hash)`. */
  signature: Uint8Array
}

export interface SignedBatch {
  docId: string
  /** Automerge change chunks and/or bundles. */
  chunks: Uint8Array[]
  signatures: ChangeSignature[]
}

/** What validation needs to know of a change. */
export interface ChangeMeta {
  hash: string
  actor: string
  seq: number
  deps: string[]
  time: number
  message: string | null
}

export function newActorId(
  publicKey: Uint8Array,
  session: Uint8Array = globalThis.crypto.getRandomValues(new Uint8Array(8))
): string {
  return toHex(concatBytes(publicKey, session))
}

/** The signer key named by an actor id, as hex; throws `ActorMismatchError` for foreign actor ids. */
export function actorKeyHex(actor: string): string {
  if (actor.length !== ACTOR_BYTES * 2) {
    throw new ActorMismatchError(
      `actor ${actor.slice(0, 16)}… is not a Rhizome actor id (32-byte key + 8-byte session)`
    )
  }
  return actor.slice(0, 64)
}

export function changeDigest(fleetId: string, docId: string, hash: string): Uint8Array {
  const doc = utf8(docId)
  return sha256(
    concatBytes(DOMAIN, fromHex(fleetId), Uint8Array.of(doc.length), doc, fromHex(hash))
  )
}

export async function signChange(
  pair: KeyPair,
  fleetId: string,
  docId: string,
  hash: string,
  ed: Ed25519
): Promise<ChangeSignature> {
  return {
    key: pair.publicKey,
    hash,
    signature: await ed.sign(pair.seed, changeDigest(fleetId, docId, hash))
  }
}

/**
 * The bytes a batch was decoded from: a batch received and then stored and relayed is not
 * encoded again for each (batches are not changed after decoding).
 */
const decodedFrom = new WeakMap<SignedBatch, Uint8Array>()

export function encodeBatch(batch: SignedBatch): Uint8Array {
  const known = decodedFrom.get(batch)
  if (known !== undefined) return known
  const w = new ByteWriter().u8(BATCH_VERSION).string(batch.docId).varint(batch.chunks.length)
  for (const c of batch.chunks) w.bytes(c)
  w.varint(batch.signatures.length)
  for (const s of batch.signatures) w.raw(s.key).raw(fromHex(s.hash)).raw(s.signature)
  const out = w.finish()
  if (out.length > MAX_BATCH_BYTES) {
    throw new OversizedInputError(
      `a signed batch is at most ${MAX_BATCH_BYTES} bytes; this one would be ${out.length}`
    )
  }
  return out
}

export function decodeBatch(bytes: Uint8Array): SignedBatch {
  const r = ByteReader.versioned(bytes, 'signed batch', MAX_BATCH_BYTES, BATCH_VERSION)
  const docId = r.string(MAX_DOC_ID_BYTES)
  const chunks: Uint8Array[] = []
  const nChunks = r.varint(MAX_CHUNKS_PER_BATCH)
  for (let i = 0; i < nChunks; i++) chunks.push(r.bytes(MAX_BATCH_BYTES))
  const signatures: ChangeSignature[] = []
  const nSigs = r.varint(MAX_SIGNATURES_PER_BATCH)
  for (let i = 0; i < nSigs; i++) {
    signatures.push({ key: r.raw(32), hash: toHex(r.raw(32)), signature: r.raw(64) })
  }
  r.end()
  const batch = { docId, chunks, signatures }
  decodedFrom.set(batch, bytes)
  return batch
}

const CHUNK_CHANGE = 1
const CHUNK_COMPRESSED_CHANGE = 2
const CHUNK_BUNDLE = 3

/** A single change (not a bundle or a document): `Automerge.applyChanges` takes these. */
export function isChangeChunk(chunk: Uint8Array): boolean {
  return chunk.length > 8 && (chunk[8] === CHUNK_CHANGE || chunk[8] === CHUNK_COMPRESSED_CHANGE)
}

/** Only the fields of `ChangeMeta`, copied out of a decoded change (which holds its ops too). */
function toMeta(c: ChangeMeta): ChangeMeta {
  return {
    hash: c.hash,
    actor: c.actor,
    seq: c.seq,
    deps: c.deps,
    time: c.time,
    message: c.message
  }
}

/**
 * `decodeChange` and `readBundle` do not check a chunk's checksum but `loadIncremental` does,
 * and skips or refuses a chunk whose checksum is wrong; a verified batch could then fail to
 * apply. The checksum is outside what signatures cover (they name hashes of the content), so
 * it is checked here, before anything is verified, stored or applied.
 */
function checkChecksum(chunk: Uint8Array, expected: Uint8Array): void {
  for (let i = 0; i < 4; i++) {
    if (chunk[4 + i] !== expected[i]) {
      throw new MalformedInputError("a chunk's checksum does not match its contents")
    }
  }
}

/**
 * Parse the changes in a batch's chunks without applying them anywhere. Automerge computes each
 * change's hash from its bytes while parsing, which is what makes the hash chain trustworthy.
 */
export function readChanges(chunks: Uint8Array[]): ChangeMeta[] {
  const out: ChangeMeta[] = []
  for (const chunk of chunks) {
    const type = chunk.length > 8 ? chunk[8] : -1
    try {
      if (type === CHUNK_CHANGE || type === CHUNK_COMPRESSED_CHANGE) {
        const meta = toMeta(Automerge.decodeChange(chunk))
        // A change's checksum is the first 4 bytes of its hash (over the uncompressed change).
        checkChecksum(chunk, fromHex(meta.hash.slice(0, 8)))
        out.push(meta)
      } else if (type === CHUNK_BUNDLE) {
        checkChecksum(chunk, sha256(chunk.subarray(8)).subarray(0, 4))
        for (const c of Automerge.readBundle(chunk).changes) out.push(toMeta(c))
      } else {
        throw new MalformedInputError(`chunk of type ${type} is not a change or a bundle`)
      }
    } catch (err) {
      if (err instanceof MalformedInputError) throw err
      throw new MalformedInputError(
        `a chunk does not parse as Automerge changes: ${(err as Error).message}`
      )
    }
    if (out.length > MAX_CHANGES_PER_BATCH) {
      throw new OversizedInputError(`a batch holds at most ${MAX_CHANGES_PER_BATCH} changes`)
    }
  }
  return out
}

/**
 * Signatures verified between two yields to the event loop: 32 are 2-5 ms of node:crypto work
 * (7,000-14,500 verifications a second here, by load), tweetnacl's fallback ~0.3 s.
 */
export const VERIFY_YIELD_EVERY = 32

/** Let other work run: a large batch's verification must not hold the event loop for long. */
function yieldToEventLoop(): Promise<void> {
  const g = globalThis as { setImmediate?: (fn: () => void) => unknown }
  return new Promise(resolve => {
    if (g.setImmediate !== undefined) g.setImmediate(resolve)
    else setTimeout(resolve, 0)
  })
}

export interface Coverage {
  /** The signer key (hex) of each actor. */
  signerOfActor: Map<string, string>
  /**
   * The signatures coverage rests on, each verified: one per chain tip. Others in the batch
   * (on changes a higher signature already covers) were redundant and are neither verified
   * nor kept, so nothing unverified is ever stored or relayed.
   */
  signatures: ChangeSignature[]
}

/**
 * Check that every change in `changes` is covered by a signature in `signatures` (see the
 * header), that the signers may write the document, and that each covering signature verifies.
 * Pure in its inputs: every peer holding the same batch decides the same.
 *
 * Cheapest refusals first, so a batch from a stranger costs almost nothing:
 * 1. every signature's key and every change's actor key must pass `authorize` (it throws
 *    `UnknownKeyError` or `OutOfScopeError`), asked once per distinct key, before anything is
 *    walked or verified;
 * 2. each signature names a change in the batch by its own key's actor;
 * 3. coverage, linear in the batch: Automerge lists an actor's previous change among every
 *    change's dependencies (test/crdt-coverage.test.ts checks it), so a change is covered when
 *    it is signed or it is the previous change of its actor named by a covered change. The walk
 *    from each signature follows those links only and stops at a change already covered: each
 *    change is visited once, whatever the number of signatures (the old walk over every
 *    signature's whole ancestry cost signatures × ancestry: 24-27 s for one 0.75 MB batch);
 * 4. only then are the covering signatures verified, at most `MAX_SIGNATURES_PER_BATCH`,
 *    yielding to the event loop every `VERIFY_YIELD_EVERY`.
 *
 * `anchors` (change hash → key hex) are changes named by a root-signed cut or by verified
 * equivocation evidence: each covers its actor's chain below it as a verified signature would
 * (a revoked key's own tip signature may sit on a change outside its cut).
 */
export async function verifyCoverage(
  fleetId: string,
  docId: string,
  changes: readonly ChangeMeta[],
  signatures: readonly ChangeSignature[],
  ed: Ed25519,
  authorize: (keyHex: string) => void,
  anchors: ReadonlyMap<string, string> = new Map()
): Promise<Coverage> {
  const asked = new Set<string>()
  const ask = (keyHex: string): void => {
    if (asked.has(keyHex)) return
    authorize(keyHex)
    asked.add(keyHex)
  }
  for (const s of signatures) ask(toHex(s.key))
  const signerOfActor = new Map<string, string>()
  for (const c of changes) {
    if (signerOfActor.has(c.actor)) continue
    const keyHex = actorKeyHex(c.actor)
    ask(keyHex)
    signerOfActor.set(c.actor, keyHex)
  }

  const byHash = new Map<string, ChangeMeta>()
  for (const c of changes) byHash.set(c.hash, c)
  const sigs = signatures
    .map(s => ({ s, c: byHash.get(s.hash) }))
    // Highest sequence number first: a chain's tip covers the rest of it.
    .sort((a, b) => (b.c?.seq ?? 0) - (a.c?.seq ?? 0))
  const covered = new Set<string>()
  const cover = (from: ChangeMeta): void => {
    for (let m: ChangeMeta | undefined = from; m !== undefined && !covered.has(m.hash);) {
      covered.add(m.hash)
      m = previousOfActor(m, byHash)
    }
  }
  // A change a root-signed cut (or held equivocation evidence) names covers its actor's chain
  // below it as a signature would; it needs no verification here.
  for (const [hash, keyHex] of anchors) {
    const c = byHash.get(hash)
    if (c !== undefined && signerOfActor.get(c.actor) === keyHex) cover(c)
  }
  const needed: Array<{ s: ChangeSignature; c: ChangeMeta }> = []
  for (const { s, c } of sigs) {
    if (c === undefined) {
      throw new MalformedInputError(
        `signature for change ${s.hash.slice(0, 12)}… which is not in the batch`
      )
    }
    if (covered.has(c.hash)) continue
    const keyHex = toHex(s.key)
    if (signerOfActor.get(c.actor) !== keyHex) {
      throw new ActorMismatchError(
        `change ${c.hash.slice(0, 12)}… has actor ${c.actor.slice(0, 16)}… but is signed by key ${keyHex.slice(0, 16)}…`
      )
    }
    needed.push({ s, c })
    cover(c)
  }
  for (const c of changes) {
    if (!covered.has(c.hash)) {
      throw new UnsignedChangeError(
        `change ${c.hash.slice(0, 12)}… (actor ${c.actor.slice(0, 16)}…, seq ${c.seq}) of document "${docId}" is not covered by any signature in its batch`
      )
    }
  }

  for (let i = 0; i < needed.length; i++) {
    if (i > 0 && i % VERIFY_YIELD_EVERY === 0) await yieldToEventLoop()
    const { s, c } = needed[i]!
    if (!(await ed.verify(s.key, changeDigest(fleetId, docId, c.hash), s.signature))) {
      throw new InvalidSignatureError(
        `signature on change ${c.hash.slice(0, 12)}… of document "${docId}" does not verify`
      )
    }
  }
  return { signerOfActor, signatures: needed.map(n => n.s) }
}

/**
 * The change of `m`'s actor with sequence number `m.seq - 1`, if the batch holds it. Honest
 * Automerge changes name it among their dependencies; a change that does not, while the batch
 * holds it, is refused (`checkActorChains` below says why).
 */
function previousOfActor(
  m: ChangeMeta,
  byHash: ReadonlyMap<string, ChangeMeta>
): ChangeMeta | undefined {
  for (const d of m.deps) {
    const p = byHash.get(d)
    if (p !== undefined && p.actor === m.actor && p.seq === m.seq - 1) return p
  }
  return undefined
}

/** What a document knows of a change it holds: enough to check an actor's chain. */
export interface HeldChange {
  actor: string
  seq: number
}

/**
 * Every change must follow its actor's previous one: sequence number 1, or `seq - 1` of the same
 * actor named among its dependencies (in `changes` or in `held`), and no sequence number of an
 * actor used twice. Automerge refuses a repeated sequence number, and *panics* on a gap
 * ("assertion `left == right` failed"), which terminates its WebAssembly module for the whole
 * process: so this runs before Automerge sees a batch. Changes whose dependencies are not all
 * present yet are skipped (they wait in the pending set and are checked when released).
 */
export function checkActorChains(
  docId: string,
  changes: readonly ChangeMeta[],
  held: (hash: string) => HeldChange | undefined,
  heldSeq: (actor: string) => number
): void {
  const byHash = new Map<string, ChangeMeta>()
  const used = new Map<string, string>()
  for (const c of changes) {
    byHash.set(c.hash, c)
    const key = `${c.actor}/${c.seq}`
    const other = used.get(key)
    if (
      (other !== undefined && other !== c.hash) ||
      (c.seq <= heldSeq(c.actor) && held(c.hash) === undefined)
    ) {
      throw new MalformedInputError(
        `two different changes of document "${docId}" use sequence number ${c.seq} of actor ${c.actor.slice(0, 16)}…`
      )
    }
    used.set(key, c.hash)
  }
  for (const c of changes) {
    if (c.seq === 1 || held(c.hash) !== undefined) continue
    const follows = c.deps.some(d => {
      const p = byHash.get(d) ?? held(d)
      return p !== undefined && p.actor === c.actor && p.seq === c.seq - 1
    })
    if (!follows) {
      throw new MalformedInputError(
        `change ${c.hash.slice(0, 12)}… (actor ${c.actor.slice(0, 16)}…, seq ${c.seq}) of document "${docId}" does not name its actor's change ${c.seq - 1} as a dependency`
      )
    }
  }
}
