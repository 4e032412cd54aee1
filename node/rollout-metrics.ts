/** Rollout metrics on the daemon's registry (read when scraped): this node's part, and the fleet's as its evidence shows. */
import { Gauge, type Registry } from 'prom-client'
import type { RolloutAgent } from './rollout-agent.ts'

const PHASES = ['pending', 'updating', 'soaked', 'failed', 'reverted'] as const
const STATES = ['not-started', 'running', 'paused', 'aborted', 'completed'] as const

export function registerRolloutMetrics(registry: Registry, agent: RolloutAgent): void {
  void new Gauge({
    name: 'rhizome_rollout_state',
    help: 'Per rollout: 1 for its state as this node sees it (not-started, running, paused, aborted, completed)',
    labelNames: ['rollout', 'state'],
    registers: [registry],
    collect() {
      this.reset()
      for (const s of agent.status()) {
        for (const state of STATES) {
          this.set({ rollout: s.spec.id, state }, state === s.view.state ? 1 : 0)
        }
      }
    }
  })
  void new Gauge({
    name: 'rhizome_rollout_node_phase',
    help: "Per rollout: 1 for this node's phase (pending, updating, soaked, failed, reverted)",
    labelNames: ['rollout', 'phase'],
    registers: [registry],
    collect() {
      this.reset()
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
        for (const p of PHASES) this.set({ rollout: s.spec.id, phase: p }, p === phase ? 1 : 0)
      }
    }
  })
  void new Gauge({
    name: 'rhizome_rollout_nodes',
    help: 'Per rollout: eligible nodes by phase, as this node holds the evidence',
    labelNames: ['rollout', 'phase'],
    registers: [registry],
    collect() {
      this.reset()
      for (const s of agent.status()) {
        for (const p of PHASES) this.set({ rollout: s.spec.id, phase: p }, 0)
        for (const n of s.view.nodes) this.inc({ rollout: s.spec.id, phase: n.phase })
      }
    }
  })
  void new Gauge({
    name: 'rhizome_rollout_waves_passed',
    help: 'Per rollout: waves through (their threshold soaked on the new version)',
    labelNames: ['rollout'],
    registers: [registry],
    collect() {
      this.reset()
      for (const s of agent.status()) {
        this.set({ rollout: s.spec.id }, s.view.waves.filter(w => w.passed).length)
      }
    }
  })
}
