/**
 * Turning a gossiped status record into a `NodeStatus` the views can rely on, and the judgements
 * the overview makes from it (in sync or behind, healthy or not). Status bodies are JSON from
 * other processes, so every field is checked and bounded here, once.
 */
import type { DocView, NodeStatus, WorkloadView } from './fleet-source.ts'

const MAX_LIST = 500
const MAX_LOG_LINES = 50

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}
const str = (v: unknown, fallback = ''): string =>
  typeof v === 'string' ? v.slice(0, 1000) : fallback
const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0)
const strings = (v: unknown): string[] =>
  Array.isArray(v) ? v.slice(0, MAX_LIST).filter((x): x is string => typeof x === 'string') : []

function headsMap(v: unknown): Record<string, string[]> {
  const out: Record<string, string[]> = {}
  if (isMap(v)) {
    for (const [k, h] of Object.entries(v).slice(0, MAX_LIST)) out[k] = strings(h).sort()
  }
  return out
}

function workload(v: unknown): WorkloadView {
  const w = isMap(v) ? v : {}
  return {
    state: str(w.state, 'unknown'),
    healthy: typeof w.healthy === 'boolean' ? w.healthy : null,
    restarts: num(w.restarts),
    version: typeof w.version === 'string' ? w.version : undefined,
    pid: typeof w.pid === 'number' ? w.pid : undefined,
    log: strings(w.log).slice(-MAX_LOG_LINES)
  }
}

export interface RawStatus {
  node: string
  peerId: string
  body: Record<string, unknown>
  receivedAt: number
  stale: boolean
}

export function nodeStatus(r: RawStatus, now: number, staleAfterMs: number): NodeStatus {
  const b = r.body
  const labels: Record<string, string> = {}
  if (isMap(b.labels)) {
    for (const [k, v] of Object.entries(b.labels).slice(0, 64)) labels[k] = String(v)
  }
  const workloads: Record<string, WorkloadView> = {}
  if (isMap(b.workloads)) {
    for (const [k, v] of Object.entries(b.workloads).slice(0, 64)) workloads[k] = workload(v)
  }
  const files = isMap(b.files)
    ? { ok: b.files.ok !== false, drifted: strings(b.files.drifted) }
    : { ok: true, drifted: [] }
  return {
    node: r.node,
    peerId: r.peerId,
    name: str(b.name, r.node.slice(0, 12)),
    labels,
    revision: headsMap(b.revision),
    applied: headsMap(b.applied),
    workloads,
    files,
    peers: strings(b.peers),
    errors: strings(b.errors).slice(0, 20),
    startedAt: num(b.startedAt),
    at: num(b.at),
    receivedAt: r.receivedAt,
    // The mesh marks a record stale when no newer one came within staleAfterMs; the page
    // re-checks against its own clock so a node turns stale even between mesh events.
    stale: r.stale || now - r.receivedAt > staleAfterMs
  }
}

export type SyncState = 'in-sync' | 'behind' | 'ahead-or-diverged' | 'unknown'

const sameHeads = (a: string[] | undefined, b: string[]): boolean =>
  a !== undefined && a.length === b.length && a.every((h, i) => h === b[i])

/**
 * Whether a node applied the latest revision of every document this page holds. A document the
 * node neither holds nor applied (a scoped document not meant for it) is not judged.
 * `n.newer` lists documents where the node applied heads this page does not hold yet.
 */
export function syncState(n: NodeStatus, docs: DocView[]): SyncState {
  if (docs.length === 0) return 'unknown'
  let newer = false
  let judged = 0
  for (const d of docs) {
    if (d.heads.length === 0) continue
    const applied = n.applied[d.id]
    if (applied === undefined && n.revision[d.id] === undefined) continue
    judged++
    if (sameHeads(applied, d.heads)) continue
    if (n.newer?.includes(d.id) === true) {
      newer = true
      continue
    }
    return 'behind'
  }
  if (judged === 0) return 'unknown'
  return newer ? 'ahead-or-diverged' : 'in-sync'
}

export type Health = 'healthy' | 'degraded' | 'failing' | 'idle'

export function health(n: NodeStatus): { health: Health; healthy: number; total: number } {
  const ws = Object.values(n.workloads)
  const healthy = ws.filter(w => w.state === 'running' && w.healthy !== false).length
  const failing = ws.filter(w => w.state === 'crashed' || w.healthy === false).length
  const total = ws.length
  let h: Health = 'healthy'
  if (total === 0) h = 'idle'
  else if (failing === total) h = 'failing'
  else if (failing > 0 || healthy < total || !n.files.ok || n.errors.length > 0) h = 'degraded'
  return { health: h, healthy, total }
}

/** A short form of a revision for people: the first 7 characters of each head. */
export function shortHeads(heads: string[] | undefined): string {
  if (heads === undefined || heads.length === 0) return '—'
  return heads.map(h => h.slice(0, 7)).join('+')
}

export function ago(ms: number, now: number): string {
  if (ms <= 0) return 'never'
  const s = Math.max(0, Math.round((now - ms) / 1000))
  if (s < 5) return 'just now'
  if (s < 60) return `${s} s ago`
  const m = Math.round(s / 60)
  if (m < 60) return `${m} min ago`
  const h = Math.round(m / 60)
  if (h < 48) return `${h} h ago`
  return `${Math.round(h / 24)} d ago`
}
