/**
 * The daemon's rollout routes (HTTP API) and what they answer: every rollout as this daemon's
 * evidence shows it (the same verdicts every peer holding the same records reaches).
 *
 *   GET /api/rollouts          [RolloutSummary]   every rollout in the desired config
 *   GET /api/rollouts/:id      RolloutDetail      one, by id (`fleet:web-v2`, URL-encoded) or
 *                                                 by name when only one document has it
 */
import { HttpError, type Route } from './http-api.ts'
import type { NodePhase, RolloutPhase, RolloutReport, WaveView } from '../crdt/rollout-gate.ts'
import type { RolloutAgent, RolloutStatus } from './rollout-agent.ts'

export interface RolloutSummary {
  id: string
  doc: string
  name: string
  digest: string
  state: RolloutPhase
  abortReason: string | null
  startedAt: string | null
  eligible: number
  change: unknown
  /** Each wave as the gate sees it, with its spec's settings and its member count. */
  waves: Array<
    Pick<WaveView, 'index' | 'needed' | 'switched' | 'soaked' | 'failed' | 'passed' | 'open'> & {
      canary: Record<string, string | string[]> | null
      percent: number | null
      threshold: number
      soakMs: number
      members: number
    }
  >
  executed: number
  failed: number
  stuck: boolean
  waiting: number
  /** What this daemon's node does about it, and why. */
  self: { run: 'new' | 'old'; why: string; wave: number | null }
}

export interface RolloutDetail extends RolloutSummary {
  nodes: Array<{
    key: string
    name: string | null
    wave: number
    phase: NodePhase
    silent: boolean
    seen: boolean
    report: RolloutReport | null
  }>
  waitingFor: Array<{ key: string; name: string | null; wave: number; why: string }>
}

export function rolloutSummary(s: RolloutStatus): RolloutSummary {
  return {
    id: s.spec.id,
    doc: s.spec.docId,
    name: s.spec.name,
    digest: s.spec.digest,
    state: s.view.state,
    abortReason: s.view.abortReason ?? null,
    startedAt: s.spec.startedAt ?? null,
    eligible: s.spec.eligible?.length ?? 0,
    change: s.spec.change,
    waves: s.view.waves.map(w => ({
      index: w.index,
      canary: s.spec.waves[w.index]?.canary ?? null,
      percent: w.percent ?? null,
      threshold: s.spec.waves[w.index]?.threshold ?? 0,
      soakMs: s.spec.waves[w.index]?.soakMs ?? 0,
      members: w.members.length,
      needed: w.needed,
      switched: w.switched,
      soaked: w.soaked,
      failed: w.failed,
      passed: w.passed,
      open: w.open
    })),
    executed: s.view.executed,
    failed: s.view.failed,
    stuck: s.view.stuck,
    waiting: s.view.waitingFor.length,
    self: { run: s.self.run, why: s.self.why, wave: s.self.wave ?? null }
  }
}

export function rolloutDetail(s: RolloutStatus, names: Map<string, string>): RolloutDetail {
  return {
    ...rolloutSummary(s),
    nodes: s.view.nodes.map(n => ({
      key: n.key,
      name: names.get(n.key) ?? null,
      wave: n.wave,
      phase: n.phase,
      silent: n.silent,
      seen: n.seen,
      report: n.report ?? null
    })),
    waitingFor: s.view.waitingFor.map(w => ({ ...w, name: names.get(w.key) ?? null }))
  }
}

/** `names`: enrolled devices' names by key. */
export function rolloutRoutes(
  agent: RolloutAgent,
  names: () => Promise<Map<string, string>>
): Route[] {
  return [
    {
      method: 'GET',
      pattern: /^\/api\/rollouts$/,
      handler: async () => ({ json: agent.status().map(rolloutSummary) })
    },
    {
      method: 'GET',
      pattern: /^\/api\/rollouts\/([^/]+)$/,
      handler: async m => {
        const want = decodeURIComponent(m[1] as string)
        const all = agent.status()
        const byName = all.filter(s => s.spec.name === want)
        const hit =
          all.find(s => s.spec.id === want) ?? (byName.length === 1 ? byName[0] : undefined)
        if (hit === undefined) {
          throw new HttpError(
            404,
            'NotFound',
            byName.length > 1
              ? `several documents have a rollout "${want}" (${byName.map(s => s.spec.id).join(', ')}); name it as <doc>:<name>`
              : `no rollout "${want}" in the desired config; GET /api/rollouts (rhizome rollout list) lists them`
          )
        }
        return { json: rolloutDetail(hit, await names()) }
      }
    }
  ]
}
