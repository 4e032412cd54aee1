/**
 * Wave assignment: which wave each eligible node of a rollout belongs to. Pure, and the same on
 * every peer that holds the same rollout and enrolment labels:
 *
 * - Only the nodes frozen in the rollout's `eligible` list take part, so a device enrolled after
 *   the rollout started does not reshuffle anyone (it follows the final state instead); and of
 *   those only the ones inside the scope of the operators who wrote it (a list is no authority).
 * - Canary waves come first: the eligible nodes matching each canary selector, in order.
 * - The others are ranked by sha-256("rhizome/rollout-rank/v1" ‖ rollout id ‖ digest ‖ node key)
 *   and fill the percentage waves in rank order, until the nodes assigned so far (canaries
 *   included) reach ceil(percent × eligible / 100). A new version (new digest) ranks afresh, so
 *   the same nodes are not always first.
 *
 * The order in which a group's nodes go when a disruption budget holds them back is (wave, rank).
 */
import { sha256 } from '@noble/hashes/sha2.js'
import { toHex, utf8 } from './bytes.ts'
import { selectorMatches } from './effective-config.ts'
import { inWriterScope, type RolloutSpec } from './rollout.ts'

export interface WavePlan {
  /** The members of each wave, in the order they go. */
  waves: string[][]
  /** Node key → its wave. */
  waveOf: Map<string, number>
  /** Node key → its place in the rollout's order (wave first, then rank), 0 first. */
  order: Map<string, number>
}

/** A node's rank in a rollout: lower goes first. */
export function rankOf(spec: Pick<RolloutSpec, 'id' | 'digest'>, key: string): string {
  return toHex(sha256(utf8(`rhizome/rollout-rank/v1\0${spec.id}\0${spec.digest}\0${key}`)))
}

/**
 * Assign the eligible nodes to waves. `labelsOf` gives a node's enrolment labels (canary
 * selectors match on them); a node no longer enrolled has none and is never a canary.
 */
export function planWaves(
  spec: Pick<RolloutSpec, 'id' | 'digest' | 'waves' | 'eligible' | 'writerScopes' | 'unreachable'>,
  labelsOf: (key: string) => Record<string, string> | undefined
): WavePlan {
  const eligible = [...new Set(spec.eligible ?? [])]
    .filter(k => inWriterScope(spec, labelsOf(k) ?? {}, k))
    .sort()
  const waves: string[][] = spec.waves.map(() => [])
  const waveOf = new Map<string, number>()
  const rank = new Map(eligible.map(k => [k, rankOf(spec, k)]))
  const byRank = (a: string, b: string): number => {
    const ra = rank.get(a) as string
    const rb = rank.get(b) as string
    return ra < rb ? -1 : ra > rb ? 1 : a < b ? -1 : 1
  }
  const rest: string[] = []
  for (const key of eligible) {
    const labels = labelsOf(key) ?? {}
    const canary = spec.waves.findIndex(
      w => w.canary !== undefined && selectorMatches(w.canary, labels)
    )
    if (canary >= 0) {
      waves[canary]!.push(key)
      waveOf.set(key, canary)
    } else rest.push(key)
  }
  rest.sort(byRank)
  for (const w of waves) w.sort(byRank)
  let assigned = waveOf.size
  let next = 0
  spec.waves.forEach((w, i) => {
    if (w.percent === undefined) return
    const target = Math.ceil((w.percent * eligible.length) / 100)
    while (assigned < target && next < rest.length) {
      const key = rest[next++]!
      waves[i]!.push(key)
      waveOf.set(key, i)
      assigned++
    }
  })
  // The last wave is 100 %, so every ranked node has a wave; this only guards a hand-built spec.
  for (; next < rest.length; next++) {
    const key = rest[next]!
    waves[waves.length - 1]!.push(key)
    waveOf.set(key, waves.length - 1)
  }
  const order = new Map<string, number>()
  let i = 0
  for (const w of waves) for (const key of w) order.set(key, i++)
  return { waves, waveOf, order }
}
