/** Rollout metrics on the daemon's registry (read when scraped): this node's part, and the fleet's as its evidence shows. */
import type { Registry } from 'prom-client'
import { labelledGauge } from './metrics.ts'
import type { RolloutAgent } from './rollout-agent.ts'

const PHASES = ['pending', 'updating', 'soaked', 'failed', 'reverted'] as const
const STATES = ['not-started', 'running', 'paused', 'aborted', 'completed'] as const

export function registerRolloutMetrics(registry: Registry, agent: RolloutAgent): void {
  labelledGauge(
    registry,
    'rhizome_rollout_state',
    'Per rollout: 1 for its state as this node sees it (not-started, running, paused, aborted, completed)',
    ['rollout', 'state'],
    g => {
      for (const s of agent.status()) {
        for (const state of STATES) {
          g.set({ rollout: s.spec.id, state }, state === s.view.state ? 1 : 0)
        }
      }
    }
  )
  labelledGauge(
    registry,
    'rhizome_rollout_node_phase',
    "Per rollout: 1 for this node's phase (pending, updating, soaked, failed, reverted)",
    ['rollout', 'phase'],
    g => {
      for (const s of agent.status()) {
        const r = s.report
        const phase =
          r?.switchedAt === undefined
            ? 'pending'
            : r.failedAt !== undefined
              ? 'failed'
              : r.revertedAt !== undefined
                ? 'reverted'
                : r.soakedAt !== undefined
                  ? 'soaked'
                  : 'updating'
        for (const p of PHASES) g.set({ rollout: s.spec.id, phase: p }, p === phase ? 1 : 0)
      }
    }
  )
  labelledGauge(
    registry,
    'rhizome_rollout_nodes',
    'Per rollout: eligible nodes by phase, as this node holds the evidence',
    ['rollout', 'phase'],
    g => {
      for (const s of agent.status()) {
        for (const p of PHASES) g.set({ rollout: s.spec.id, phase: p }, 0)
        for (const n of s.view.nodes) g.inc({ rollout: s.spec.id, phase: n.phase })
      }
    }
  )
  labelledGauge(
    registry,
    'rhizome_rollout_waves_passed',
    'Per rollout: waves through (their threshold soaked on the new version)',
    ['rollout'],
    g => {
      for (const s of agent.status()) {
        g.set({ rollout: s.spec.id }, s.view.waves.filter(w => w.passed).length)
      }
    }
  )
}
