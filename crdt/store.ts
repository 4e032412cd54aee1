/**
 * The storage interface a replica persists through, and an in-memory implementation for tests
 * and browsers. `level-store.ts` has the durable implementation; `test/crdt-store.test.ts` runs one
 * suite against both.
 *
 * What is kept, per document:
 *  - every accepted signed batch (encoded, as received), under an increasing sequence number,
 *    durable before `appendBatch` resolves;
 *  - a snapshot for fast start: `Automerge.save` of the document plus the signatures that cover
 *    its changes, and the batch sequence number it includes. Batches at or below it may be
 *    compacted away, since the snapshot holds their changes and covering signatures.
 * Plus the trust statements by version, and small metadata (identity, status records).
 */
import { ClosedError } from './errors.ts'

export interface StoredBatch {
  seq: number
  bytes: Uint8Array
}

export interface Snapshot {
  /** Highest batch sequence number whose changes the snapshot holds. */
  upTo: number
  /** `Automerge.save` of the document. */
  doc: Uint8Array
  /** Encoded signatures covering the document's changes (see `document.ts`). */
  signatures: Uint8Array
}

export interface Store {
  /** Append a batch; resolves once it is durable. Returns its sequence number. */
  appendBatch(docId: string, bytes: Uint8Array): Promise<number>
  /** Batches with a sequence number above `after`, in order. */
  batchesAfter(docId: string, after: number): Promise<StoredBatch[]>
  /** Store a snapshot and drop the batches it includes. */
  putSnapshot(docId: string, snapshot: Snapshot): Promise<void>
  getSnapshot(docId: string): Promise<Snapshot | undefined>
  listDocs(): Promise<string[]>
  /** Trust statements, by version (1 = genesis). */
  putTrust(version: number, bytes: Uint8Array): Promise<void>
  listTrust(): Promise<Uint8Array[]>
  getMeta(key: string): Promise<Uint8Array | undefined>
  /**
   * `durable: false`: resolve once written, without waiting for the disk to flush (what a crash
   * of the machine, not of the process, may lose: records a peer will send again).
   */
  putMeta(key: string, value: Uint8Array, opts?: { durable?: boolean }): Promise<void>
  deleteMeta(key: string): Promise<void>
  /** Metadata entries whose key starts with `prefix`. */
  listMeta(prefix: string): Promise<Array<[string, Uint8Array]>>
  close(): Promise<void>
}

interface DocRecord {
  seq: number
  batches: Map<number, Uint8Array>
  snapshot?: Snapshot
}

export class MemoryStore implements Store {
  private docs = new Map<string, DocRecord>()
  private trust = new Map<number, Uint8Array>()
  private meta = new Map<string, Uint8Array>()
  private closed = false

  private doc(docId: string): DocRecord {
    this.check()
    let d = this.docs.get(docId)
    if (d === undefined) {
      d = { seq: 0, batches: new Map() }
      this.docs.set(docId, d)
    }
    return d
  }

  async appendBatch(docId: string, bytes: Uint8Array): Promise<number> {
    const d = this.doc(docId)
    d.seq++
    d.batches.set(d.seq, bytes.slice())
    return d.seq
  }

  async batchesAfter(docId: string, after: number): Promise<StoredBatch[]> {
    const d = this.doc(docId)
    return [...d.batches]
      .filter(([seq]) => seq > after)
      .sort(([a], [b]) => a - b)
      .map(([seq, bytes]) => ({ seq, bytes }))
  }

  async putSnapshot(docId: string, snapshot: Snapshot): Promise<void> {
    const d = this.doc(docId)
    d.snapshot = snapshot
    for (const seq of d.batches.keys()) if (seq <= snapshot.upTo) d.batches.delete(seq)
  }

  async getSnapshot(docId: string): Promise<Snapshot | undefined> {
    return this.doc(docId).snapshot
  }

  async listDocs(): Promise<string[]> {
    this.check()
    return [...this.docs]
      .filter(([, d]) => d.seq > 0 || d.snapshot !== undefined)
      .map(([id]) => id)
      .sort()
  }

  async putTrust(version: number, bytes: Uint8Array): Promise<void> {
    this.check()
    this.trust.set(version, bytes)
  }
  async listTrust(): Promise<Uint8Array[]> {
    this.check()
    return [...this.trust].sort(([a], [b]) => a - b).map(([, b]) => b)
  }
  async getMeta(key: string): Promise<Uint8Array | undefined> {
    this.check()
    return this.meta.get(key)
  }
  async putMeta(key: string, value: Uint8Array): Promise<void> {
    this.check()
    this.meta.set(key, value)
  }
  async deleteMeta(key: string): Promise<void> {
    this.check()
    this.meta.delete(key)
  }
  async listMeta(prefix: string): Promise<Array<[string, Uint8Array]>> {
    this.check()
    return [...this.meta].filter(([k]) => k.startsWith(prefix)).sort(([a], [b]) => (a < b ? -1 : 1))
  }

  async close(): Promise<void> {
    this.closed = true
  }

  private check(): void {
    if (this.closed) throw new ClosedError('the store is closed')
  }
}
