/**
 * A document's history for people: who signed each change, when (the author's clock), with
 * what message, and what it changed, as the same value diff `rhizome apply` shows (set leaves,
 * deleted keys). One implementation for the daemon's `GET /api/history` and the dashboard.
 *
 * Cost. A change's diff is found from the change itself: its own operations name the objects
 * and keys it touched, and only those paths are read, before (at its dependencies) and after
 * (at the change), so a diff costs in proportion to the change, not to the document (building
 * two whole views of the document per change froze a daemon for half a minute on a 2,000-change
 * document). Diffs never change, so they are remembered (HISTORY_CACHE_ENTRIES). Reads are
 * paged, newest first (at most HISTORY_PAGE_MAX changes a page; the cursor is the hash of the
 * last change of the page), by the author's clock, then document, then the order applied, and
 * yield to the event loop every HISTORY_SLICE_MS.
 */
import * as Automerge from '@automerge/automerge'
import type { AbortOptions } from '@libp2p/interface'
import { diffMaps, plainValue, type DiffOp } from './config-diff.ts'
import type { SignedDocument } from './document.ts'
import { MalformedInputError } from './errors.ts'
import { actorKeyHex } from './signed-change.ts'
import type { KeyInfo } from './trust.ts'

/** Changes in one page at most. */
export const HISTORY_PAGE_MAX = 100
/** Changes in one page unless asked otherwise. */
export const HISTORY_PAGE_DEFAULT = 50
/** Longest string shown in a diff; longer ones are cut, saying how much was left out. */
export const HISTORY_VALUE_CHARS = 2000
/** Change diffs remembered (they never change). */
export const HISTORY_CACHE_ENTRIES = 4096
/** Longest stretch of work before yielding to the event loop, ms. */
export const HISTORY_SLICE_MS = 10

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

export interface HistoryPage {
  /** Newest first. */
  items: HistoryItem[]
  /** Pass as `before` for the next (older) page; null when there is none. */
  next: string | null
}

export interface HistoryQuery extends AbortOptions {
  /** Changes in the page (1 … HISTORY_PAGE_MAX). */
  limit?: number
  /** A `next` cursor from the previous page. */
  before?: string
  /** Who a signer key is (the replica's trust chain). */
  lookup: (key: string) => KeyInfo | undefined
}

/** A change's place in history: the author's clock, then the document, then the order applied here. */
interface Entry {
  hash: string
  time: number
  doc: string
  seq: number
}

/** A document's changes sorted by `compare`, kept up to date as changes are added. */
interface Ordered {
  seen: number
  /** The last hash seen, to notice a document rebuilt rather than grown (then start over). */
  last: string | undefined
  entries: Entry[]
  byHash: Map<string, Entry>
}

const ordered = new WeakMap<SignedDocument, Ordered>()
const diffs = new Map<string, DiffOp[]>()

type Backend = ReturnType<typeof Automerge.getBackend>
type Prop = string | number

const compare = (a: Entry, b: Entry): number =>
  a.time - b.time || (a.doc < b.doc ? -1 : a.doc > b.doc ? 1 : 0) || a.seq - b.seq

// setImmediate where there is one (Node), else a timer (browsers, workers).
const yieldNow: (f: () => void) => void =
  typeof setImmediate === 'function' ? f => setImmediate(f) : f => setTimeout(f, 0)

/** Yields to the event loop when a slice of work has run long enough. */
class Slicer {
  private start = performance.now()
  private readonly signal: AbortSignal | undefined
  constructor(signal: AbortSignal | undefined) {
    this.signal = signal
  }
  async tick(): Promise<void> {
    this.signal?.throwIfAborted()
    if (performance.now() - this.start < HISTORY_SLICE_MS) return
    await new Promise<void>(resolve => yieldNow(resolve))
    this.signal?.throwIfAborted()
    this.start = performance.now()
  }
}

async function orderedEntries(doc: SignedDocument, slicer: Slicer): Promise<Ordered> {
  let o = ordered.get(doc)
  if (o === undefined) {
    o = { seen: 0, last: undefined, entries: [], byHash: new Map() }
    ordered.set(doc, o)
  }
  const hashes = doc.changeHashes()
  if (hashes.length < o.seen || (o.seen > 0 && hashes[o.seen - 1] !== o.last)) {
    o = { seen: 0, last: undefined, entries: [], byHash: new Map() }
    ordered.set(doc, o)
  }
  if (o.seen < hashes.length) {
    // The change index only grows at its end: only the new changes are looked up.
    const added: Entry[] = []
    for (let i = o.seen; i < hashes.length; i++) {
      const hash = hashes[i] as string
      const meta = Automerge.getBackend(doc.value).getChangeMetaByHash(hash)
      if (meta !== null) {
        const e = { hash, time: meta.time, doc: doc.id, seq: i }
        added.push(e)
        o.byHash.set(hash, e)
      }
      if (i % 256 === 0) await slicer.tick()
    }
    o.entries = [...o.entries, ...added].sort(compare)
    o.seen = hashes.length
    o.last = hashes.at(-1)
  }
  return o
}

/** The change a cursor names, among the documents read. */
function parseCursor(before: string | undefined, held: Ordered[]): Entry | undefined {
  if (before === undefined) return undefined
  const hash = /^[0-9a-f]{64}$/.test(before) ? before : undefined
  const e = hash === undefined ? undefined : held.map(o => o.byHash.get(hash)).find(x => x)
  if (e === undefined) {
    throw new MalformedInputError(
      `"${before.slice(0, 80)}" is not a history cursor of these documents; pass the \`next\` value of the previous page`
    )
  }
  return e
}

/** Index of the first entry not older than `cursor` (entries are sorted oldest first). */
function olderThan(entries: Entry[], cursor: Entry | undefined): number {
  if (cursor === undefined) return entries.length
  let lo = 0
  let hi = entries.length
  while (lo < hi) {
    const mid = (lo + hi) >> 1
    if (compare(entries[mid] as Entry, cursor) < 0) lo = mid + 1
    else hi = mid
  }
  return lo
}

/**
 * One page of the history of `docs`, merged, newest first. Throws MalformedInputError for a
 * cursor that is not one; an aborted signal stops it between changes.
 */
export async function historyPage(
  docs: SignedDocument[],
  query: HistoryQuery
): Promise<HistoryPage> {
  const limit = Math.min(HISTORY_PAGE_MAX, Math.max(1, query.limit ?? HISTORY_PAGE_DEFAULT))
  const slicer = new Slicer(query.signal)
  const held: Ordered[] = []
  for (const doc of docs) held.push(await orderedEntries(doc, slicer))
  const cursor = parseCursor(query.before, held)
  const candidates: Array<Entry & { of: SignedDocument }> = []
  let more = false
  for (const [i, o] of held.entries()) {
    const end = olderThan(o.entries, cursor)
    const from = Math.max(0, end - limit)
    if (from > 0) more = true
    const of = docs[i] as SignedDocument
    for (const e of o.entries.slice(from, end)) candidates.push({ ...e, of })
  }
  candidates.sort((a, b) => compare(b, a))
  if (candidates.length > limit) more = true
  const page = candidates.slice(0, limit)
  const items: HistoryItem[] = []
  for (const e of page) {
    await slicer.tick()
    const meta = Automerge.getBackend(e.of.value).getChangeMetaByHash(e.hash)
    if (meta === null) continue
    const signer = actorKeyHex(meta.actor)
    const info = query.lookup(signer)
    items.push({
      doc: e.of.id,
      hash: e.hash,
      signer,
      signerName: info?.name ?? null,
      role: info?.role ?? null,
      time: meta.time,
      message: meta.message ?? null,
      deps: meta.deps,
      diff: changeDiff(e.of, e.hash, meta.deps)
    })
  }
  const last = page.at(-1)
  return { items, next: more && last !== undefined ? last.hash : null }
}

/**
 * What one change did to its document's value, as `diffMaps` of the value before and after it
 * would say (arrays and strings are leaves), found from the change's own operations.
 */
export function changeDiff(doc: SignedDocument, hash: string, deps: string[]): DiffOp[] {
  const key = `${doc.id}/${hash}`
  const known = diffs.get(key)
  if (known !== undefined) return known
  const b = Automerge.getBackend(doc.value)
  const decoded = b.getDecodedChangeByHash(hash)
  if (decoded === null) return []
  const touched = new Map<string, Prop[]>()
  const objectPaths = new Map<string, Prop[] | null>()
  for (const op of decoded.ops) {
    let base = objectPaths.get(op.obj)
    if (base === undefined) {
      base = op.obj === '_root' ? [] : (pathOf(b, op.obj, [hash]) ?? pathOf(b, op.obj, deps))
      objectPaths.set(op.obj, base)
    }
    if (base === null) continue
    // A map operation touches one key; a list or text operation touches the whole list or text.
    const path = typeof op.key === 'string' ? [...base, op.key] : base
    if (path.length > 0) touched.set(JSON.stringify(path), path)
  }
  const ops: DiffOp[] = []
  for (const path of outermost([...touched.values()])) {
    const leaf = leafPath(b, path, deps, [hash])
    if (leaf.length === 0) continue
    const before = readAt(b, leaf, deps)
    const after = readAt(b, leaf, [hash])
    const k = String(leaf.at(-1))
    ops.push(
      ...diffMaps(
        before === undefined ? {} : { [k]: before },
        after === undefined ? {} : { [k]: after },
        leaf.slice(0, -1).map(String)
      )
    )
  }
  ops.sort((x, y) => (x.path.join('\u0000') < y.path.join('\u0000') ? -1 : 1))
  const out = ops.map(bounded)
  if (diffs.size >= HISTORY_CACHE_ENTRIES) diffs.delete(diffs.keys().next().value as string)
  diffs.set(key, out)
  return out
}

function pathOf(b: Backend, obj: string, heads: string[]): Prop[] | null {
  try {
    return b.objInfo(obj, heads).path ?? null
  } catch {
    return null
  }
}

/** Paths with no touched ancestor: a change that replaced a map also wrote inside the new one. */
function outermost(paths: Prop[][]): Prop[][] {
  const keys = new Set(paths.map(p => JSON.stringify(p)))
  return paths.filter(p => {
    for (let i = 1; i < p.length; i++) if (keys.has(JSON.stringify(p.slice(0, i)))) return false
    return true
  })
}

/**
 * The path cut at the first list or text on it, at either revision: lists and strings are
 * leaves of a config diff, as in `diffMaps`.
 */
function leafPath(b: Backend, path: Prop[], ...revisions: string[][]): Prop[] {
  let end = path.length
  for (const heads of revisions) {
    let obj = '_root'
    for (let i = 0; i < end - 1; i++) {
      const v = b.getWithType(obj, path[i] as Prop, heads)
      if (v === null || v === undefined || v[0] !== 'map') {
        if (v !== null && v !== undefined && (v[0] === 'list' || v[0] === 'text')) end = i + 1
        break
      }
      obj = v[1]
    }
  }
  return path.slice(0, end)
}

/** The plain value at `path` at a revision; undefined where there is none. */
function readAt(b: Backend, path: Prop[], heads: string[]): unknown {
  let obj = '_root'
  let v: ReturnType<Backend['getWithType']> = null
  for (const seg of path) {
    if (v !== null) {
      if (v[0] !== 'map' && v[0] !== 'list') return undefined
      obj = v[1]
    }
    v = b.getWithType(obj, seg, heads)
    if (v === null || v === undefined) return undefined
  }
  if (v === null) return undefined
  switch (v[0]) {
    case 'map':
    case 'list':
    case 'text':
      return plainValue(b.materialize(v[1], heads))
    default:
      return plainValue(v[1])
  }
}

function cut(v: unknown): unknown {
  if (typeof v === 'string') {
    return v.length <= HISTORY_VALUE_CHARS
      ? v
      : `${v.slice(0, HISTORY_VALUE_CHARS)}… (${v.length - HISTORY_VALUE_CHARS} more characters)`
  }
  if (Array.isArray(v)) return v.map(cut)
  if (typeof v === 'object' && v !== null) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, cut(x)]))
  }
  return v
}

function bounded(o: DiffOp): DiffOp {
  if (o.op === 'delete') return { ...o, old: cut(o.old) }
  return o.had ? { ...o, value: cut(o.value), old: cut(o.old) } : { ...o, value: cut(o.value) }
}
