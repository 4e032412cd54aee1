/**
 * Rollout gating: from the signed status records a peer holds, what state a rollout is in and
 * whether one node may switch to the new version. Pure functions of the rollout, its wave plan
 * and the reports, so every peer holding the same records decides the same; nothing here reads
 * a clock (a node's local time of day enters only as an input, for its own maintenance window).
 *
 * What a node reports (its status body's `rollouts` key, one entry per rollout id):
 *
 * ```ts
 * rollouts: { '<doc>:<name>': {
 *   digest,          // the rollout's digest: a report for another digest counts for nothing
 *   seenAt,          // the node holds the rollout and takes part (its clock, ms since epoch)
 *   switchedAt?,     // it began running the new version                           (final)
 *   healthySince?,   // its watched workloads were all healthy from then on
 *   soakedAt?,       // it stayed healthy for its wave's soak time: it is through   (final)
 *   failedAt?, reason?,  // it failed its health watch and went back on its own     (final)
 *   until?,          // while switched and not through: when its "updating" claim expires
 *   abortedAt?,      // it holds evidence that the rollout is aborted               (final)
 *   revertedAt?,     // it went back to the old version because of the abort        (final)
 * } }
 * ```
 *
 * Status records are last-writer-wins, so a node's newest record must carry everything it ever
 * reported: the facts marked final are never cleared (the daemon keeps them on disk), so the
 * evidence any peer holds only grows. That makes the verdicts monotone: a wave once through stays
 * through, and once the evidence satisfies the abort rule anywhere, that peer reports `abortedAt`,
 * which is itself evidence of the abort for everyone who receives it, so every peer converges
 * on "aborted" whatever the ratio of failures it sees later.
 *
 * Soak is judged from the times inside the reporting node's own record (`soakedAt -
 * healthySince` must cover its wave's soak); the judge's clock never enters. Budget claims expire
 * against the time several nodes' records have reached (`evidenceClock`; not the judge's clock
 * either, nor one node's, which a stolen device could date ahead), so a node that went silent
 * mid-update stops holding its group's budget once the rest of the fleet has moved on past its
 * `until`.
 */
import { inWriterScope, selects, RolloutState, type RolloutSpec } from './rollout.ts'
import type { WavePlan } from './rollout-waves.ts'
import { entriesOf } from './config-shape.ts'

/** The longest reason text kept in a report. */
export const MAX_REASON_CHARS = 200

export interface RolloutReport {
  digest: string
  seenAt: number
  switchedAt?: number
  healthySince?: number
  soakedAt?: number
  failedAt?: number
  reason?: string
  until?: number
  abortedAt?: number
  revertedAt?: number
}

/** One node's evidence: the time of its newest record, and its report on this rollout. */
export interface Evidence {
  at: number
  report?: RolloutReport
}

const TIMES = [
  'seenAt',
  'switchedAt',
  'healthySince',
  'soakedAt',
  'failedAt',
  'until',
  'abortedAt',
  'revertedAt'
] as const

function isTime(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0
}

/** One report from JSON of unknown shape (a peer's: hostile); undefined if it is not one. */
function parseReport(v: unknown): RolloutReport | undefined {
  const r = v as Record<string, unknown> | null
  if (typeof r !== 'object' || r === null || Array.isArray(r)) return undefined
  if (typeof r.digest !== 'string' || r.digest.length > 64 || !isTime(r.seenAt)) return undefined
  const out: RolloutReport = { digest: r.digest, seenAt: r.seenAt }
  for (const k of TIMES) {
    if (isTime(r[k])) out[k] = r[k]
  }
  if (typeof r.reason === 'string') out.reason = r.reason.slice(0, MAX_REASON_CHARS)
  return out
}

/** A status body's `rollouts` (crdt/fleet-status.ts): well-formed reports, at most `max`. */
export function parseReports(v: unknown, max: number): Record<string, RolloutReport> {
  const out: Record<string, RolloutReport> = {}
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return out
  for (const [id, r] of entriesOf(v as Record<string, unknown>, max)) {
    const parsed = parseReport(r)
    if (parsed !== undefined && id.length <= 200) out[id] = parsed
  }
  return out
}

/**
 * The times whose first appearance in a node's report moves another node's gate or abort rule on:
 * a switch (the wave's executed count and its group's budget), a soak (a wave through), a
 * failure (the abort rule), a revert (budget freed, a wave that cannot get through). Not
 * `healthySince` (a flapping workload sets it again and again; the "soaked" record carries it),
 * `until` (a claim that changes) nor `abortedAt`: a node reports that only once it holds the
 * evidence of the abort (the failures, each news itself, or an admin's abort in the signed
 * config), and that evidence reaches every peer on its own; an `abortedAt` still counts
 * (`viewRollout`) when it arrives at the normal pace.
 */
const FACTS = ['switchedAt', 'soakedAt', 'failedAt', 'revertedAt'] as const

/**
 * Does status body `next` report a step of a rollout (`FACTS`) that `prev`, the same node's body
 * before it, did not (under a digest it had no report on: any of them)? Both bodies are a peer's
 * JSON (hostile); at most `max` reports of each are read.
 */
export function bringsStep(prev: unknown, next: unknown, max: number): boolean {
  return changedReports(prev, next, max, (a, b) =>
    FACTS.some(k => a[k] !== undefined && b?.[k] === undefined)
  )
}

/**
 * Does status body `next` bring rollout news over `prev`, the same node's body before it: a step
 * (`bringsStep`), or a rollout (or digest) it had no report on whose order `budgeted` says a
 * disruption budget reads? A node taking part counts toward its group's budget (`decide`: the
 * nodes ahead of it), so that is news there; in a rollout without a budget no gate reads it, and
 * every node's first report of a rollout just applied, flooded, was ~30 records crossing every
 * link at 30 daemons while a canary's failure needed the CPU. `budgeted` answers from the
 * rollout as held by the judge; one it does not hold yet must answer true (the old rule). Such a
 * record moves a rollout on, and the mesh relays it to every peer, on a budget of its own rather
 * than behind the node's routine records (mesh/status-service.ts). Both bodies are a peer's JSON
 * (hostile); at most `max` reports of each are read.
 */
export function bringsNews(
  prev: unknown,
  next: unknown,
  max: number,
  budgeted: (rolloutId: string) => boolean = () => true
): boolean {
  return changedReports(
    prev,
    next,
    max,
    (a, b, id) =>
      (b === undefined && budgeted(id)) ||
      FACTS.some(k => a[k] !== undefined && b?.[k] === undefined)
  )
}

/** Is `news` true of some report of `next` and the same node's report before it (same digest)? */
function changedReports(
  prev: unknown,
  next: unknown,
  max: number,
  news: (after: RolloutReport, before: RolloutReport | undefined, id: string) => boolean
): boolean {
  const rolloutsOf = (b: unknown): unknown => (b as { rollouts?: unknown } | null)?.rollouts
  const after = parseReports(rolloutsOf(next), max)
  const ids = Object.keys(after)
  if (ids.length === 0) return false
  const before = parseReports(rolloutsOf(prev), max)
  return ids.some(id => {
    const a = after[id]!
    return news(a, before[id]?.digest === a.digest ? before[id] : undefined, id)
  })
}

/**
 * This rollout's report from a status body (a peer's JSON: hostile). Anything malformed, or a
 * report for another digest, is no evidence at all.
 */
export function reportIn(
  body: unknown,
  spec: Pick<RolloutSpec, 'id' | 'digest'>
): RolloutReport | undefined {
  const all = (body as { rollouts?: unknown } | null)?.rollouts
  if (typeof all !== 'object' || all === null || Array.isArray(all)) return undefined
  const r = parseReport((all as Record<string, unknown>)[spec.id])
  return r?.digest === spec.digest ? r : undefined
}

/** The newest status record time of each node, and this rollout's report in it. */
export function evidenceFrom(
  spec: Pick<RolloutSpec, 'id' | 'digest'>,
  records: Iterable<{ node: string; body: unknown }>
): Map<string, Evidence> {
  const out = new Map<string, Evidence>()
  for (const r of records) {
    const at = (r.body as { at?: unknown } | null)?.at
    const e: Evidence = { at: isTime(at) ? at : 0 }
    const report = reportIn(r.body, spec)
    if (report !== undefined) e.report = report
    out.set(r.node, e)
  }
  return out
}

export type NodePhase = 'pending' | 'updating' | 'soaked' | 'failed' | 'reverted'

export interface NodeView {
  key: string
  wave: number
  phase: NodePhase
  /** No record, or none for `silentAfterMs` before the evidence clock (`evidenceClock`). */
  silent: boolean
  /** The node holds the rollout and takes part (its report is there). */
  seen: boolean
  /** Updating, and its claim ran out before the evidence clock: it no longer holds budget. */
  expired: boolean
  report?: RolloutReport
}

export interface WaveView {
  index: number
  canary: boolean
  percent?: number
  members: string[]
  /** Soaked members needed for the wave to be through. */
  needed: number
  switched: number
  soaked: number
  failed: number
  passed: boolean
  /** Every earlier wave is through: this wave's nodes may switch. */
  open: boolean
}

export type RolloutPhase = 'not-started' | 'running' | 'paused' | 'aborted' | 'completed'

export interface RolloutView {
  id: string
  digest: string
  state: RolloutPhase
  abortReason?: string
  waves: WaveView[]
  /** Nodes that switched, and of those that failed (the abort rule's counts). */
  executed: number
  failed: number
  /** The time enough nodes' records reached (`evidenceClock`): budget claims expire against it. */
  evidenceTime: number
  nodes: NodeView[]
  /** Who the rollout waits for: unsoaked members of the first wave not yet through. */
  waitingFor: Array<{ key: string; wave: number; why: string }>
  /** The first open wave cannot get through any more (too many failed or reverted). */
  stuck: boolean
}

export interface GateOptions {
  /** A node with no record this long before the newest evidence is silent (offline). */
  silentAfterMs: number
}

export const DEFAULT_GATE_OPTIONS: Readonly<GateOptions> = Object.freeze({
  silentAfterMs: 30_000
})

/**
 * Nodes whose records a time must have reached before budget claims expire against it and other
 * nodes count as silent. One node's clock is not enough: a stolen or broken device that dates its
 * records years ahead would otherwise expire every claim in the fleet (every group's budget free
 * at once) and make every other node look silent. It takes this many to move the clock.
 */
export const EVIDENCE_CLOCK_WITNESSES = 3

/**
 * The time at least `EVIDENCE_CLOCK_WITNESSES` nodes' records have reached (all of them, when
 * fewer nodes have records): the k-th newest record time, a pure function of the records held.
 */
export function evidenceClock(evidence: ReadonlyMap<string, Evidence>): number {
  // The newest few, newest first: one pass, no sort of every node's time on each evaluation.
  const newest: number[] = []
  for (const { at } of evidence.values()) {
    if (newest.length === EVIDENCE_CLOCK_WITNESSES && at <= newest.at(-1)!) continue
    let i = newest.length
    while (i > 0 && newest[i - 1]! < at) i--
    newest.splice(i, 0, at)
    if (newest.length > EVIDENCE_CLOCK_WITNESSES) newest.pop()
  }
  return newest.at(-1) ?? 0
}

/** Did this report soak for at least `soakMs`, judged from the node's own times? */
function soaked(r: RolloutReport | undefined, soakMs: number): boolean {
  return (
    r !== undefined &&
    r.failedAt === undefined &&
    r.switchedAt !== undefined &&
    r.soakedAt !== undefined &&
    r.healthySince !== undefined &&
    r.healthySince >= r.switchedAt &&
    r.soakedAt - r.healthySince >= soakMs
  )
}

/**
 * An updating node that has not turned healthy yet (its probe has not passed since it switched):
 * starting, not soaking. Read the same by the gate's reasons, `rollout status` and the dashboard.
 */
export function notHealthyYet(n: {
  phase: string
  report?: { healthySince?: number } | null
}): boolean {
  return n.phase === 'updating' && n.report?.healthySince === undefined
}

function phaseOf(r: RolloutReport | undefined, soakMs: number): NodePhase {
  if (r === undefined || r.switchedAt === undefined) return 'pending'
  if (r.failedAt !== undefined) return 'failed'
  if (r.revertedAt !== undefined) return 'reverted'
  if (soaked(r, soakMs)) return 'soaked'
  return 'updating'
}

/** The state of a rollout as the evidence shows it. */
export function viewRollout(
  spec: RolloutSpec,
  plan: WavePlan,
  evidence: ReadonlyMap<string, Evidence>,
  opts: GateOptions = DEFAULT_GATE_OPTIONS
): RolloutView {
  const evidenceTime = evidenceClock(evidence)
  const nodes: NodeView[] = []
  let executed = 0
  let failed = 0
  let abortSeen: string | undefined
  const waves: WaveView[] = plan.waves.map((members, index) => {
    const w = spec.waves[index]!
    const view: WaveView = {
      index,
      canary: w.canary !== undefined,
      members,
      needed: Math.ceil((w.threshold * members.length) / 100),
      switched: 0,
      soaked: 0,
      failed: 0,
      passed: false,
      open: false
    }
    if (w.percent !== undefined) view.percent = w.percent
    for (const key of members) {
      const e = evidence.get(key)
      const r = e?.report
      const phase = phaseOf(r, w.soakMs)
      const n: NodeView = {
        key,
        wave: index,
        phase,
        silent: e === undefined || e.at < evidenceTime - opts.silentAfterMs,
        seen: r !== undefined,
        expired: phase === 'updating' && (r?.until === undefined || r.until < evidenceTime)
      }
      if (r !== undefined) n.report = r
      nodes.push(n)
      if (r?.switchedAt !== undefined) {
        view.switched++
        executed++
      }
      if (phase === 'failed') {
        view.failed++
        failed++
      }
      if (phase === 'soaked') view.soaked++
      if (r?.abortedAt !== undefined && abortSeen === undefined) {
        abortSeen = `node ${key.slice(0, 12)}… reported it aborted`
      }
    }
    view.passed = view.soaked >= view.needed
    return view
  })
  for (const w of waves) w.open = waves.slice(0, w.index).every(p => p.passed)
  let abortReason: string | undefined
  if (spec.state === RolloutState.Aborted) abortReason = 'aborted by an admin'
  else if (
    executed >= spec.abort.minExecuted &&
    failed * 100 > spec.abort.maxFailedPercent * executed
  ) {
    abortReason = `${failed} of ${executed} switched nodes failed (abort rule: at least ${spec.abort.minExecuted} switched and more than ${spec.abort.maxFailedPercent} % failed)`
  } else abortReason = abortSeen
  const state: RolloutPhase =
    abortReason !== undefined
      ? 'aborted'
      : spec.eligible === undefined
        ? 'not-started'
        : waves.every(w => w.passed)
          ? 'completed'
          : spec.state === RolloutState.Paused
            ? 'paused'
            : 'running'
  const waitingFor: RolloutView['waitingFor'] = []
  let stuck = false
  const first = waves.find(w => !w.passed)
  if (first !== undefined && (state === 'running' || state === 'paused')) {
    let lost = 0
    for (const n of nodes) {
      if (n.wave !== first.index || n.phase === 'soaked') continue
      if (n.phase === 'failed' || n.phase === 'reverted') lost++
      const when = (word: string, t: number | undefined): string =>
        t === undefined ? '' : ` ${word} ${new Date(t).toISOString()}`
      const why =
        n.phase === 'failed'
          ? `failed: ${n.report?.reason ?? 'health watch'}`
          : n.phase === 'reverted'
            ? 'went back'
            : n.silent
              ? `silent (no status record${when('since', evidence.get(n.key)?.at)})`
              : n.phase === 'updating'
                ? notHealthyYet(n)
                  ? `starting: switched${when('at', n.report?.switchedAt)}, not healthy yet`
                  : `soaking${when('since', n.report?.healthySince)}`
                : !n.seen
                  ? 'has not reported the rollout yet'
                  : state === 'paused'
                    ? 'paused'
                    : 'not switched yet'
      waitingFor.push({ key: n.key, wave: n.wave, why })
    }
    stuck = first.members.length - lost < first.needed
  }
  const view: RolloutView = {
    id: spec.id,
    digest: spec.digest,
    state,
    waves,
    executed,
    failed,
    evidenceTime,
    nodes,
    waitingFor,
    stuck
  }
  if (abortReason !== undefined) view.abortReason = abortReason
  return view
}

/** Minutes since local midnight inside one of the windows? (`from > to` wraps past midnight.) */
export function inWindow(windows: Array<{ from: number; to: number }>, minutes: number): boolean {
  return windows.some(w =>
    w.from < w.to ? minutes >= w.from && minutes < w.to : minutes >= w.from || minutes < w.to
  )
}

export interface SelfInput {
  key: string
  labels: Record<string, string>
  /** Minutes since midnight on this node's local clock (maintenance windows only). */
  localMinutes: number
}

export interface Decision {
  /** The version this node should run now. */
  run: 'new' | 'old'
  /** Why, for a person. */
  why: string
  /** The node's wave, if it is in the rollout's frozen list. */
  wave?: number
}

const groupOf = (labels: Record<string, string> | undefined, by: string): string =>
  labels?.[by] ?? ''

/**
 * Should this node run the new version? A node that switched keeps it until it fails or the
 * rollout aborts; one that has not switches only when the evidence shows every earlier wave
 * through (missing evidence means wait), the rollout is running, its group is inside a
 * maintenance window, and its group's budget has room: fewer nodes updating (unexpired claims)
 * plus nodes ahead of it in the rollout's order waiting to go than `maxUnavailable`.
 */
export function decide(
  spec: RolloutSpec,
  plan: WavePlan,
  view: RolloutView,
  self: SelfInput,
  labelsOf: (key: string) => Record<string, string> | undefined
): Decision {
  if (!inWriterScope(spec, self.labels, self.key)) {
    return { run: 'old', why: 'outside the node scope of the operator who wrote the rollout' }
  }
  const me = view.nodes.find(n => n.key === self.key)
  const r = me?.report
  if (r?.failedAt !== undefined) {
    return { run: 'old', why: `this node failed the new version: ${r.reason ?? 'health watch'}` }
  }
  if (view.state === 'aborted') return { run: 'old', why: view.abortReason ?? 'aborted' }
  if (me === undefined) {
    // Not in the frozen list: enrolled or relabelled since the start. Follow the final state.
    return view.state === 'completed' && selects(spec, self.labels, self.key)
      ? { run: 'new', why: 'the rollout completed before this node joined it' }
      : { run: 'old', why: 'not in this rollout (it joins once the rollout completes)' }
  }
  const wave = me.wave
  if (r?.switchedAt !== undefined) return { run: 'new', why: 'switched', wave }
  if (view.state === 'not-started' || view.state === 'paused') {
    return { run: 'old', why: view.state === 'paused' ? 'paused' : 'not started', wave }
  }
  const blocking = view.waves.find(w => w.index < wave && !w.passed)
  if (blocking !== undefined) {
    return {
      run: 'old',
      why: `waiting for wave ${blocking.index}: ${blocking.soaked} of ${blocking.members.length} soaked, ${blocking.needed} needed`,
      wave
    }
  }
  const group = groupOf(self.labels, spec.groupBy)
  const windows = spec.windows?.[group] ?? spec.windows?.['*']
  if (windows !== undefined && !inWindow(windows, self.localMinutes)) {
    return { run: 'old', why: `outside the maintenance window of ${spec.groupBy}=${group}`, wave }
  }
  if (spec.budget !== undefined) {
    const mine = plan.order.get(self.key) ?? Infinity
    let updating = 0
    let ahead = 0
    for (const n of view.nodes) {
      if (n.key === self.key || groupOf(labelsOf(n.key), spec.groupBy) !== group) continue
      if (n.phase === 'updating' && !n.expired) updating++
      else if (
        n.phase === 'pending' &&
        n.seen &&
        !n.silent &&
        view.waves[n.wave]?.open === true &&
        (plan.order.get(n.key) ?? Infinity) < mine
      ) {
        ahead++
      }
    }
    if (updating + ahead >= spec.budget.maxUnavailable) {
      return {
        run: 'old',
        why: `budget: ${spec.groupBy}=${group} has ${updating} updating and ${ahead} ahead of this node (max ${spec.budget.maxUnavailable})`,
        wave
      }
    }
  }
  return { run: 'new', why: `wave ${wave} may go`, wave }
}
