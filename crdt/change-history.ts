/**
 * A document's history for people: who signed each change, when (the author's clock), with
 * what message, and what it changed, as the same value diff `rhizome apply` shows (set leaves,
 * deleted keys). One implementation for the daemon's `GET /api/history` and the dashboard.
 */
import { diffMaps, plainValue, type DiffOp } from './config-diff.ts'
import type { SignedDocument } from './document.ts'

export interface HistoryItem {
  doc: string
  hash: string
  /** The signer's public key, hex. */
  signer: string
  /** Who the trust statement says the signer is, if anyone. */
  signerName: string | null
  role: string | null
  /** The author's clock, seconds since the epoch: informational. */
  time: number
  message: string | null
  deps: string[]
  diff: DiffOp[]
}

/** The newest `limit` changes of a document, oldest first, each with its diff. */
export function changeHistory(doc: SignedDocument, limit: number): HistoryItem[] {
  return doc
    .history()
    .slice(-limit)
    .map(h => {
      // A diff of values reads better than Automerge's patches.
      const before = (plainValue(doc.valueAt(h.deps)) ?? {}) as Record<string, unknown>
      const after = (plainValue(doc.valueAt([h.hash])) ?? {}) as Record<string, unknown>
      return {
        doc: doc.id,
        hash: h.hash,
        signer: h.signer,
        signerName: h.signerInfo?.name ?? null,
        role: h.signerInfo?.role ?? null,
        time: h.time,
        message: h.message,
        deps: h.deps,
        diff: diffMaps(before, after)
      }
    })
}
