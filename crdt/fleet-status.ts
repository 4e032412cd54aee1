/**
 * The status contract: what a node reports about itself (its status body, carried inside the
 * signed status record of mesh/status-record.ts), the one parser every reader uses, and the
 * judgements made from it: whether a node applied the latest revision, whether it is healthy,
 * and the fleet as a list of enrolled nodes joined with their records. The daemon builds bodies
 * (node/status-report.ts) and serves the fleet list (`GET /api/status`); the CLI and the
 * dashboard read them through this file, so they cannot disagree. Browser-safe, no I/O.
 *
 * A status body, as JSON (times are ms since the epoch, heads are sorted change hashes):
 * ```ts
 * { name, labels: { k: v },
 *   revision: { <docId>: heads },        // what the node holds
 *   applied:  { <docId>: heads },        // what its running state was made from
 *   workloads: { <name>: { state: 'running'|'starting'|'crashed'|'stopped', healthy: boolean|null,
 *                          restarts, version?, pid?, log: [last lines] } },
 *   files: { ok,                        // false: a managed file could not be written (see errors)
 *            drifted: [paths put back within DRIFT_SHOWN_MS, newest first],
 *            putBackAt?: { <path>: when it was put back } },  // absent in records of older daemons
 *   peers: [peerId...], errors: [config problems found while applying], startedAt, at,
 *   artifacts?: { <digest>: { state: 'complete'|'fetching'|'waiting'|'failed', name?, size?,
 *                             held, peers, rate (bytes/s), eta? (s), reason? } },
 *   rollouts?: { <doc>:<name>: { digest, seenAt, switchedAt?, soakedAt?, failedAt?, ... } },  // crdt/rollout-gate.ts
 *   tryMode?: { lastKnownGood?, rolledBack?: { digest, at, reason } } }                      // node/rollout-agent.ts
 * ```
 * Bodies come from other processes and are only as well-shaped as their signer made them:
 * `parseStatusBody` checks and bounds every field, and never throws.
 */
import { parseReports, type RolloutReport } from './rollout-gate.ts'
import { entriesOf, isMap } from './config-shape.ts'

/** Bounds on a parsed body: entries per map or list, characters per string. */
export const STATUS_LIMITS = {
  entries: 500,
  labels: 64,
  workloads: 64,
  logLines: 50,
  errors: 20,
  artifacts: 32,
  rollouts: 32,
  text: 1000
} as const

/**
 * How long a file put back after a hand edit is reported, ms: the daemon leaves it out of its
 * body after that, and readers leave it out of records that old (a node that went down keeps
 * its last record).
 */
export const DRIFT_SHOWN_MS = 10 * 60_000

export const WORKLOAD_STATES = ['running', 'starting', 'crashed', 'stopped'] as const
/** A workload's state; `unknown` when a body names a state this version does not know. */
export type WorkloadState = (typeof WORKLOAD_STATES)[number] | 'unknown'

export interface WorkloadStatus {
  state: WorkloadState
  /** The health probe's verdict; null without a probe or before its first answer. */
  healthy: boolean | null
  restarts: number
  version?: string
  pid?: number
  log: string[]
}

export const ARTIFACT_STATES = ['complete', 'fetching', 'waiting', 'failed'] as const

/** One artifact the node's config references (node/artifacts/). */
export interface ArtifactStatus {
  state: (typeof ARTIFACT_STATES)[number]
  name?: string
  size?: number
  /** Bytes held. */
  held: number
  /** Peers it is being fetched from. */
  peers: number
  /** Bytes per second. */
  rate: number
  /** Seconds to completion. */
  eta?: number
  reason?: string
}

export interface StatusBody {
  name: string
  labels: Record<string, string>
  revision: Record<string, string[]>
  applied: Record<string, string[]>
  workloads: Record<string, WorkloadStatus>
  files: FilesStatus
  peers: string[]
  /** Config problems found while applying (bad paths, bad workload specs), at most STATUS_LIMITS.errors. */
  errors: string[]
  startedAt: number
  at: number
  /** Referenced artifacts by digest; absent when there are none. */
  artifacts?: Record<string, ArtifactStatus>
  /**
   * What the node did about each rollout, by rollout id (crdt/rollout-gate.ts: facts it keeps for
   * good and never trims, as other nodes gate and abort on them); absent when none.
   */
  rollouts?: Record<string, RolloutReport>
  /** Try mode rolled back a config after which the node reached no peer; absent otherwise. */
  tryMode?: TryModeStatus
  /**
   * Whether the node may be kept on old state (crdt/beacon.ts): `stale` when its newest freeze
   * beacon expired or names what it lacks; absent when the fleet issues no beacons.
   */
  freshness?: FreshnessStatus
}

export interface FilesStatus {
  /** false when a managed file could not be written; the reason is among the body's errors. */
  ok: boolean
  /** Managed files changed by hand and put back, within DRIFT_SHOWN_MS, newest first. */
  drifted: string[]
  /** When each of `drifted` was put back (the node's clock); absent from older daemons' records. */
  putBackAt?: Record<string, number>
}

export interface FreshnessStatus {
  state: 'fresh' | 'stale'
  reason?: 'expired' | 'behind'
  /** When the newest beacon held expires(d), ms since the epoch. */
  expires: number
}

export interface TryModeStatus {
  /** Digest of the last config known good on the node. */
  lastKnownGood?: string
  rolledBack?: { digest: string; at: number; reason: string }
}

const text = (v: unknown, fallback = ''): string =>
  typeof v === 'string' ? v.slice(0, STATUS_LIMITS.text) : fallback
/** Paths put back that a body may list (the daemon reports at most 20: node/appliers/files.ts). */
const MAX_DRIFTED = 50
const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0)
const texts = (v: unknown, max: number = STATUS_LIMITS.entries): string[] =>
  Array.isArray(v)
    ? v
        .slice(0, max)
        .filter((x): x is string => typeof x === 'string')
        .map(x => x.slice(0, STATUS_LIMITS.text))
    : []

function headsMap(v: unknown): Record<string, string[]> {
  const out: Record<string, string[]> = {}
  if (isMap(v)) {
    for (const [k, h] of entriesOf(v, STATUS_LIMITS.entries)) out[k] = texts(h).sort()
  }
  return out
}

function workload(v: unknown): WorkloadStatus {
  const w = isMap(v) ? v : {}
  const state = (WORKLOAD_STATES as readonly unknown[]).includes(w.state)
    ? (w.state as WorkloadState)
    : 'unknown'
  const out: WorkloadStatus = {
    state,
    healthy: typeof w.healthy === 'boolean' ? w.healthy : null,
    restarts: num(w.restarts),
    log: texts(w.log, Infinity).slice(-STATUS_LIMITS.logLines)
  }
  if (typeof w.version === 'string') out.version = text(w.version)
  if (typeof w.pid === 'number') out.pid = w.pid
  return out
}

function artifact(v: unknown): ArtifactStatus | undefined {
  if (!isMap(v) || !(ARTIFACT_STATES as readonly unknown[]).includes(v.state)) return undefined
  const out: ArtifactStatus = {
    state: v.state as ArtifactStatus['state'],
    held: num(v.held),
    peers: num(v.peers),
    rate: num(v.rate)
  }
  if (typeof v.name === 'string') out.name = text(v.name)
  if (typeof v.size === 'number') out.size = num(v.size)
  if (typeof v.eta === 'number') out.eta = num(v.eta)
  if (typeof v.reason === 'string') out.reason = text(v.reason)
  return out
}

function filesStatus(f: Record<string, unknown>): FilesStatus {
  const out: FilesStatus = { ok: f.ok !== false, drifted: texts(f.drifted, MAX_DRIFTED) }
  if (isMap(f.putBackAt)) {
    const at: Record<string, number> = {}
    for (const p of out.drifted) {
      const t = f.putBackAt[p]
      if (typeof t === 'number' && Number.isFinite(t)) at[p] = t
    }
    out.putBackAt = at
  }
  return out
}

/** A status body from JSON of unknown shape: every field checked and bounded; missing ones empty. */
export function parseStatusBody(v: unknown, fallbackName = ''): StatusBody {
  const b = isMap(v) ? v : {}
  const labels: Record<string, string> = {}
  if (isMap(b.labels)) {
    for (const [k, l] of entriesOf(b.labels, STATUS_LIMITS.labels)) {
      labels[k] = text(String(l))
    }
  }
  const workloads: Record<string, WorkloadStatus> = {}
  if (isMap(b.workloads)) {
    for (const [k, w] of entriesOf(b.workloads, STATUS_LIMITS.workloads)) {
      workloads[k] = workload(w)
    }
  }
  const body: StatusBody = {
    name: text(b.name, fallbackName),
    labels,
    revision: headsMap(b.revision),
    applied: headsMap(b.applied),
    workloads,
    files: isMap(b.files) ? filesStatus(b.files) : { ok: true, drifted: [] },
    peers: texts(b.peers),
    errors: texts(b.errors, STATUS_LIMITS.errors),
    startedAt: num(b.startedAt),
    at: num(b.at)
  }
  if (isMap(b.artifacts)) {
    const artifacts: Record<string, ArtifactStatus> = {}
    for (const [k, a] of entriesOf(b.artifacts, STATUS_LIMITS.artifacts)) {
      const parsed = artifact(a)
      if (parsed !== undefined) artifacts[k] = parsed
    }
    if (Object.keys(artifacts).length > 0) body.artifacts = artifacts
  }
  const rollouts = parseReports(b.rollouts, STATUS_LIMITS.rollouts)
  if (Object.keys(rollouts).length > 0) body.rollouts = rollouts
  if (isMap(b.tryMode)) {
    const t = b.tryMode
    const tryMode: TryModeStatus = {}
    if (typeof t.lastKnownGood === 'string') tryMode.lastKnownGood = text(t.lastKnownGood)
    if (isMap(t.rolledBack)) {
      tryMode.rolledBack = {
        digest: text(t.rolledBack.digest),
        at: num(t.rolledBack.at),
        reason: text(t.rolledBack.reason)
      }
    }
    body.tryMode = tryMode
  }
  if (isMap(b.freshness) && (b.freshness.state === 'fresh' || b.freshness.state === 'stale')) {
    const f: FreshnessStatus = { state: b.freshness.state, expires: num(b.freshness.expires) }
    if (b.freshness.reason === 'expired' || b.freshness.reason === 'behind') {
      f.reason = b.freshness.reason
    }
    body.freshness = f
  }
  return body
}

/**
 * Whether a node applied the latest revision: `in-sync` (every document), `behind` (some
 * document), `ahead-or-diverged` (it applied heads the judge does not hold yet, so the judge is
 * the one behind, or both moved), `unknown` (nothing to judge against).
 */
export type SyncState = 'in-sync' | 'behind' | 'ahead-or-diverged' | 'unknown'

export const SYNC_LABEL: Record<SyncState, string> = {
  'in-sync': 'up to date',
  behind: 'behind',
  'ahead-or-diverged': 'newer than this view',
  unknown: 'unknown'
}

function sameHeads(a: string[] | undefined, b: string[]): boolean {
  if (a === undefined || a.length !== b.length) return false
  const sa = [...a].sort()
  const sb = [...b].sort()
  return sa.every((h, i) => h === sb[i])
}

/**
 * The "up to date" rule, the same for the CLI, the API and the dashboard: a node is in sync
 * when, for every document the judge holds with any change, it applied exactly the judge's
 * heads. Every document counts, `devices` included (a node's enrolment decides its name and
 * labels, so what it runs). `holds(doc, heads)` says whether the judge holds those heads; a
 * node whose different heads the judge does not hold is ahead (or diverged), not behind.
 */
export function syncState(
  applied: Record<string, string[]>,
  latest: Record<string, string[]>,
  holds?: (docId: string, heads: string[]) => boolean
): SyncState {
  let judged = 0
  let newer = false
  for (const [id, heads] of Object.entries(latest)) {
    if (heads.length === 0) continue
    judged++
    const mine = applied[id]
    if (sameHeads(mine, heads)) continue
    if (mine !== undefined && mine.length > 0 && holds?.(id, mine) === false) {
      newer = true
      continue
    }
    return 'behind'
  }
  if (judged === 0) return 'unknown'
  return newer ? 'ahead-or-diverged' : 'in-sync'
}

export type Health = 'healthy' | 'degraded' | 'failing' | 'idle'

/**
 * A node's health from its body, the one rule for every count and every label: `failing` when
 * every workload crashed or fails its probe; `degraded` when some do, some are not running yet,
 * or the node reports config problems (`errors`, which name every managed file it could not
 * write: `files.ok` false); `idle` with no workloads and no problems. Files put back after a hand
 * edit are no problem: the node did its job. `problems` is the number of errors, so a label can
 * say why a node whose workloads are all healthy is degraded.
 */
export function health(b: StatusBody): {
  health: Health
  healthy: number
  total: number
  problems: number
} {
  const ws = Object.values(b.workloads)
  const healthy = ws.filter(w => w.state === 'running' && w.healthy !== false).length
  const failing = ws.filter(w => w.state === 'crashed' || w.healthy === false).length
  const total = ws.length
  // A file that could not be written is among the errors; `ok` alone counts when it is not.
  const problems = Math.max(b.errors.length, b.files.ok ? 0 : 1)
  let h: Health = 'healthy'
  if (total > 0 && failing === total) h = 'failing'
  else if (failing > 0 || healthy < total || problems > 0) h = 'degraded'
  else if (total === 0) h = 'idle'
  return { health: h, healthy, total, problems }
}

/** The health label every view shows: "2/3 healthy", "none", with "· 1 config error" after. */
export function healthLabel(h: ReturnType<typeof health>): string {
  const base = h.total === 0 ? 'no workloads' : `${h.healthy}/${h.total} healthy`
  if (h.problems === 0) return base
  return `${base} · ${h.problems} config error${h.problems === 1 ? '' : 's'}`
}

/** A managed file a node put back after a hand edit. */
export interface PutBack {
  path: string
  /** When, on the reader's clock; null when the record does not say (older daemons). */
  at: number | null
}

/**
 * The files a node put back within DRIFT_SHOWN_MS of `now` (the reader's clock), newest first:
 * the one rule for every view. The node's own times are moved onto the reader's clock by the
 * record's age (`lastSeen` is when it arrived, `status.at` when the node made it), so a node
 * whose clock is off still ages out right. Paths without a time (older daemons) are listed as
 * they are: nothing says when they were put back.
 */
export function recentPutBacks(
  node: { status: StatusBody | null; lastSeen: number | null },
  now: number
): PutBack[] {
  const files = node.status?.files
  if (files === undefined) return []
  const at = files.putBackAt
  if (at === undefined) return files.drifted.map(path => ({ path, at: null }))
  const shift = node.lastSeen === null ? 0 : node.lastSeen - (node.status?.at ?? node.lastSeen)
  const out: PutBack[] = []
  for (const path of files.drifted) {
    const t = at[path]
    if (t === undefined) continue
    const local = t + shift
    if (now - local <= DRIFT_SHOWN_MS) out.push({ path, at: local })
  }
  return out.sort((a, b) => (b.at ?? 0) - (a.at ?? 0))
}

/** A short form of a revision for people: the first 7 characters of each head. */
export function shortHeads(heads: string[] | undefined): string {
  if (heads === undefined || heads.length === 0) return '—'
  return heads.map(h => h.slice(0, 7)).join('+')
}

/** How long ago `ms` was, for people ("12 s ago"); `never` for 0 or less. */
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

/** A status record as a peer holds it (structurally mesh/types.ts `StatusRecord`). */
export interface ReceivedStatus {
  node: string
  peerId: string
  body: unknown
  /** Local clock when the record arrived. */
  receivedAt: number
  /** No newer record came within the stale period. */
  stale: boolean
}

/** One node of the fleet, as the API and the views show it. */
export interface FleetNode {
  /** Its ed25519 public key, hex. */
  key: string
  peerId: string
  name: string
  labels: Record<string, string>
  enrolled: boolean
  /** The daemon (or page) that made this list. */
  self: boolean
  online: boolean
  /** Null when no record of this node has been seen. */
  stale: boolean | null
  /** When its newest record arrived (local clock); null when none has. */
  lastSeen: number | null
  sync: SyncState
  /** `sync === 'in-sync'`; null when it cannot be judged (no record, nothing to judge). */
  upToDate: boolean | null
  status: StatusBody | null
}

/** `GET /api/status` (a daemon's HTTP API): the fleet as that daemon sees it. */
export interface FleetStatus {
  fleet: string
  fleetId: string
  /** The PeerId of the daemon that answered. */
  self: string
  /** false: the daemon runs without networking and knows only its own status. */
  mesh: boolean
  /** The heads of every document that daemon holds: what "up to date" is judged against. */
  latest: Record<string, string[]>
  nodes: FleetNode[]
}

export interface FleetInput {
  /** Enrolled devices by key (crdt/devices.ts `enrolledDevices`). */
  enrolled: ReadonlyMap<string, { name: string; labels: Record<string, string> }>
  records: readonly ReceivedStatus[]
  /** The heads of every document the judge holds. */
  latest: Record<string, string[]>
  holds?: (docId: string, heads: string[]) => boolean
  /** PeerId of a key, for nodes not heard from. */
  peerIdOf: (key: string) => string
  /** The key of the daemon making the list: online by definition, listed even if not enrolled. */
  self?: string
}

/**
 * Every enrolled node, and every node heard from, with its newest status record: online,
 * stale (with when it was last seen) or never heard from, and whether it is up to date.
 * Sorted by name.
 */
export function fleetNodes(input: FleetInput): FleetNode[] {
  const records = new Map(input.records.map(r => [r.node, r]))
  const keys = new Set([...input.enrolled.keys(), ...records.keys()])
  if (input.self !== undefined) keys.add(input.self)
  const nodes = [...keys].map((key): FleetNode => {
    const dev = input.enrolled.get(key)
    const rec = records.get(key)
    const status = rec === undefined ? null : parseStatusBody(rec.body, key.slice(0, 12))
    const sync = status === null ? 'unknown' : syncState(status.applied, input.latest, input.holds)
    return {
      key,
      peerId: rec?.peerId ?? input.peerIdOf(key),
      name: dev?.name ?? status?.name ?? key.slice(0, 12),
      labels: dev?.labels ?? status?.labels ?? {},
      enrolled: dev !== undefined,
      self: key === input.self,
      online: key === input.self || (rec !== undefined && !rec.stale),
      stale: rec?.stale ?? null,
      lastSeen: rec?.receivedAt ?? null,
      sync,
      upToDate: sync === 'unknown' ? null : sync === 'in-sync',
      status
    }
  })
  return nodes.sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }))
}
