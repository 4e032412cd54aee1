/**
 * The config one node runs, computed anywhere from the documents and what the node reports: its
 * effective config (effective-config.ts) for its name and labels, then the change of every
 * rollout it reports running, layered as its rollout agent layers them (node/rollout-agent.ts
 * `configFor`): switched, not failed or gone back, for the rollout's current digest, and inside
 * the rollout's writers' reach. `rhizome describe` and the dashboard's node view show this.
 * Browser-safe, no I/O. What it cannot know: a config try mode rolled back on the node (the node
 * then runs its last known-good config, which only it holds; its status body says so).
 */
import {
  effectiveConfig,
  mergeConfig,
  type ConfigDocument,
  type ConfigObject
} from './effective-config.ts'
import type { RolloutReport } from './rollout-gate.ts'
import { inWriterScope, rolloutsOf } from './rollout.ts'

export function nodeConfig(
  docs: ConfigDocument[],
  node: {
    name: string
    labels: Record<string, string>
    /**
     * Its public key (hex): documents name the devices they may not reach by key (absent: a
     * document that names any does not apply).
     */
    key?: string
    /** Its status body's reports, by rollout id. */
    rollouts?: Record<string, RolloutReport>
  }
): { config: ConfigObject; rollouts: string[]; errors: string[] } {
  let config = effectiveConfig(docs, { name: node.name, labels: node.labels, key: node.key })
  const { rollouts, errors } = rolloutsOf(docs)
  const reports = node.rollouts ?? {}
  const applied: string[] = []
  for (const spec of rollouts) {
    const r = reports[spec.id]
    const runs =
      r !== undefined &&
      r.digest === spec.digest &&
      r.switchedAt !== undefined &&
      r.failedAt === undefined &&
      r.revertedAt === undefined
    if (!runs || !inWriterScope(spec, node.labels, node.key)) continue
    config = mergeConfig(config, spec.change)
    applied.push(spec.id)
  }
  return { config, rollouts: applied, errors }
}
