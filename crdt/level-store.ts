/**
 * The durable `Store`, on LevelDB through `level`. Key layout (`!`-separated, ordered):
 *
 *   d!<docId>!b!<seq, 12 digits>  → encoded signed batch
 *   d!<docId>!n                   → last batch sequence number (decimal)
 *   d!<docId>!s                   → snapshot: varint upTo ‖ bytes doc ‖ bytes signatures
 *   t!<version, 12 digits>        → encoded trust statement
 *   m!<key>                       → metadata
 *
 * Batch appends are written with `sync: true`, so an accepted batch survives a power cut or
 * SIGKILL once `appendBatch` has resolved.
 */
import { Level } from 'level'
import { ByteReader, ByteWriter, utf8 } from './bytes.ts'
import { ClosedError, MalformedInputError, StoreLockedError } from './errors.ts'
import type { Snapshot, Store, StoredBatch } from './store.ts'

const pad = (n: number): string => n.toString().padStart(12, '0')
const MAX_SNAPSHOT_BYTES = 1 << 30
const decoder = new TextDecoder()

function encodeSnapshot(s: Snapshot): Uint8Array {
  return new ByteWriter().varint(s.upTo).bytes(s.doc).bytes(s.signatures).finish()
}

function decodeSnapshot(bytes: Uint8Array): Snapshot {
  const r = new ByteReader(bytes, 'stored snapshot')
  const s = {
    upTo: r.varint(),
    doc: r.bytes(MAX_SNAPSHOT_BYTES).slice(),
    signatures: r.bytes(MAX_SNAPSHOT_BYTES).slice()
  }
  r.end()
  return s
}

export class LevelStore implements Store {
  private readonly db: Level<string, Uint8Array>
  private readonly seqs = new Map<string, number>()
  /** Appends to one document are serialised so sequence numbers stay dense and ordered. */
  private readonly tails = new Map<string, Promise<unknown>>()

  private constructor(db: Level<string, Uint8Array>) {
    this.db = db
  }

  static async open(path: string): Promise<LevelStore> {
    const db = new Level<string, Uint8Array>(path, { valueEncoding: 'view' })
    try {
      await db.open()
    } catch (err) {
      if ((err as { cause?: { code?: string } }).cause?.code === 'LEVEL_LOCKED') {
        throw new StoreLockedError(
          `the store ${path} is in use by another process, most likely a rhizome daemon running with this data directory; stop it first, or work through it (--daemon URL)`
        )
      }
      throw err
    }
    return new LevelStore(db)
  }

  private async lastSeq(docId: string): Promise<number> {
    let seq = this.seqs.get(docId)
    if (seq === undefined) {
      const v = await this.db.get(`d!${docId}!n`)
      seq = v === undefined ? 0 : Number(decoder.decode(v))
      if (!Number.isSafeInteger(seq)) {
        throw new MalformedInputError(`store: bad sequence number for document "${docId}"`)
      }
      this.seqs.set(docId, seq)
    }
    return seq
  }

  async appendBatch(docId: string, bytes: Uint8Array): Promise<number> {
    this.check()
    const prev = this.tails.get(docId) ?? Promise.resolve()
    const next = prev
      .catch(() => {})
      .then(async () => {
        const seq = (await this.lastSeq(docId)) + 1
        await this.db.batch(
          [
            { type: 'put', key: `d!${docId}!b!${pad(seq)}`, value: bytes },
            { type: 'put', key: `d!${docId}!n`, value: utf8(String(seq)) }
          ],
          { sync: true }
        )
        this.seqs.set(docId, seq)
        return seq
      })
    this.tails.set(docId, next)
    return next
  }

  async batchesAfter(docId: string, after: number): Promise<StoredBatch[]> {
    this.check()
    const out: StoredBatch[] = []
    for await (const [key, value] of this.db.iterator({
      gt: `d!${docId}!b!${pad(after)}`,
      lt: `d!${docId}!b!~`
    })) {
      out.push({ seq: Number(key.slice(key.lastIndexOf('!') + 1)), bytes: value })
    }
    return out
  }

  async putSnapshot(docId: string, snapshot: Snapshot): Promise<void> {
    this.check()
    const ops: Array<
      { type: 'put'; key: string; value: Uint8Array } | { type: 'del'; key: string }
    > = [{ type: 'put', key: `d!${docId}!s`, value: encodeSnapshot(snapshot) }]
    for await (const key of this.db.keys({
      gt: `d!${docId}!b!`,
      lte: `d!${docId}!b!${pad(snapshot.upTo)}`
    })) {
      ops.push({ type: 'del', key })
    }
    await this.db.batch(ops, { sync: true })
  }

  async getSnapshot(docId: string): Promise<Snapshot | undefined> {
    this.check()
    const v = await this.db.get(`d!${docId}!s`)
    return v === undefined ? undefined : decodeSnapshot(v)
  }

  async listDocs(): Promise<string[]> {
    this.check()
    const docs = new Set<string>()
    for await (const key of this.db.keys({ gt: 'd!', lt: 'd!~' })) {
      docs.add(key.slice(2, key.indexOf('!', 2)))
    }
    return [...docs].sort()
  }

  async putTrust(version: number, bytes: Uint8Array): Promise<void> {
    this.check()
    await this.db.put(`t!${pad(version)}`, bytes, { sync: true })
  }

  async listTrust(): Promise<Uint8Array[]> {
    this.check()
    return this.db.values({ gt: 't!', lt: 't!~' }).all()
  }

  async getMeta(key: string): Promise<Uint8Array | undefined> {
    this.check()
    return this.db.get(`m!${key}`)
  }
  async putMeta(key: string, value: Uint8Array, opts?: { durable?: boolean }): Promise<void> {
    this.check()
    await this.db.put(`m!${key}`, value, { sync: opts?.durable ?? true })
  }
  async deleteMeta(key: string): Promise<void> {
    this.check()
    await this.db.del(`m!${key}`)
  }
  async listMeta(prefix: string): Promise<Array<[string, Uint8Array]>> {
    this.check()
    const out: Array<[string, Uint8Array]> = []
    for await (const [k, v] of this.db.iterator({ gte: `m!${prefix}`, lt: `m!${prefix}\uffff` })) {
      out.push([k.slice(2), v])
    }
    return out
  }

  async close(): Promise<void> {
    if (this.db.status === 'open') {
      await Promise.allSettled(this.tails.values())
      await this.db.close()
    }
  }

  private check(): void {
    if (this.db.status !== 'open') throw new ClosedError('the level store is closed')
  }
}
