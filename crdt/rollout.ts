/**
 * Staged rollouts: the schema. A rollout is data in a config document, signed like the rest of
 * it, under the document's `rollouts` key:
 *
 * ```yaml
 * fleet:
 *   defaults: { workloads: { web: { command: [...], version: "1" } } }
 *   rollouts:
 *     web-v2:                               # name: lower-case word, unique in the document
 *       selector: { role: pos }             # optional: which of the document's nodes take part
 *       change:                             # what a switched node runs on top of its config
 *         workloads: { web: { version: "2" } }
 *       waves:                              # canaries first, then cumulative percentages
 *         - canary: { site: lab }           #   of the eligible nodes; the last wave is 100
 *         - percent: 10
 *         - { percent: 50, soak: 30m }      #   per-wave threshold and soak override the defaults
 *         - percent: 100
 *       threshold: 95                       # % of a wave soaked before the next wave starts
 *       soak: 10m                           # healthy on the new version for this long
 *       abort: { minExecuted: 1, maxFailedPercent: 0 }   # ≥ M switched and > P % failed: abort
 *       groupBy: site                       # the label that groups nodes (budget, windows)
 *       budget: { maxUnavailable: 1 }       # at most this many of a group updating at once
 *       windows: { berlin-3: ["22:00-06:00"], "*": ["00:00-24:00"] }   # local time, per group
 *       health: { failedChecks: 3, restarts: 2, startTimeout: 2m }     # when a node gives up
 *       state: running                      # running | paused | aborted (rhizome rollout ...)
 *       eligible: [<node key hex>, ...]     # frozen by `rhizome apply` when the rollout starts
 *       startedAt: 2026-11-25T10:00:00.000Z # idem
 * ```
 *
 * Durations are milliseconds or text with a unit (`500ms`, `30s`, `10m`, `2h`, `1d`).
 *
 * A rollout's identity is its document, its name and a digest of what it changes and to whom
 * (`change` and `eligible`): a rollout whose change is edited is a new rollout, and evidence
 * gathered for the old one no longer counts. Waves, thresholds, soak times, the budget and the
 * abort rule may be tuned while it runs. What a node does with a rollout and how it reports it
 * are in rollout-gate.ts; wave assignment is in rollout-waves.ts.
 */
import { isImmutableString } from '@automerge/automerge'
import { sha256 } from '@noble/hashes/sha2.js'
import { canonicalJson } from './canonical-json.ts'
import { toHex, utf8 } from './bytes.ts'
import { InvalidConfigError } from './errors.ts'
import { checkKeys, checkMap, isMap } from './config-shape.ts'
import {
  inReach,
  selectorMatches,
  type ConfigDocument,
  type ConfigObject
} from './effective-config.ts'
import type { LabelSelector } from './trust.ts'

/** Rollouts one document may hold. */
export const MAX_ROLLOUTS_PER_DOC = 16
/** Waves one rollout may have. */
export const MAX_WAVES = 16
/** Nodes a rollout's frozen eligible list may hold (64 hex characters each in the document). */
export const MAX_ELIGIBLE = 10_000
/** Groups with maintenance windows, and windows per group. */
export const MAX_WINDOW_GROUPS = 256
export const MAX_WINDOWS_PER_GROUP = 8
/** The longest soak, start timeout or window a rollout may name: 30 days. */
export const MAX_DURATION_MS = 30 * 24 * 3600_000

export const ROLLOUT_KEYS = [
  'selector',
  'change',
  'waves',
  'threshold',
  'soak',
  'abort',
  'groupBy',
  'budget',
  'windows',
  'health',
  'state',
  'eligible',
  'startedAt'
] as const
const WAVE_KEYS = ['canary', 'percent', 'threshold', 'soak'] as const
const ABORT_KEYS = ['minExecuted', 'maxFailedPercent'] as const
const HEALTH_KEYS = ['failedChecks', 'restarts', 'startTimeout'] as const
const CHANGE_KEYS = ['files', 'workloads', 'manifests'] as const

export const ROLLOUT_NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,63}$/
const KEY_PATTERN = /^[0-9a-f]{64}$/
const WINDOW_PATTERN = /^([01]\d|2[0-4]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$/

export const RolloutState = { Running: 'running', Paused: 'paused', Aborted: 'aborted' } as const
export type RolloutState = (typeof RolloutState)[keyof typeof RolloutState]

export const DEFAULTS = Object.freeze({
  threshold: 100,
  soakMs: 5 * 60_000,
  minExecuted: 1,
  maxFailedPercent: 0,
  groupBy: 'site',
  failedChecks: 3,
  restarts: 2,
  startTimeoutMs: 2 * 60_000
})

export type Selector = Record<string, string | string[]>

export interface RolloutWave {
  /** Eligible nodes whose labels match (canary waves come first). */
  canary?: Selector
  /** Share of the eligible nodes switched once this wave is through, cumulative, 1..100. */
  percent?: number
  /** % of this wave's nodes that must have soaked before the next wave may start. */
  threshold: number
  /** How long a node of this wave must stay healthy on the new version. */
  soakMs: number
}

/** A local time range, in minutes since midnight; `from > to` wraps past midnight. */
export interface TimeWindow {
  from: number
  to: number
}

export interface RolloutSpec {
  /** `<document id>:<name>`: how status records and the CLI name it. */
  id: string
  docId: string
  name: string
  /** Hex digest of `change` and `eligible`: evidence counts only for the same digest. */
  digest: string
  /** The containing document's selector and the rollout's own: both must match. */
  docSelector?: Selector
  selector?: Selector
  /**
   * The node scopes of the operators who wrote the containing document (crdt/effective-config.ts):
   * a rollout reaches no node outside any of them, whatever its eligible list says.
   */
  writerScopes?: ReadonlyArray<LabelSelector | null>
  /** Devices the containing document may not reach (crdt/effective-config.ts `unreachable`). */
  unreachable?: readonly string[]
  change: ConfigObject
  waves: RolloutWave[]
  abort: { minExecuted: number; maxFailedPercent: number }
  groupBy: string
  budget?: { maxUnavailable: number }
  /** Group value (or `*` for any group) → windows in which its nodes may switch. */
  windows?: Record<string, TimeWindow[]>
  health: { failedChecks: number; restarts: number; startTimeoutMs: number }
  state: RolloutState
  /** Node keys eligible at the start, sorted; undefined until frozen. */
  eligible?: string[]
  startedAt?: string
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 }

/**
 * A duration: a number of milliseconds, or text such as `30s`, `10m`, `2h`. Left out (undefined):
 * `fallback`, if given.
 */
export function parseDuration(v: unknown, where: string, fallback?: number): number {
  if (v === undefined && fallback !== undefined) return fallback
  let ms: number | undefined
  if (typeof v === 'number') ms = v
  else if (typeof v === 'string') {
    const m = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/.exec(v.trim())
    if (m !== null) ms = Number(m[1]) * (UNIT_MS[m[2] as string] as number)
  }
  if (ms === undefined || !Number.isFinite(ms) || ms < 0 || ms > MAX_DURATION_MS) {
    throw new InvalidConfigError(
      `${where}: ${JSON.stringify(v)} is not a duration; write milliseconds or a number with ms, s, m, h or d (at most 30d), e.g. 30s`
    )
  }
  return Math.round(ms)
}

/** A percentage from `min` to 100; left out (undefined): `fallback`, if given. */
function percentOf(v: unknown, where: string, min: number, fallback?: number): number {
  if (v === undefined && fallback !== undefined) return fallback
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > 100) {
    throw new InvalidConfigError(
      `${where}: ${JSON.stringify(v)} is not a percentage; expected a number from ${min} to 100`
    )
  }
  return v
}

/** A whole number of at least `min`; left out (undefined): `fallback`, if given. */
function countOf(v: unknown, where: string, min: number, fallback?: number): number {
  if (v === undefined && fallback !== undefined) return fallback
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > 1_000_000) {
    throw new InvalidConfigError(
      `${where}: ${JSON.stringify(v)} is not a whole number of at least ${min}`
    )
  }
  return v
}

function selectorOf(v: unknown, where: string): Selector {
  if (!isMap(v)) {
    throw new InvalidConfigError(
      `${where}: expected a label selector such as { site: lab } (a list means any of)`
    )
  }
  const out: Selector = {}
  for (const [k, want] of Object.entries(v)) {
    if (Array.isArray(want) && want.every(x => typeof x === 'string')) out[k] = want
    else if (typeof want === 'string' || typeof want === 'number' || typeof want === 'boolean') {
      out[k] = String(want)
    } else {
      throw new InvalidConfigError(`${where}.${k}: expected a label value or a list of them`)
    }
  }
  return out
}

function windowsOf(v: unknown, where: string): Record<string, TimeWindow[]> {
  if (!isMap(v)) {
    throw new InvalidConfigError(
      `${where}: expected { <group>: ["22:00-06:00", ...] } ("*" for every group)`
    )
  }
  const groups = Object.entries(v)
  if (groups.length > MAX_WINDOW_GROUPS) {
    throw new InvalidConfigError(`${where}: at most ${MAX_WINDOW_GROUPS} groups may have windows`)
  }
  const out: Record<string, TimeWindow[]> = {}
  for (const [group, list] of groups) {
    const ranges = typeof list === 'string' ? [list] : list
    if (!Array.isArray(ranges) || ranges.length === 0 || ranges.length > MAX_WINDOWS_PER_GROUP) {
      throw new InvalidConfigError(
        `${where}.${group}: expected 1 to ${MAX_WINDOWS_PER_GROUP} local time ranges such as "22:00-06:00"`
      )
    }
    out[group] = ranges.map(r => {
      const m = typeof r === 'string' ? WINDOW_PATTERN.exec(r) : null
      if (m === null) {
        throw new InvalidConfigError(
          `${where}.${group}: ${JSON.stringify(r)} is not a time range; write "HH:MM-HH:MM" in the node's local time, e.g. "22:00-06:00"`
        )
      }
      const from = Number(m[1]) * 60 + Number(m[2])
      const to = Number(m[3]) * 60 + Number(m[4])
      if (from > 24 * 60 || to > 24 * 60 || from === to) {
        throw new InvalidConfigError(
          `${where}.${group}: ${r} is empty or goes past 24:00; "00:00-24:00" is the whole day`
        )
      }
      return { from, to }
    })
  }
  return out
}

function checkChange(v: unknown, where: string): ConfigObject {
  if (!isMap(v) || Object.keys(v).length === 0) {
    throw new InvalidConfigError(
      `${where}: expected what the rollout changes, e.g. { workloads: { web: { version: "2" } } }`
    )
  }
  checkKeys(v, CHANGE_KEYS, where)
  for (const k of CHANGE_KEYS) {
    const part = v[k]
    if (part !== undefined && !isMap(part)) {
      throw new InvalidConfigError(`${where}.${k}: expected a map of names to their new spec`)
    }
  }
  return JSON.parse(JSON.stringify(v)) as ConfigObject
}

/** The digest that names a rollout's identity: what it changes, and to whom. */
export function rolloutDigest(
  docId: string,
  name: string,
  change: ConfigObject,
  eligible: string[] | undefined
): string {
  const text = canonicalJson({ docId, name, change, eligible: eligible ?? null })
  return toHex(sha256(utf8(`rhizome/rollout/v1\0${text}`))).slice(0, 32)
}

/** An `ImmutableString` read from a document as the string it holds; anything else as it is. */
function plainString(v: unknown): unknown {
  return isImmutableString(v) ? v.toString() : v
}

/**
 * Parse and check one rollout. `docSelector` is the containing document's selector. Throws
 * InvalidConfigError naming the offending key and what to write instead.
 */
export function parseRollout(
  docId: string,
  name: string,
  raw: unknown,
  docSelector?: unknown
): RolloutSpec {
  const where = `${docId}.rollouts.${name}`
  if (!ROLLOUT_NAME_PATTERN.test(name)) {
    throw new InvalidConfigError(
      `${where}: "${name}" is not a rollout name (lower-case letters, digits, . _ -, at most 64)`
    )
  }
  checkMap(raw, ROLLOUT_KEYS, where, `a map with ${ROLLOUT_KEYS.join(', ')}`)
  const change = checkChange(raw.change, `${where}.change`)
  const threshold = percentOf(raw.threshold, `${where}.threshold`, 0, DEFAULTS.threshold)
  const soakMs = parseDuration(raw.soak, `${where}.soak`, DEFAULTS.soakMs)
  if (!Array.isArray(raw.waves) || raw.waves.length === 0 || raw.waves.length > MAX_WAVES) {
    throw new InvalidConfigError(
      `${where}.waves: expected 1 to ${MAX_WAVES} waves, e.g. [{ canary: { site: lab } }, { percent: 50 }, { percent: 100 }]`
    )
  }
  const waves: RolloutWave[] = []
  let lastPercent = 0
  raw.waves.forEach((w: unknown, i: number) => {
    const at = `${where}.waves[${i}]`
    checkMap(w, WAVE_KEYS, at, '{ canary: <selector> } or { percent: N }')
    if ((w.canary === undefined) === (w.percent === undefined)) {
      throw new InvalidConfigError(`${at}: a wave has either canary: <selector> or percent: N`)
    }
    const wave: RolloutWave = {
      threshold: percentOf(w.threshold, `${at}.threshold`, 0, threshold),
      soakMs: parseDuration(w.soak, `${at}.soak`, soakMs)
    }
    if (w.canary !== undefined) {
      if (lastPercent > 0) {
        throw new InvalidConfigError(
          `${at}: canary waves come before percentage waves; move it to the front`
        )
      }
      wave.canary = selectorOf(w.canary, `${at}.canary`)
    } else {
      const p = percentOf(w.percent, `${at}.percent`, 1)
      if (p <= lastPercent) {
        throw new InvalidConfigError(
          `${at}.percent: ${p} is not above the previous wave's ${lastPercent}; percentages are cumulative and rise`
        )
      }
      lastPercent = p
      wave.percent = p
    }
    waves.push(wave)
  })
  if (lastPercent !== 100) {
    throw new InvalidConfigError(
      `${where}.waves: the last wave must be { percent: 100 }, so that every eligible node is reached`
    )
  }
  const abortRaw = raw.abort ?? {}
  checkMap(abortRaw, ABORT_KEYS, `${where}.abort`, '{ minExecuted: M, maxFailedPercent: P }')
  const abort = {
    minExecuted: countOf(
      abortRaw.minExecuted,
      `${where}.abort.minExecuted`,
      1,
      DEFAULTS.minExecuted
    ),
    maxFailedPercent: percentOf(
      abortRaw.maxFailedPercent,
      `${where}.abort.maxFailedPercent`,
      0,
      DEFAULTS.maxFailedPercent
    )
  }
  if (raw.groupBy !== undefined && (typeof raw.groupBy !== 'string' || raw.groupBy === '')) {
    throw new InvalidConfigError(`${where}.groupBy: expected a label name such as site`)
  }
  const healthRaw = raw.health ?? {}
  const healthShape = '{ failedChecks: N, restarts: N, startTimeout: 2m }'
  checkMap(healthRaw, HEALTH_KEYS, `${where}.health`, healthShape)
  const health = {
    failedChecks: countOf(
      healthRaw.failedChecks,
      `${where}.health.failedChecks`,
      1,
      DEFAULTS.failedChecks
    ),
    restarts: countOf(healthRaw.restarts, `${where}.health.restarts`, 0, DEFAULTS.restarts),
    startTimeoutMs: parseDuration(
      healthRaw.startTimeout,
      `${where}.health.startTimeout`,
      DEFAULTS.startTimeoutMs
    )
  }
  const state = raw.state ?? RolloutState.Running
  if (!Object.values(RolloutState).includes(state as RolloutState)) {
    throw new InvalidConfigError(
      `${where}.state: ${JSON.stringify(state)} is not running, paused or aborted`
    )
  }
  let eligible: string[] | undefined
  if (raw.eligible !== undefined) {
    // Stored as immutable strings (crdt/config-diff.ts `storedValue`); text by older versions.
    const keys = Array.isArray(raw.eligible) ? raw.eligible.map(plainString) : undefined
    if (
      keys === undefined ||
      keys.length > MAX_ELIGIBLE ||
      !keys.every(k => typeof k === 'string' && KEY_PATTERN.test(k))
    ) {
      throw new InvalidConfigError(
        `${where}.eligible: expected at most ${MAX_ELIGIBLE} node keys (64 hex characters); it is written by rhizome apply, remove it to have it computed`
      )
    }
    eligible = [...new Set(keys as string[])].sort()
  }
  if (raw.startedAt !== undefined && typeof raw.startedAt !== 'string') {
    throw new InvalidConfigError(`${where}.startedAt: expected an ISO time`)
  }
  const spec: RolloutSpec = {
    id: `${docId}:${name}`,
    docId,
    name,
    digest: rolloutDigest(docId, name, change, eligible),
    change,
    waves,
    abort,
    groupBy: raw.groupBy ?? DEFAULTS.groupBy,
    health,
    state: state as RolloutState
  }
  if (docSelector !== undefined && docSelector !== null) {
    spec.docSelector = selectorOf(docSelector, `${docId}.selector`)
  }
  if (raw.selector !== undefined) spec.selector = selectorOf(raw.selector, `${where}.selector`)
  if (raw.budget !== undefined) {
    checkMap(raw.budget, ['maxUnavailable'], `${where}.budget`, '{ maxUnavailable: N }')
    spec.budget = {
      maxUnavailable: countOf(raw.budget.maxUnavailable, `${where}.budget.maxUnavailable`, 1)
    }
  }
  if (raw.windows !== undefined) spec.windows = windowsOf(raw.windows, `${where}.windows`)
  if (eligible !== undefined) spec.eligible = eligible
  if (raw.startedAt !== undefined) spec.startedAt = raw.startedAt
  return spec
}

/** Check a document's `rollouts` key (fleet file and apply). */
export function checkRollouts(docId: string, doc: Record<string, unknown>): void {
  const r = doc.rollouts
  if (r === undefined || r === null) return
  if (!isMap(r)) {
    throw new InvalidConfigError(`${docId}.rollouts: expected a map of rollout names to rollouts`)
  }
  if (Object.keys(r).length > MAX_ROLLOUTS_PER_DOC) {
    throw new InvalidConfigError(
      `${docId}.rollouts: at most ${MAX_ROLLOUTS_PER_DOC} rollouts per document; remove finished ones`
    )
  }
  for (const [name, raw] of Object.entries(r)) parseRollout(docId, name, raw, doc.selector)
}

/**
 * Every rollout in the documents, sorted by id (the order their changes layer in). A rollout
 * that does not parse is skipped and its problem returned: a node never acts on one it cannot
 * read, and says so.
 */
export function rolloutsOf(docs: ConfigDocument[]): {
  rollouts: RolloutSpec[]
  errors: string[]
} {
  const rollouts: RolloutSpec[] = []
  const errors: string[] = []
  for (const d of docs) {
    if (!isMap(d.value) || !isMap(d.value.rollouts)) continue
    const entries = Object.entries(d.value.rollouts).sort(([a], [b]) => (a < b ? -1 : 1))
    for (const [name, raw] of entries.slice(0, MAX_ROLLOUTS_PER_DOC)) {
      try {
        const spec = parseRollout(d.id, name, raw, d.value.selector)
        if (d.writerScopes !== undefined && d.writerScopes.length > 0) {
          spec.writerScopes = d.writerScopes
        }
        if (d.unreachable !== undefined && d.unreachable.length > 0) {
          spec.unreachable = d.unreachable
        }
        rollouts.push(spec)
      } catch (err) {
        errors.push((err as Error).message)
      }
    }
  }
  rollouts.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  return { rollouts, errors }
}

/** Is a node (labels, key) inside the reach of every operator who wrote the rollout? */
export function inWriterScope(
  spec: Pick<RolloutSpec, 'writerScopes' | 'unreachable'>,
  labels: Record<string, string>,
  key: string | undefined
): boolean {
  return inReach(spec, labels, key)
}

/** Does the rollout (its document's selector, its own, its writers' reach) select a node? */
export function selects(
  spec: RolloutSpec,
  labels: Record<string, string>,
  key: string | undefined
): boolean {
  return (
    selectorMatches(spec.docSelector, labels) &&
    selectorMatches(spec.selector, labels) &&
    inWriterScope(spec, labels, key)
  )
}

/**
 * What `rhizome apply` writes for the rollouts of one document: the file's rollouts, with the
 * fields that are fixed when a rollout starts (`eligible`, `startedAt`) and the one the rollout
 * commands own (`state`) carried over from the current document when the file leaves them out
 * and the rollout is the same (same change), or computed now for a new one. So applying the
 * same file twice changes nothing, and `apply` never resumes a paused rollout by accident.
 * `nodes` are the enrolled devices (key → labels). `removed` names the rollouts the current
 * document has and the file drops: their switched nodes go back to the document's own config.
 */
export function freezeRollouts(
  docId: string,
  desired: Record<string, unknown>,
  current: Record<string, unknown> | undefined,
  nodes: Map<string, Record<string, string>>,
  now: Date
): {
  doc: Record<string, unknown>
  started: Array<{ id: string; eligible: number }>
  removed: string[]
} {
  const started: Array<{ id: string; eligible: number }> = []
  const held = isMap(current?.rollouts) ? current.rollouts : {}
  const wanted = isMap(desired.rollouts) ? desired.rollouts : {}
  const removed = Object.keys(held)
    .filter(name => !(name in wanted))
    .map(name => `${docId}:${name}`)
  if (!isMap(desired.rollouts)) return { doc: desired, started, removed }
  const rollouts: Record<string, unknown> = {}
  for (const [name, raw] of Object.entries(desired.rollouts)) {
    const spec = parseRollout(docId, name, raw, desired.selector)
    const out = { ...(raw as Record<string, unknown>) }
    const was = held[name]
    const same = isMap(was) && canonicalJson(was.change ?? null) === canonicalJson(spec.change)
    if (same) {
      for (const k of ['eligible', 'startedAt', 'state'] as const) {
        const v = was[k]
        if (out[k] === undefined && v !== undefined) {
          out[k] = Array.isArray(v) ? v.map(plainString) : v
        }
      }
    }
    if (out.eligible === undefined) {
      out.eligible = [...nodes]
        .filter(([key, labels]) => selects(spec, labels, key))
        .map(([k]) => k)
        .sort()
        .slice(0, MAX_ELIGIBLE)
      out.startedAt ??= now.toISOString()
      started.push({ id: spec.id, eligible: (out.eligible as string[]).length })
    }
    const frozen = parseRollout(docId, name, out, desired.selector)
    // Labels may have changed since a running rollout started; only a new one is checked.
    const isNew = started.at(-1)?.id === spec.id
    for (const [i, w] of isNew ? frozen.waves.entries() : []) {
      if (w.canary === undefined) continue
      const hit = (frozen.eligible ?? []).some(k => selectorMatches(w.canary, nodes.get(k) ?? {}))
      if (!hit) {
        throw new InvalidConfigError(
          `${docId}.rollouts.${name}.waves[${i}].canary: ${canonicalJson(w.canary)} matches none of the ${frozen.eligible?.length ?? 0} eligible nodes; fix the selector or the labels (rhizome enrol --label)`
        )
      }
    }
    rollouts[name] = out
  }
  return { doc: { ...desired, rollouts }, started, removed }
}
