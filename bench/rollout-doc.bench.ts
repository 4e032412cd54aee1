/**
 * What a rollout's frozen `eligible` list costs every peer that receives it: the Automerge change
 * `rhizome apply` writes for a new rollout over N nodes, decoded (`Automerge.decodeChange`, what
 * a peer does to read a batch's changes before verifying their signatures, in one synchronous
 * call) and applied, written as the keys are stored now (`applyOps`: immutable strings, one
 * operation per key) beside the same list written as plain strings (collaborative text, one
 * operation per character: how it was stored before), in the same run. Medians of 5.
 *
 * Usage: node bench/rollout-doc.bench.ts [N,N,...] (default 30,1000,10000)
 */
import * as Automerge from '@automerge/automerge'
import { randomBytes } from 'node:crypto'
import { availableParallelism, loadavg } from 'node:os'
import { applyOps, diffDocument } from '../crdt/config-diff.ts'
import { freezeRollouts } from '../crdt/rollout.ts'

const sizes = (process.argv[2] ?? '30,1000,10000').split(',').map(Number)
const say = (s: string): void => void process.stdout.write(`${s}\n`)
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

say(
  `rollout-doc bench: ${availableParallelism()} cores, load ${loadavg()
    .map(l => l.toFixed(1))
    .join(' ')}, node ${process.version}, ${new Date().toISOString()}`
)
for (const n of sizes) {
  const nodes = new Map(
    Array.from({ length: n }, () => [randomBytes(32).toString('hex'), { site: 'lab' }] as const)
  )
  const file = {
    defaults: {},
    rollouts: {
      web: {
        change: { workloads: { web: { version: '2' } } },
        waves: [{ canary: { site: 'lab' } }, { percent: 100 }]
      }
    }
  }
  const desired = freezeRollouts('fleet', file, undefined, nodes, new Date()).doc
  const base = Automerge.from<Record<string, unknown>>({ defaults: {} })
  const ops = diffDocument({ id: 'fleet', value: base }, desired)
  const stored = Automerge.getLastLocalChange(
    Automerge.change(Automerge.clone(base), d => applyOps(d, ops))
  )!
  const text = Automerge.getLastLocalChange(
    Automerge.change(Automerge.clone(base), d => {
      d.rollouts = structuredClone(desired.rollouts)
    })
  )!
  const measure = (change: Uint8Array): { ops: number; decode: number; apply: number } => {
    const decode: number[] = []
    const apply: number[] = []
    for (let i = 0; i < 5; i++) {
      let t = performance.now()
      Automerge.decodeChange(change)
      decode.push(performance.now() - t)
      const fresh = Automerge.clone(base)
      t = performance.now()
      Automerge.applyChanges(fresh, [change])
      apply.push(performance.now() - t)
    }
    const count = Automerge.decodeChange(change).ops.length
    return { ops: count, decode: median(decode), apply: median(apply) }
  }
  const now = measure(stored)
  const before = measure(text)
  say(
    `  ${n} eligible: stored as now ${now.ops} ops, ${stored.length} B, decode ${now.decode.toFixed(1)} ms, apply ${now.apply.toFixed(1)} ms | as text (before) ${before.ops} ops, ${text.length} B, decode ${before.decode.toFixed(1)} ms, apply ${before.apply.toFixed(1)} ms | decode ${(now.decode / before.decode).toFixed(3)}×`
  )
}
