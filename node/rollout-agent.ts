/**
 * The rollout agent: what one daemon does about the fleet's rollouts, for its own device.
 *
 * - **Decide.** For each rollout in the desired config, from the signed status records this
 *   daemon holds (crdt/rollout-gate.ts): stay on the old version, switch to the new one, or go
 *   back (aborted). The reconciler asks `configFor` for the config to apply: the effective config
 *   with the change of every rollout this node has switched to layered on top, in rollout id
 *   order. New evidence (a status record) re-decides at once and asks for a reconcile pass.
 * - **Watch.** A node that switched watches the rollout's workloads for its wave's soak time,
 *   greenboot-style: it fails the new version after `failedChecks` unhealthy observations in a
 *   row (one per probe interval), more than `restarts` restarts (a crash loop), no health within
 *   `startTimeout`, or an updating claim that runs out. Healthy for the whole soak: `soakedAt`.
 * - **Go back on its own.** A failure drops the rollout's change (the old version is the config
 *   without it, rebuilt from the local store, so it works offline and after a reboot), marks the
 *   rollout bad for this node for good, and publishes the failure, which counts toward the abort
 *   rule everywhere.
 * - **Try mode.** A config that leaves the daemon unable to reach any peer for `tryModeMs` after
 *   it was applied (when it could reach one just before) is rolled back to the last config known
 *   good here and never applied again; nothing proves a config bad on a node that had no peer to
 *   begin with.
 *
 * Everything it reported stays reported, across restarts (rollout-state.ts). When a step goes
 * out and when it is on disk: see `record`.
 */
import { sha256 } from '@noble/hashes/sha2.js'
import { join } from 'node:path'
import { logger } from '@libp2p/logger'
import { canonicalJson } from '../crdt/canonical-json.ts'
import { toHex, utf8 } from '../crdt/bytes.ts'
import {
  mergeConfig,
  type ConfigDocument,
  type ConfigObject,
  type NodeIdentity
} from '../crdt/effective-config.ts'
import { inWriterScope, rolloutsOf, selects, type RolloutSpec } from '../crdt/rollout.ts'
import { planWaves, type WavePlan } from '../crdt/rollout-waves.ts'
import {
  bringsStep,
  DEFAULT_GATE_OPTIONS,
  decide,
  evidenceFrom,
  viewRollout,
  type Decision,
  type RolloutReport,
  type RolloutView
} from '../crdt/rollout-gate.ts'
import type { WorkloadStatus } from '../crdt/fleet-status.ts'
import { DEFAULT_TRY_MODE_MS } from './config.ts'
import type { EventLog } from './logger.ts'
import {
  emptyState,
  loadRolloutState,
  saveRolloutState,
  MAX_BAD,
  MAX_REPORTS,
  ROLLOUT_STATE_FILE,
  type RolloutState
} from './rollout-state.ts'
import { isMap } from '../crdt/config-shape.ts'

const log = logger('rhizome:node:rollout')
/** When evidence arrives and what the agent decides on it: the agent's share of a rollout's time. */
const trace = logger('rhizome:trace:rollout')

export interface RolloutAgentOptions {
  /** A config after which no peer is reached for this long is rolled back; 0 turns try mode off. */
  tryModeMs: number
  /** How often a switched node looks at its workloads when they name no probe interval. */
  checkMs: number
  /**
   * With a disruption budget, a node that has just learned of a rollout waits this long before
   * it switches, so that every node of its group has seen the others take part and the order
   * of going holds (two nodes learning of a rollout together would otherwise both go).
   */
  settleMs: number
  /** A node with no status record this long before the newest evidence is silent (offline). */
  silentAfterMs: number
}

export const DEFAULT_AGENT_OPTIONS: Readonly<RolloutAgentOptions> = Object.freeze({
  tryModeMs: DEFAULT_TRY_MODE_MS,
  checkMs: 1000,
  settleMs: 1000,
  silentAfterMs: DEFAULT_GATE_OPTIONS.silentAfterMs
})
/** The shortest look at workloads, whatever their probe interval says. */
const MIN_CHECK_MS = 100

export interface RolloutAgentComponents {
  /** This node's public key, hex. */
  key: string
  dataDir: string
  /** The newest signed status record of every node this daemon holds (its own included). */
  statuses: () => Array<{ node: string; body: unknown }>
  /** Enrolled devices' labels by key. */
  enrolled: () => Promise<Map<string, Record<string, string>>>
  workloads: () => Record<string, WorkloadStatus>
  /** Is a peer reachable now (an open sync session)? */
  connected: () => boolean
  /** Ask for a reconcile pass: a rollout decision changed. */
  reconcile: (reason: string) => void
  /** Publish this node's status now: its rollout reports changed. */
  publish: () => void
  events: EventLog
  /** Writes the state file (default `saveRolloutState`: temp file, fsync, rename); tests slow it. */
  saveState?: (file: string, state: RolloutState) => Promise<void>
  now?: () => number
  /** Minutes since midnight, local time (maintenance windows). */
  localMinutes?: () => number
  options?: Partial<RolloutAgentOptions>
}

/** One rollout as this daemon sees it: the spec, the evidence's verdict, its own decision. */
export interface RolloutStatus {
  spec: RolloutSpec
  plan: WavePlan
  view: RolloutView
  self: Decision
  report?: RolloutReport
}

interface Watch {
  startedAt: number
  baseRestarts: Map<string, number>
  everHealthy: boolean
  failedChecks: number
}

interface Trial {
  digest: string
  config: ConfigObject
  startedAt: number
  armed: boolean
}

function digestOf(config: ConfigObject): string {
  return toHex(sha256(utf8(canonicalJson(config)))).slice(0, 32)
}

const since = (ms: number): string =>
  ms >= 60_000 ? `${Math.round(ms / 60_000)} min` : `${Math.round(ms / 100) / 10} s`

export class RolloutAgent {
  private readonly c: RolloutAgentComponents
  private readonly opts: RolloutAgentOptions
  private readonly file: string
  private readonly now: () => number
  private readonly localMinutes: () => number
  private readonly saveState: (file: string, state: RolloutState) => Promise<void>
  private state: RolloutState
  /** The reports as last published (`record`): what this node's status records carry. */
  private published: Record<string, RolloutReport>
  /** The state write under way (never rejects), and the one queued behind it, if any. */
  private writing: Promise<void> = Promise.resolve()
  private nextWrite: Promise<void> | undefined
  private specs: RolloutSpec[] = []
  private self: NodeIdentity = { name: '', labels: {} }
  private labels = new Map<string, Record<string, string>>()
  private plans = new Map<string, { labels: Map<string, Record<string, string>>; plan: WavePlan }>()
  private decisions = new Map<string, Decision>()
  /** The config the last pass applied (probe intervals of the watched workloads). */
  private lastConfig: ConfigObject = {}
  /** The rollouts whose change the last pass applied, in order. */
  private applied: string[] = []
  private readonly watches = new Map<string, Watch>()
  private trial: Trial | undefined
  private appliedDigest: string | undefined
  private lastPeerRecordAt = 0
  private timer: NodeJS.Timeout | undefined
  private settleTimer: NodeJS.Timeout | undefined
  /** Evaluations run one at a time: each reads and writes the state. */
  private queue: Promise<void> = Promise.resolve()
  /** An evaluation on new evidence is queued and has not started. */
  private evaluationWaiting = false
  private stopped = false

  constructor(c: RolloutAgentComponents) {
    this.c = c
    this.opts = { ...DEFAULT_AGENT_OPTIONS, ...c.options }
    this.file = join(c.dataDir, ROLLOUT_STATE_FILE)
    this.now = c.now ?? Date.now
    this.localMinutes =
      c.localMinutes ??
      (() => {
        const d = new Date()
        return d.getHours() * 60 + d.getMinutes()
      })
    this.saveState = c.saveState ?? saveRolloutState
    this.state = emptyState()
    this.published = {}
  }

  /** Read what this node decided and reported before (call once, before the first pass). */
  async load(): Promise<void> {
    const { state, problem } = await loadRolloutState(this.file)
    if (problem !== undefined) this.c.events('error', 'rollout.state-lost', { problem })
    this.state = state
    this.published = structuredClone(state.reports)
  }

  static async open(c: RolloutAgentComponents): Promise<RolloutAgent> {
    const agent = new RolloutAgent(c)
    await agent.load()
    return agent
  }

  /**
   * The reports this node publishes in its status body (`rollouts`): as last recorded (`record`),
   * so a record never says this node switched before that is on disk.
   */
  reports(): Record<string, RolloutReport> {
    return structuredClone(this.published)
  }

  /**
   * Does the rollout of this id, as this node holds it, have a disruption budget? One it does not
   * hold (its config not synced here yet, or gone): true, so a relay errs towards flooding a
   * node's first report of it (`bringsNews`).
   */
  budgeted(rolloutId: string): boolean {
    const spec = this.specs.find(s => s.id === rolloutId)
    return spec === undefined || spec.budget !== undefined
  }

  /** Try mode's last rollback, and the last known-good config's digest, for the status body. */
  tryMode(): { lastKnownGood?: string; rolledBack?: RolloutState['tryMode'] } {
    const out: { lastKnownGood?: string; rolledBack?: RolloutState['tryMode'] } = {}
    if (this.state.lastKnownGood !== undefined) out.lastKnownGood = this.state.lastKnownGood.digest
    if (this.state.tryMode !== undefined) out.rolledBack = { ...this.state.tryMode }
    return out
  }

  /** Every rollout in the desired config, as this daemon's evidence shows it. */
  status(): RolloutStatus[] {
    return this.specs.map(spec => {
      const { plan, view, decision } = this.judge(spec)
      const s: RolloutStatus = { spec, plan, view, self: decision }
      const r = this.ownReport(spec)
      if (r !== undefined) s.report = r
      return s
    })
  }

  /**
   * The config this node should run, given the desired documents, its identity and its
   * effective config: the change of every rollout it has switched to on top, or the last
   * known-good config if try mode rolled this very config back. Called by each reconcile pass;
   * the pass applies what it returns.
   */
  async configFor(
    docs: ConfigDocument[],
    identity: NodeIdentity,
    base: ConfigObject
  ): Promise<{ config: ConfigObject; errors: string[] }> {
    const labels = await this.c.enrolled()
    const { rollouts, errors } = rolloutsOf(docs)
    await this.serial(async () => {
      this.specs = rollouts
      this.self = identity
      this.labels = labels
      await this.evaluate(false)
    })
    let config = base
    const applied: string[] = []
    for (const spec of this.specs) {
      // Scopes are checked here too: an operator's rollout never reaches past them.
      if (!this.runsNew(spec) || !inWriterScope(spec, identity.labels, this.c.key)) continue
      config = mergeConfig(config, spec.change)
      applied.push(spec.id)
    }
    this.applied = applied
    this.lastConfig = config
    const digest = digestOf(config)
    const lkg = this.state.lastKnownGood
    if (this.state.badConfigs.includes(digest) && lkg !== undefined && lkg.digest !== digest) {
      errors.push(
        `config ${digest.slice(0, 12)} lost every peer when it was applied (try mode rolled it back); running the last known-good config ${lkg.digest.slice(0, 12)} until the desired config changes`
      )
      // Known good: nothing to try.
      this.appliedDigest = lkg.digest
      this.trial = undefined
      return { config: lkg.config, errors }
    }
    if (digest !== this.appliedDigest) this.startTrial(digest, config)
    return { config, errors }
  }

  /** After a pass applied `configFor`'s config: start watching what was just switched. */
  afterReconcile(): void {
    const workloads = this.c.workloads()
    for (const spec of this.specs) {
      const r = this.ownReport(spec)
      if (r?.switchedAt === undefined || r.soakedAt !== undefined || !this.runsNew(spec)) {
        this.watches.delete(spec.id)
        continue
      }
      if (this.watches.has(spec.id)) continue
      const base = new Map<string, number>()
      for (const w of this.watched(spec)) base.set(w, workloads[w]?.restarts ?? 0)
      this.watches.set(spec.id, {
        startedAt: this.now(),
        baseRestarts: base,
        everHealthy: false,
        failedChecks: 0
      })
    }
    this.schedule()
  }

  /** A workload changed state: look at the watched ones now rather than at the next look. */
  poke(): void {
    if (this.watches.size === 0 || this.stopped) return
    clearTimeout(this.timer)
    this.timer = setTimeout(() => void this.serial(() => this.tick()), 0)
    this.timer.unref()
  }

  /** A status record arrived or was published: re-decide on the new evidence. */
  onStatus(record: { node: string; seq?: number }): void {
    if (record.node !== this.c.key) this.lastPeerRecordAt = this.now()
    // One evaluation waiting is enough: it reads every record held when it runs. (One per
    // record queued behind a slow save, and a burst of records kept the decisions seconds late.)
    if (this.specs.length === 0 || this.evaluationWaiting) return
    this.evaluationWaiting = true
    const t0 = performance.now()
    void this.serial(async () => {
      this.evaluationWaiting = false
      const t1 = performance.now()
      await this.evaluate(true)
      trace(
        'evaluated on %s %d: queued %d ms, ran %d ms',
        record.node.slice(0, 8),
        record.seq ?? 0,
        Math.round(t1 - t0),
        Math.round(performance.now() - t1)
      )
    })
  }

  /** Stop the timers; resolves once what is being decided is on disk. */
  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    clearTimeout(this.settleTimer)
    await this.queue
    await this.writing
  }

  // ---- internals -------------------------------------------------------------------------

  private serial(fn: () => Promise<void>): Promise<void> {
    const run = this.queue.then(fn).catch((err: unknown) => {
      log.error('rollout evaluation failed: %e', err)
      this.c.events('error', 'rollout.error', { error: err as Error })
    })
    this.queue = run
    return run
  }

  private ownReport(spec: RolloutSpec): RolloutReport | undefined {
    const r = this.state.reports[spec.id]
    return r?.digest === spec.digest ? r : undefined
  }

  /** Does this node run the rollout's change now? */
  private runsNew(spec: RolloutSpec): boolean {
    const r = this.ownReport(spec)
    return (
      r?.switchedAt !== undefined &&
      r.failedAt === undefined &&
      r.revertedAt === undefined &&
      !this.state.bad.includes(spec.digest)
    )
  }

  private planOf(spec: RolloutSpec): WavePlan {
    const held = this.plans.get(spec.digest)
    if (held !== undefined && held.labels === this.labels) return held.plan
    const plan = planWaves(spec, k => this.labels.get(k))
    this.plans.set(spec.digest, { labels: this.labels, plan })
    if (this.plans.size > MAX_REPORTS * 2) this.plans.delete(this.plans.keys().next().value!)
    return plan
  }

  private judge(spec: RolloutSpec): { plan: WavePlan; view: RolloutView; decision: Decision } {
    const plan = this.planOf(spec)
    const evidence = evidenceFrom(
      spec,
      this.c.statuses().filter(s => s.node !== this.c.key)
    )
    const own = this.ownReport(spec)
    evidence.set(
      this.c.key,
      own === undefined ? { at: this.now() } : { at: this.now(), report: own }
    )
    const view = viewRollout(spec, plan, evidence, { silentAfterMs: this.opts.silentAfterMs })
    const decision = decide(
      spec,
      plan,
      view,
      { key: this.c.key, labels: this.self.labels, localMinutes: this.localMinutes() },
      k => (k === this.c.key ? this.self.labels : this.labels.get(k))
    )
    return { plan, view, decision }
  }

  /**
   * Decide every rollout on the evidence held, record what changes in this node's reports
   * (to disk before anything acts on it), publish, and ask for a pass if what runs must change.
   */
  private async evaluate(fromEvidence: boolean): Promise<void> {
    if (this.stopped) return
    const now = this.now()
    let changed = false
    let switched = false
    let takingPart = false
    let wantPass = false
    let settleAt = Infinity
    for (const spec of this.specs) {
      const { plan, view, decision } = this.judge(spec)
      const takesPart = plan.waveOf.has(this.c.key) || selects(spec, this.self.labels, this.c.key)
      let r = this.ownReport(spec)
      if (r === undefined) {
        if (!takesPart) continue
        r = { digest: spec.digest, seenAt: now }
        this.state.reports[spec.id] = r
        changed = true
        // Its group's budget counts this node ahead of later ones once they see it take part.
        if (spec.budget !== undefined) takingPart = true
        if (this.state.bad.includes(spec.digest)) {
          // Failed here before (the report was pruned since): stays failed.
          Object.assign(r, { switchedAt: now, failedAt: now, reason: 'failed on this node before' })
        }
      }
      if (view.state === 'aborted' && r.abortedAt === undefined) {
        trace('aborted %s: %s', spec.id, view.abortReason)
        r.abortedAt = now
        changed = true
        this.c.events('warn', 'rollout.aborted', { rollout: spec.id, reason: view.abortReason })
      }
      const prev = this.decisions.get(spec.id)
      this.decisions.set(spec.id, decision)
      if (decision.run === 'new' && r.switchedAt === undefined) {
        const wait = spec.budget === undefined ? 0 : r.seenAt + this.opts.settleMs - now
        if (wait > 0) {
          settleAt = Math.min(settleAt, wait)
          continue
        }
        const wave = spec.waves[decision.wave ?? spec.waves.length - 1]!
        trace('switch %s wave %d: %s', spec.id, decision.wave ?? -1, decision.why)
        Object.assign(r, {
          switchedAt: now,
          until: now + spec.health.startTimeoutMs + 2 * wave.soakMs
        })
        changed = true
        switched = true
        wantPass = true
        this.c.events('info', 'rollout.switch', {
          rollout: spec.id,
          wave: decision.wave ?? null,
          why: decision.why
        })
      } else if (
        decision.run === 'old' &&
        r.switchedAt !== undefined &&
        r.failedAt === undefined &&
        r.revertedAt === undefined
      ) {
        r.revertedAt = now
        delete r.until
        changed = true
        wantPass = true
        this.c.events('warn', 'rollout.reverted', { rollout: spec.id, why: decision.why })
      } else if (decision.run === 'old' && prev?.why !== decision.why) {
        this.c.events('info', 'rollout.waiting', { rollout: spec.id, why: decision.why })
      }
    }
    if (Object.keys(this.state.reports).length > MAX_REPORTS) this.prune()
    if (changed) await this.record(switched, takingPart)
    const running = this.specs.filter(s => this.runsNew(s)).map(s => s.id)
    if (fromEvidence && (wantPass || running.join() !== this.applied.join())) {
      this.c.reconcile('rollout')
    }
    if (settleAt !== Infinity) {
      clearTimeout(this.settleTimer)
      this.settleTimer = setTimeout(() => void this.serial(() => this.evaluate(true)), settleAt)
      this.settleTimer.unref()
    }
  }

  /** Keep reports of configured rollouts first, then the newest others, up to MAX_REPORTS. */
  private prune(): void {
    const live = new Set(this.specs.map(s => s.id))
    const entries = Object.entries(this.state.reports).sort(
      ([a, x], [b, y]) => Number(live.has(b)) - Number(live.has(a)) || y.seenAt - x.seenAt
    )
    this.state.reports = Object.fromEntries(entries.slice(0, MAX_REPORTS))
  }

  /** The workloads a rollout's change names: the ones whose health decides it. */
  private watched(spec: RolloutSpec): string[] {
    return isMap(spec.change.workloads) ? Object.keys(spec.change.workloads) : []
  }

  private schedule(): void {
    clearTimeout(this.timer)
    if (this.stopped || (this.watches.size === 0 && this.trial === undefined)) return
    const workloads = isMap(this.lastConfig.workloads) ? this.lastConfig.workloads : {}
    const now = this.now()
    // One look per probe interval of the watched workloads (so failedChecks counts probes) …
    let every = this.opts.checkMs
    // … and one when a healthy node's soak is up, not at the next look after it.
    let soakUp = Infinity
    for (const spec of this.specs) {
      if (!this.watches.has(spec.id)) continue
      for (const w of this.watched(spec)) {
        const h = (workloads as Record<string, unknown>)[w]
        const ms = isMap(h) && isMap(h.health) ? h.health.intervalMs : undefined
        if (typeof ms === 'number') every = Math.min(every, ms)
      }
      const r = this.ownReport(spec)
      const wave = spec.waves[this.decisions.get(spec.id)?.wave ?? spec.waves.length - 1]
      if (r?.healthySince !== undefined && wave !== undefined) {
        soakUp = Math.min(soakUp, r.healthySince + wave.soakMs - now)
      }
    }
    const delay = Math.min(Math.max(MIN_CHECK_MS, every), Math.max(0, soakUp))
    this.timer = setTimeout(() => void this.serial(() => this.tick()), delay)
    this.timer.unref()
  }

  /** Look at the watched workloads and the try-mode clock; act on what they show. */
  private async tick(): Promise<void> {
    if (this.stopped) return
    const now = this.now()
    const workloads = this.c.workloads()
    let changed = false
    let triedBack = false
    let wantPass = false
    for (const spec of this.specs) {
      const w = this.watches.get(spec.id)
      const r = this.ownReport(spec)
      if (w === undefined || r === undefined || !this.runsNew(spec) || r.soakedAt !== undefined) {
        this.watches.delete(spec.id)
        continue
      }
      const wave = spec.waves[this.decisions.get(spec.id)?.wave ?? spec.waves.length - 1]!
      let healthy = true
      let restarts = 0
      for (const name of this.watched(spec)) {
        const s = workloads[name]
        const up = s !== undefined && (s.healthy === null ? s.state === 'running' : s.healthy)
        healthy &&= up
        restarts = Math.max(restarts, (s?.restarts ?? 0) - (w.baseRestarts.get(name) ?? 0))
      }
      if (healthy) {
        w.everHealthy = true
        w.failedChecks = 0
        if (r.healthySince === undefined) {
          r.healthySince = now
          changed = true
        }
      } else {
        if (w.everHealthy) w.failedChecks++
        if (r.healthySince !== undefined) {
          delete r.healthySince
          changed = true
        }
      }
      const fail =
        restarts > spec.health.restarts
          ? `crash loop: ${restarts} restarts within the watch (at most ${spec.health.restarts})`
          : w.failedChecks >= spec.health.failedChecks
            ? `health check failed ${w.failedChecks} times running`
            : !w.everHealthy && now - w.startedAt > spec.health.startTimeoutMs
              ? `not healthy within ${since(spec.health.startTimeoutMs)}`
              : r.until !== undefined && now > r.until
                ? `did not stay healthy for ${since(wave.soakMs)} before its update claim ran out`
                : undefined
      if (fail !== undefined) {
        trace('failed %s: %s', spec.id, fail)
        this.fail(spec, r, fail, now)
        changed = true
        wantPass = true
      } else if (r.healthySince !== undefined && now - r.healthySince >= wave.soakMs) {
        trace('soaked %s', spec.id)
        r.soakedAt = now
        delete r.until
        this.watches.delete(spec.id)
        changed = true
        this.c.events('info', 'rollout.soaked', {
          rollout: spec.id,
          wave: wave.percent ?? 'canary'
        })
      }
    }
    const t = this.trial
    if (t !== undefined && now - t.startedAt >= this.opts.tryModeMs) {
      // Judged at the end of the window: a record that was in flight when the config was
      // applied proves nothing about the config, so only the second half counts.
      const reached =
        this.c.connected() || this.lastPeerRecordAt >= t.startedAt + this.opts.tryModeMs / 2
      if (!t.armed || reached) {
        this.trial = undefined
        await this.keepAsGood(t.digest, t.config)
      } else {
        const reason = `no peer reached within ${since(this.opts.tryModeMs)} of applying config ${t.digest.slice(0, 12)}`
        this.state.badConfigs = [...this.state.badConfigs, t.digest].slice(-MAX_BAD)
        this.state.tryMode = { digest: t.digest, at: now, reason }
        this.trial = undefined
        for (const spec of this.specs) {
          const r = this.ownReport(spec)
          if (r !== undefined && this.watches.has(spec.id)) {
            this.fail(spec, r, `try mode: ${reason}`, now)
          }
        }
        this.c.events('error', 'trymode.rollback', { config: t.digest, reason })
        triedBack = true
        changed = true
        wantPass = true
      }
    }
    // Healthy, soaked, failed, try mode's rollback: what happened here, never a switch.
    if (changed) await this.record(false, triedBack)
    if (wantPass) this.c.reconcile('rollout')
    this.schedule()
  }

  private fail(spec: RolloutSpec, r: RolloutReport, reason: string, now: number): void {
    Object.assign(r, { failedAt: now, reason })
    delete r.until
    this.state.bad = [...this.state.bad.filter(d => d !== spec.digest), spec.digest].slice(-MAX_BAD)
    this.watches.delete(spec.id)
    this.c.events('error', 'rollout.failed', {
      rollout: spec.id,
      reason,
      action: 'back to the version before it; marked bad on this node'
    })
  }

  private startTrial(digest: string, config: ConfigObject): void {
    this.appliedDigest = digest
    const now = this.now()
    if (this.opts.tryModeMs <= 0) {
      this.trial = undefined
      void this.serial(() => this.keepAsGood(digest, config))
      return
    }
    const armed = this.c.connected() || now - this.lastPeerRecordAt < this.opts.tryModeMs
    this.trial = { digest, config, startedAt: now, armed }
    this.schedule()
  }

  private async keepAsGood(digest: string, config: ConfigObject): Promise<void> {
    if (this.state.lastKnownGood?.digest === digest) return
    this.state.lastKnownGood = { digest, at: this.now(), config }
    // Not waited for: what must find it on disk is the next switch, whose own write (`record`)
    // comes after this one and carries it too.
    this.saveSoon()
  }

  /**
   * Publish the reports as they are now, and write the state to disk: first the write, then the
   * record, when `switched` (a rollout was just switched to); otherwise the record at once and
   * the write behind it. A record goes out at once only when it brings a step another node's
   * gate or abort rule needs (`bringsStep`: switched, soaked, failed, reverted), or when `always`
   * (taking part in a rollout with a disruption budget: its group counts this node ahead of
   * them; try mode's rollback, which no report carries). Any other step (taking part in a rollout
   * without a budget, healthy, aborted) is carried by this node's next record, whatever sends it
   * (the reconcile pass that follows every config change, a workload's state, the status
   * interval). At 30 daemons each node's "taking part" and "aborted" records, each flooded over
   * every link, were two thirds of the records in flight while a canary's failure crossed the
   * mesh (docs/benchmarks.md), and no peer decided anything on them: a peer learns of an abort
   * from the same evidence that made this node report it.
   *
   * Why a switch waits for the disk and nothing else does. The write is atomic (old file or new),
   * so a crash before it is flushed puts the node back in the state before this step, and the
   * step is lost, not half-kept. For each step, what a peer that received the record then holds:
   * - switched: the claim is about to come true (the reconcile pass that switches runs after
   *   this). Lost to a crash, the node would restart on the old version having told the fleet
   *   it updated, and the claim would hold budget and count as executed for nothing: false. So
   *   the record goes, and the pass that acts on it runs (`configFor` waits for this queue),
   *   only once the switch is on disk; the last known-good config is in that same write.
   * - healthy, soaked, failed, aborted, reverted: each says what this node observed or decided
   *   about what it already runs, true when sent. Lost to a crash, the node restarts switched,
   *   watches the new version again and reports the step again (or, after an abort, holds the
   *   peers' `abortedAt` and goes back again); its next records lack the step meanwhile. That is
   *   a fact retracted for a while, never one invented: a wave a peer counted through was
   *   through, and an abort is kept by every peer that saw it (`abortedAt` is theirs). Going back
   *   to the old version on a failure does not wait either: the old version is what ran before
   *   the switch, and a crash before the write leaves the node to fail the new one again.
   * The write took from 3 ms to 7 s on a disk shared with 30 daemons' stores; a failure or a
   * wave's last "soaked" waited that long before it left the origin.
   */
  private async record(switched: boolean, always = false): Promise<void> {
    if (switched) {
      await this.persist()
      trace('saved, publishing')
    } else {
      this.saveSoon()
    }
    const news =
      switched ||
      always ||
      bringsStep({ rollouts: this.published }, { rollouts: this.state.reports }, MAX_REPORTS)
    this.published = structuredClone(this.state.reports)
    if (news) {
      if (!switched) trace('publishing, saving behind')
      this.c.publish()
    } else {
      trace('no news: the next record carries it, saving behind')
    }
  }

  /** Write the state; a failed write is logged and said (the next write carries it again). */
  private saveSoon(): void {
    this.persist().catch((err: unknown) => {
      log.error('rollout state not saved: %e', err)
      this.c.events('error', 'rollout.error', { error: err as Error })
    })
  }

  /**
   * Write the state as it is when the write starts, after the write under way; resolves once it
   * is on disk. Calls while a write waits share it: a burst of steps makes one write, not one
   * each (each an fsync, behind the others).
   */
  private persist(): Promise<void> {
    if (this.nextWrite !== undefined) return this.nextWrite
    const next = this.writing.then(() => {
      this.nextWrite = undefined
      return this.saveState(this.file, this.state)
    })
    this.nextWrite = next
    this.writing = next.catch(() => {})
    return next
  }
}
