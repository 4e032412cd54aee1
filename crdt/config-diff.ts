/**
 * The smallest change that makes a document equal a desired value, as used by `rhizome apply`
 * and `rhizome rollback`: a recursive diff of maps that sets changed leaves and deletes removed
 * keys, leaving unchanged values alone (so concurrent edits elsewhere in the document merge).
 * Arrays and scalars are leaves: a changed one is replaced whole.
 */
import * as Automerge from '@automerge/automerge'
import { stringify } from 'yaml'
import { isMap } from './config-shape.ts'
import { documentSchema } from './document-schema.ts'
import type { SignedDocument, Signer } from './document.ts'
import type { SignedBatch } from './signed-change.ts'

export type Path = string[]
export type DiffOp =
  | { op: 'set'; path: Path; value: unknown; old?: unknown; had: boolean }
  | { op: 'delete'; path: Path; old: unknown }

/** A mapping, not Automerge bytes (a Uint8Array is an object too, and is compared whole). */
const isMapNotBytes = (v: unknown): v is Record<string, unknown> =>
  isMap(v) && !(v instanceof Uint8Array)

/** A plain JSON-like copy (Automerge proxies, text and counters become plain values). */
export function plainValue(v: unknown): unknown {
  if (v === undefined) return null
  return JSON.parse(JSON.stringify(v) ?? 'null')
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true
  if (Array.isArray(a) && Array.isArray(b)) {
    return a.length === b.length && a.every((x, i) => deepEqual(x, b[i]))
  }
  if (isMapNotBytes(a) && isMapNotBytes(b)) {
    const ka = Object.keys(a)
    if (ka.length !== Object.keys(b).length) return false
    return ka.every(k => Object.hasOwn(b, k) && deepEqual(a[k], b[k]))
  }
  return false
}

/** Operations turning `current` (a map) into `desired` (a map), keys in sorted order. */
export function diffMaps(
  current: Record<string, unknown>,
  desired: Record<string, unknown>,
  path: Path = []
): DiffOp[] {
  const ops: DiffOp[] = []
  const keys = [...new Set([...Object.keys(current), ...Object.keys(desired)])].sort()
  for (const k of keys) {
    const p = [...path, k]
    const has = Object.hasOwn(current, k)
    const want = Object.hasOwn(desired, k)
    if (!want) {
      ops.push({ op: 'delete', path: p, old: current[k] })
      continue
    }
    const a = current[k]
    const b = desired[k]
    if (has && isMapNotBytes(a) && isMapNotBytes(b)) ops.push(...diffMaps(a, b, p))
    else if (!has || !deepEqual(a, b)) {
      ops.push(
        has
          ? { op: 'set', path: p, value: b, old: a, had: true }
          : { op: 'set', path: p, value: b, had: false }
      )
    }
  }
  return ops
}

/** Where in a config document values are stored as immutable strings (`storedValue`). */
const IMMUTABLE_LISTS: readonly Path[] = [['rollouts', '*', 'eligible']]

/**
 * `v` as it is written at `path` (from the document's root): as it is, except the lists of
 * `IMMUTABLE_LISTS`, whose strings are stored as `Automerge.ImmutableString`s. Automerge stores
 * any other string as collaborative text, one operation per character: a rollout's frozen list of
 * 10,000 node keys was 640,000 operations, which every peer (and a dashboard) decoded in one
 * synchronous call before verifying the change (2.1 s here; 0.3 s for 1,000 nodes). Read back,
 * such a string is an `ImmutableString` (`plainValue` and `parseRollout` turn it into a string).
 */
export function storedValue(path: Path, v: unknown): unknown {
  const under = IMMUTABLE_LISTS.filter(
    l => path.length <= l.length && path.every((seg, i) => l[i] === '*' || l[i] === seg)
  )
  if (under.length === 0) return v
  if (under.some(l => l.length === path.length)) {
    if (!Array.isArray(v)) return v
    return v.map(x => (typeof x === 'string' ? new Automerge.ImmutableString(x) : x))
  }
  if (!isMapNotBytes(v)) return v
  const out: Record<string, unknown> = {}
  for (const [k, x] of Object.entries(v)) {
    Object.defineProperty(out, k, {
      value: storedValue([...path, k], x),
      enumerable: true,
      writable: true,
      configurable: true
    })
  }
  return out
}

/**
 * Apply operations to a mutable map (an Automerge change proxy or a plain object), paths from
 * the document's root; values as `storedValue` writes them.
 */
export function applyOps(target: Record<string, unknown>, ops: DiffOp[]): void {
  for (const o of ops) {
    let node = target
    for (const seg of o.path.slice(0, -1)) {
      let next = node[seg]
      if (!isMapNotBytes(next)) {
        node[seg] = {}
        next = node[seg]
      }
      node = next as Record<string, unknown>
    }
    const last = o.path.at(-1) as string
    if (o.op === 'delete') delete node[last]
    else node[last] = storedValue(o.path, plainValue(o.value))
  }
}

function show(v: unknown): string {
  if (isMapNotBytes(v) || Array.isArray(v)) return JSON.stringify(v)
  return stringify(v, { lineWidth: 0 }).trimEnd()
}

function showPath(path: Path): string {
  return path.map(s => (/^[A-Za-z0-9_-]+$/.test(s) ? s : JSON.stringify(s))).join('.')
}

/** `+ path = value` / `- path = old` lines, as people read them in `apply` and `history`. */
export function formatOps(ops: DiffOp[], prefix = ''): string[] {
  const out: string[] = []
  for (const o of ops) {
    const p = prefix === '' ? showPath(o.path) : `${prefix}:${showPath(o.path)}`
    if (o.op === 'delete') out.push(`- ${p} = ${show(o.old)}`)
    else {
      if (o.had) out.push(`- ${p} = ${show(o.old)}`)
      out.push(`+ ${p} = ${show(o.value)}`)
    }
  }
  return out
}

/**
 * The operations that make a document's value equal `desired` (`rhizome apply`, `rollback`,
 * the dashboard's editor). The document's top-level maps (its genesis schema) count as present
 * in `desired`: a fleet file that leaves out `groups:` empties that map and never deletes it,
 * since a deleted one would be created again concurrently by two writers and one of them lost.
 */
export function diffDocument(
  doc: Pick<SignedDocument, 'id' | 'value'>,
  desired: Record<string, unknown>
): DiffOp[] {
  const current = (plainValue(doc.value) ?? {}) as Record<string, unknown>
  return diffMaps(current, { ...documentSchema(doc.id), ...desired })
}

/** Sign, as one change of `doc`, operations from `diffDocument`; undefined if they change nothing. */
export function signOps(
  doc: SignedDocument,
  signer: Signer,
  ops: DiffOp[],
  message: string
): Promise<SignedBatch | undefined> {
  return doc.change(
    signer,
    d => {
      applyOps(d, ops)
    },
    message
  )
}
