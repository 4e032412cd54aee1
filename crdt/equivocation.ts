/**
 * Equivocation evidence: proof that one actor used one sequence number for two different
 * changes. Actor ids are a key plus a session, and a session numbers its changes one by one, so
 * only someone else holding the key — a leaked key — makes two. The evidence is the two
 * changes, each inside a self-covering signed batch (crdt/signed-change.ts), so any peer can
 * check it alone, without the document: it is kept for good, travels between peers and in
 * bundles, and cuts the actor just before the fork point (crdt/validity.ts, rule 3).
 *
 * Wire format (version 1), integers unsigned LEB128:
 *
 *   u8      version = 1
 *   40 B    actor
 *   varint  seq              (the sequence number used twice)
 *   u8      1 + 32 B hash    (the actor's change seq - 1, which both name; seq > 1)  or  u8 0
 *   varint  batch count      (1 or 2)
 *   bytes   batch × count    (encoded signed batches of the document, together holding both
 *                             changes and what covers them; the document id is theirs)
 *
 * At most `MAX_EQUIVOCATION_BYTES` in all from a peer. Evidence found here is kept whatever its
 * size (its batches came within `MAX_BATCH_BYTES`), but only what fits the bound is passed on.
 */
import * as Automerge from '@automerge/automerge'
import { ByteReader, ByteWriter, fromHex, toHex } from './bytes.ts'
import { MalformedInputError } from './errors.ts'
import {
  decodeBatch,
  encodeBatch,
  isChangeChunk,
  type ChangeMeta,
  type SignedBatch
} from './signed-change.ts'

export const EQUIVOCATION_VERSION = 1
/** One piece of evidence: two short chains of one actor's changes and their signatures. */
export const MAX_EQUIVOCATION_BYTES = 2 * 1024 * 1024
/** Equivocating actors remembered per document; beyond it, new evidence is refused and logged. */
export const MAX_EQUIVOCATIONS_PER_DOCUMENT = 256

export interface Equivocation {
  docId: string
  /** The actor that used `seq` twice. */
  actor: string
  seq: number
  /** The actor's change `seq - 1`, which both changes name; null when `seq` is 1. */
  previous: string | null
  /** The two changes' hashes, sorted. */
  hashes: [string, string]
  /** Signed batches of `docId` that together hold both changes and cover them. */
  batches: SignedBatch[]
}

export function encodeEquivocation(e: Equivocation): Uint8Array {
  const w = new ByteWriter().u8(EQUIVOCATION_VERSION).raw(fromHex(e.actor)).varint(e.seq)
  if (e.previous === null) w.u8(0)
  else w.u8(1).raw(fromHex(e.previous))
  w.varint(e.batches.length)
  for (const b of e.batches) w.bytes(encodeBatch(b))
  return w.finish()
}

/**
 * Decode evidence. The shape only: which changes the batches hold and whether their signatures
 * cover them is checked by `SignedDocument.acceptEquivocation`, and that the two changes do
 * conflict, by `conflictIn` on what it parsed.
 */
export function decodeEquivocation(
  bytes: Uint8Array,
  max = MAX_EQUIVOCATION_BYTES
): Omit<Equivocation, 'hashes' | 'docId'> {
  const r = ByteReader.versioned(bytes, 'equivocation evidence', max, EQUIVOCATION_VERSION)
  const actor = toHex(r.raw(40))
  const seq = r.varint()
  if (seq < 1) throw new MalformedInputError('equivocation evidence names sequence number 0')
  const hasPrevious = r.u8()
  if (hasPrevious > 1) throw new MalformedInputError('equivocation evidence: bad flag')
  const previous = hasPrevious === 1 ? toHex(r.raw(32)) : null
  if ((previous === null) !== (seq === 1)) {
    throw new MalformedInputError('equivocation evidence names a previous change iff seq > 1')
  }
  const n = r.varint(2)
  if (n < 1) throw new MalformedInputError('equivocation evidence holds no batch')
  const batches: SignedBatch[] = []
  for (let i = 0; i < n; i++) batches.push(decodeBatch(r.bytes(max)))
  r.end()
  return { actor, seq, previous, batches }
}

/**
 * The two changes of `actor` with sequence number `seq` among `metas`, if there are two
 * different ones and both name `previous` (when given) among their dependencies.
 */
export function conflictIn(
  metas: readonly ChangeMeta[],
  actor: string,
  seq: number,
  previous: string | null
): [string, string] | undefined {
  const found = new Set<string>()
  for (const m of metas) {
    if (m.actor !== actor || m.seq !== seq) continue
    if (previous !== null && !m.deps.includes(previous)) continue
    found.add(m.hash)
  }
  if (found.size < 2) return undefined
  const [a, b] = [...found].sort()
  return [a as string, b as string]
}

/**
 * The changes of `batch` whose hashes are in `keep`, one change chunk each (re-encoded when they
 * came in a bundle; Automerge re-encodes a decoded change to the same bytes and hash), in the
 * batch's order. Used to apply the valid part of a batch and to cut evidence down to size.
 */
export function selectChanges(batch: SignedBatch, keep: ReadonlySet<string>): Uint8Array[] {
  const chunks: Uint8Array[] = []
  const seen = new Set<string>()
  for (const chunk of batch.chunks) {
    if (isChangeChunk(chunk)) {
      const hash = Automerge.decodeChange(chunk).hash
      if (keep.has(hash) && !seen.has(hash)) chunks.push(chunk)
      seen.add(hash)
      continue
    }
    for (const c of Automerge.readBundle(chunk).changes) {
      const hash = c.hash
      if (keep.has(hash) && !seen.has(hash)) chunks.push(Automerge.encodeChange(c))
      seen.add(hash)
    }
  }
  return chunks
}
