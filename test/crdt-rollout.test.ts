/**
 * Staged rollouts, the pure core: the schema's shape checks as `rhizome apply` reports them,
 * freezing at the start, wave assignment (every peer computes the same waves; later enrolments
 * reshuffle nothing) and gating (no node advances without the evidence; verdicts only move
 * forward as evidence grows; the disruption budget holds in a simulated fleet).
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import * as Automerge from '@automerge/automerge'
import { applyOps, diffDocument, plainValue } from '../crdt/config-diff.ts'
import { parseFleetYaml } from '../crdt/fleet-yaml.ts'
import { freezeRollouts, parseRollout, rolloutsOf, type RolloutSpec } from '../crdt/rollout.ts'
import { planWaves, type WavePlan } from '../crdt/rollout-waves.ts'
import {
  bringsNews,
  bringsStep,
  decide,
  evidenceFrom,
  inWindow,
  viewRollout,
  type Evidence,
  type RolloutReport
} from '../crdt/rollout-gate.ts'

const key = (i: number): string => i.toString(16).padStart(64, '0')

function spec(raw: Record<string, unknown>, eligible?: string[]): RolloutSpec {
  return parseRollout('fleet', 'web-v2', {
    change: { workloads: { web: { version: '2' } } },
    ...raw,
    ...(eligible === undefined ? {} : { eligible })
  })
}

function fleetFile(rollout: string): string {
  return `fleet:\n  defaults: { workloads: { web: { command: [node, web.js], version: "1" } } }\n  rollouts:\n    web-v2:\n${rollout
    .split('\n')
    .map(l => `      ${l}`)
    .join('\n')}\n`
}

describe('rollout schema', () => {
  it('a fleet file with a rollout parses; the rollout reads back with its defaults', () => {
    const docs = parseFleetYaml(
      fleetFile(
        'change: { workloads: { web: { version: "2" } } }\nwaves: [{ canary: { site: lab } }, { percent: 50, soak: 1m }, { percent: 100 }]\nthreshold: 90\nsoak: 30s\nbudget: { maxUnavailable: 1 }\nwindows: { berlin: ["22:00-06:00"] }'
      )
    )
    const { rollouts, errors } = rolloutsOf([{ id: 'fleet', value: docs.fleet }])
    assert.deepEqual(errors, [])
    const r = rollouts[0]!
    assert.equal(r.id, 'fleet:web-v2')
    assert.deepEqual(
      r.waves.map(w => [w.canary ?? w.percent, w.threshold, w.soakMs]),
      [
        [{ site: 'lab' }, 90, 30_000],
        [50, 90, 60_000],
        [100, 90, 30_000]
      ]
    )
    assert.deepEqual(r.abort, { minExecuted: 1, maxFailedPercent: 0 })
    assert.equal(r.groupBy, 'site')
    assert.deepEqual(r.windows, { berlin: [{ from: 22 * 60, to: 6 * 60 }] })
    assert.equal(r.state, 'running')
  })

  const bad: Array<[string, string, RegExp]> = [
    [
      'unknown key',
      'change: { workloads: {} }\nwaves: [{ percent: 100 }]\nspeed: 3',
      /unknown key "speed"/
    ],
    [
      'last wave not 100',
      'change: { workloads: {} }\nwaves: [{ percent: 50 }]',
      /last wave must be \{ percent: 100 \}/
    ],
    [
      'canary after a percentage',
      'change: { workloads: {} }\nwaves: [{ percent: 10 }, { canary: { site: lab } }, { percent: 100 }]',
      /canary waves come before percentage waves/
    ],
    [
      'falling percentages',
      'change: { workloads: {} }\nwaves: [{ percent: 50 }, { percent: 20 }, { percent: 100 }]',
      /20 is not above the previous wave's 50/
    ],
    [
      'a bad duration',
      'change: { workloads: {} }\nwaves: [{ percent: 100 }]\nsoak: soon',
      /"soon" is not a duration/
    ],
    [
      'a bad window',
      'change: { workloads: {} }\nwaves: [{ percent: 100 }]\nwindows: { berlin: ["late"] }',
      /"late" is not a time range/
    ],
    ['no change', 'waves: [{ percent: 100 }]', /expected what the rollout changes/],
    [
      'a bad workload in the change',
      'change: { workloads: { web: { image: x } } }\nwaves: [{ percent: 100 }]',
      /web-v2\.change\.workloads\.web: unknown key "image"/
    ],
    [
      'a bad state',
      'change: { workloads: {} }\nwaves: [{ percent: 100 }]\nstate: stopped',
      /"stopped" is not running, paused or aborted/
    ]
  ]
  for (const [what, text, message] of bad) {
    it(`apply refuses ${what}, naming the key`, () => {
      assert.throws(
        () => parseFleetYaml(fleetFile(text)),
        (err: Error) => err.name === 'InvalidConfigError' && message.test(err.message)
      )
    })
  }

  it('apply freezes the eligible nodes of a new rollout, and keeps them (and its state) after', () => {
    const nodes = new Map([
      [key(3), { site: 'lab', role: 'pos' }],
      [key(1), { site: 'berlin', role: 'pos' }],
      [key(2), { site: 'berlin', role: 'kiosk' }]
    ])
    const rollout = {
      selector: { role: 'pos' },
      change: { workloads: { web: { version: '2' } } },
      waves: [{ canary: { site: 'lab' } }, { percent: 100 }]
    }
    const now = new Date('2026-11-25T10:00:00Z')
    const first = freezeRollouts('fleet', { rollouts: { 'web-v2': rollout } }, {}, nodes, now)
    const frozen = (first.doc.rollouts as Record<string, Record<string, unknown>>)['web-v2']!
    assert.deepEqual(frozen.eligible, [key(1), key(3)])
    assert.equal(frozen.startedAt, now.toISOString())
    assert.deepEqual(first.started, [{ id: 'fleet:web-v2', eligible: 2 }])
    // The same file again, once an operator paused it and a node enrolled: nothing moves.
    nodes.set(key(4), { site: 'berlin', role: 'pos' })
    const held = { rollouts: { 'web-v2': { ...frozen, state: 'paused' } } }
    const again = freezeRollouts(
      'fleet',
      { rollouts: { 'web-v2': rollout } },
      held,
      nodes,
      new Date()
    )
    assert.deepEqual(again.doc, held)
    assert.deepEqual(again.started, [])
    // A new change is a new rollout: frozen afresh, running.
    const v3 = { ...rollout, change: { workloads: { web: { version: '3' } } } }
    const next = freezeRollouts('fleet', { rollouts: { 'web-v2': v3 } }, held, nodes, now)
    const r = (next.doc.rollouts as Record<string, Record<string, unknown>>)['web-v2']!
    assert.deepEqual(r.eligible, [key(1), key(3), key(4)])
    assert.equal(r.state, undefined)
  })

  it("a rollout's frozen node list costs one operation per node in the document, not one per character", () => {
    // 1,000 nodes: as collaborative text (one op per character) every peer decoded 64,000
    // operations, ~0.3 s in one synchronous call, before it could verify the change.
    const nodes = new Map(Array.from({ length: 1000 }, (_, i) => [key(i), { site: 'lab' }]))
    const file = {
      rollouts: {
        'web-v2': {
          change: { workloads: { web: { version: '2' } } },
          waves: [{ canary: { site: 'lab' } }, { percent: 100 }]
        }
      }
    }
    const now = new Date('2026-11-27T06:00:00Z')
    let doc = Automerge.from<Record<string, unknown>>({ defaults: {} })
    const write = (desired: Record<string, unknown>): number => {
      const ops = diffDocument({ id: 'fleet', value: doc }, desired)
      if (ops.length === 0) return 0
      doc = Automerge.change(doc, d => applyOps(d, ops))
      return Automerge.decodeChange(Automerge.getLastLocalChange(doc)!).ops.length
    }
    const first = freezeRollouts('fleet', { defaults: {}, ...file }, undefined, nodes, now)
    const written = write(first.doc)
    assert.ok(written < 1100, `${written} operations for 1,000 node keys`)
    // It reads back as the same rollout (same digest: the evidence still counts) ...
    const raw = (doc.rollouts as Record<string, unknown>)['web-v2']
    const read = parseRollout('fleet', 'web-v2', raw)
    const plain = parseRollout('fleet', 'web-v2', plainValue(raw))
    assert.equal(read.eligible?.length, 1000)
    assert.equal(read.digest, plain.digest)
    // ... and applying the same file again writes nothing.
    const again = freezeRollouts('fleet', { defaults: {}, ...file }, doc, nodes, new Date())
    assert.deepEqual(again.started, [])
    assert.equal(write(again.doc), 0)
  })

  it('apply refuses a new rollout whose canary matches none of its nodes', () => {
    const nodes = new Map([[key(1), { site: 'berlin' }]])
    assert.throws(
      () =>
        freezeRollouts(
          'fleet',
          {
            rollouts: {
              'web-v2': {
                change: { workloads: {} },
                waves: [{ canary: { site: 'lbb' } }, { percent: 100 }]
              }
            }
          },
          {},
          nodes,
          new Date()
        ),
      /canary: \{"site":"lbb"\} matches none of the 1 eligible nodes/
    )
  })

  it('windows wrap past midnight', () => {
    const w = [{ from: 22 * 60, to: 6 * 60 }]
    assert.equal(inWindow(w, 23 * 60), true)
    assert.equal(inWindow(w, 5 * 60), true)
    assert.equal(inWindow(w, 12 * 60), false)
    assert.equal(inWindow([{ from: 0, to: 24 * 60 }], 12 * 60), true)
  })
})

// ---- wave assignment ---------------------------------------------------------------------------

const SITES = ['lab', 'berlin', 'paris', 'rome']

/** A fleet: n nodes with a site each. */
const fleetArb = fc
  .array(fc.constantFrom(...SITES), { minLength: 1, maxLength: 60 })
  .map(sites => new Map(sites.map((site, i) => [key(i + 1), { site }])))

/** Waves: an optional canary, then rising percentages ending at 100. */
const wavesArb = fc
  .record({
    canary: fc.boolean(),
    percents: fc.uniqueArray(fc.integer({ min: 1, max: 99 }), { maxLength: 4 }),
    threshold: fc.integer({ min: 0, max: 100 }),
    soak: fc.integer({ min: 0, max: 5000 })
  })
  .map(w => [
    ...(w.canary ? [{ canary: { site: 'lab' } }] : []),
    ...[...w.percents.sort((a, b) => a - b), 100].map(percent => ({
      percent,
      threshold: w.threshold,
      soak: w.soak
    }))
  ])

/** A property of a generated fleet, a rollout over all of it with generated waves, and its plan. */
const planned = (
  check: (nodes: Map<string, { site: string }>, s: RolloutSpec, plan: WavePlan) => void
) =>
  fc.property(fleetArb, wavesArb, (nodes, waves) => {
    const s = spec({ waves }, [...nodes.keys()])
    check(
      nodes,
      s,
      planWaves(s, k => nodes.get(k))
    )
  })

function shuffled<T>(xs: T[], seed: number): T[] {
  const out = [...xs]
  let s = seed
  for (let i = out.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) & 0x7fffffff
    const j = s % (i + 1)
    ;[out[i], out[j]] = [out[j] as T, out[i] as T]
  }
  return out
}

describe('wave assignment', () => {
  it('every peer computes the same waves, whatever order it holds nodes and labels in', () => {
    fc.assert(
      fc.property(fleetArb, wavesArb, fc.integer(), (nodes, waves, seed) => {
        const keys = [...nodes.keys()]
        const a = planWaves(spec({ waves }, keys), k => nodes.get(k))
        const other = new Map(shuffled([...nodes], seed))
        const b = planWaves(spec({ waves }, shuffled(keys, seed + 1)), k => other.get(k))
        assert.deepEqual(a.waves, b.waves)
      }),
      { numRuns: 200 }
    )
  })

  it('waves partition the eligible nodes: canaries by label, then cumulative percentages', () => {
    fc.assert(
      planned((nodes, s, plan) => {
        const all = plan.waves.flat()
        assert.equal(all.length, nodes.size)
        assert.deepEqual([...all].sort(), [...nodes.keys()].sort())
        let assigned = 0
        s.waves.forEach((w, i) => {
          const members = plan.waves[i]!
          assigned += members.length
          if (w.canary !== undefined) {
            for (const k of members) assert.equal(nodes.get(k)?.site, 'lab')
          } else {
            const canaries = s.waves[0]?.canary === undefined ? 0 : plan.waves[0]!.length
            assert.equal(
              assigned,
              Math.max(canaries, Math.ceil((w.percent! * nodes.size) / 100)),
              `after wave ${i} (${w.percent} %)`
            )
          }
        })
      }),
      { numRuns: 200 }
    )
  })

  it('a device enrolled after the start reshuffles nobody', () => {
    fc.assert(
      fc.property(fleetArb, wavesArb, fc.constantFrom(...SITES), (nodes, waves, site) => {
        const s = spec({ waves }, [...nodes.keys()])
        const before = planWaves(s, k => nodes.get(k))
        const later = new Map(nodes).set(key(9999), { site })
        assert.deepEqual(planWaves(s, k => later.get(k)).waves, before.waves)
      }),
      { numRuns: 100 }
    )
  })

  it('a new version (new digest) ranks the nodes afresh', () => {
    const nodes = Array.from({ length: 40 }, (_, i) => key(i + 1))
    const waves = [{ percent: 10 }, { percent: 100 }]
    const v2 = planWaves(spec({ waves }, nodes), () => ({}))
    const v3 = planWaves(
      spec({ waves, change: { workloads: { web: { version: '3' } } } }, nodes),
      () => ({})
    )
    assert.notDeepEqual(v2.waves[0], v3.waves[0])
  })
})

// ---- gating ------------------------------------------------------------------------------------

/** What a node may have reported, by stage, with times of its own clock. */
function report(s: RolloutSpec, stage: number, t: number, soakMs: number): RolloutReport {
  const r: RolloutReport = { digest: s.digest, seenAt: t }
  if (stage >= 1) Object.assign(r, { switchedAt: t + 1, until: t + 1 + 60_000 })
  if (stage >= 2) r.healthySince = t + 2
  if (stage === 3) r.soakedAt = t + 2 + soakMs
  if (stage === 4) Object.assign(r, { failedAt: t + 3, reason: 'probe failed' })
  return r
}

const gateCase = fc.record({
  nodes: fleetArb,
  waves: wavesArb,
  stages: fc.array(fc.integer({ min: -1, max: 4 }), { minLength: 60, maxLength: 60 }),
  budget: fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }),
  maxFailedPercent: fc.integer({ min: 0, max: 100 })
})

function setup(c: GateCase) {
  const s = spec(
    {
      waves: c.waves,
      abort: { minExecuted: 1, maxFailedPercent: c.maxFailedPercent },
      ...(c.budget === undefined ? {} : { budget: { maxUnavailable: c.budget } })
    },
    [...c.nodes.keys()]
  )
  const plan = planWaves(s, k => c.nodes.get(k))
  const evidence = new Map<string, Evidence>()
  ;[...c.nodes.keys()].forEach((k, i) => {
    const stage = c.stages[i] ?? -1
    if (stage < 0) return
    const soak = s.waves[plan.waveOf.get(k)!]!.soakMs
    evidence.set(k, { at: 1000 + i, report: report(s, stage, 100, soak) })
  })
  return { s, plan, evidence }
}
type GateCase = {
  nodes: Map<string, { site: string }>
  waves: Array<Record<string, unknown>>
  stages: number[]
  budget: number | undefined
  maxFailedPercent: number
}

/** How many of a wave's members the evidence shows soaked for the wave's soak time. */
function provenSoaked(s: RolloutSpec, plan: WavePlan, ev: Map<string, Evidence>, w: number) {
  return plan.waves[w]!.filter(k => {
    const r = ev.get(k)?.report
    return (
      r?.soakedAt !== undefined &&
      r.failedAt === undefined &&
      r.soakedAt - (r.healthySince ?? Infinity) >= s.waves[w]!.soakMs
    )
  }).length
}

describe('gating', () => {
  it('no node switches without the evidence: every earlier wave proven through', () => {
    fc.assert(
      fc.property(gateCase, c => {
        const { s, plan, evidence } = setup(c)
        const view = viewRollout(s, plan, evidence)
        for (const [k, labels] of c.nodes) {
          if (evidence.get(k)?.report?.switchedAt !== undefined) continue
          const d = decide(s, plan, view, { key: k, labels, localMinutes: 0 }, x => c.nodes.get(x))
          if (d.run !== 'new') continue
          assert.notEqual(view.state, 'aborted')
          for (let w = 0; w < plan.waveOf.get(k)!; w++) {
            const need = Math.ceil((s.waves[w]!.threshold * plan.waves[w]!.length) / 100)
            assert.ok(provenSoaked(s, plan, evidence, w) >= need, `wave ${w} not proven`)
          }
        }
      }),
      { numRuns: 300 }
    )
  })

  it('with no evidence at all, only the first wave may go', () => {
    fc.assert(
      planned((nodes, s, plan) => {
        const view = viewRollout(s, plan, new Map())
        // Waves that need nobody soaked (threshold 0, or empty) pass without evidence.
        const first = view.waves.find(w => !w.passed)?.index ?? Infinity
        for (const [k, labels] of nodes) {
          const d = decide(s, plan, view, { key: k, labels, localMinutes: 0 }, x => nodes.get(x))
          if (d.run === 'new') assert.ok(plan.waveOf.get(k)! <= first)
        }
      }),
      { numRuns: 200 }
    )
  })

  it('verdicts only move forward as evidence grows: waves stay through, abort and completion stay', () => {
    fc.assert(
      fc.property(
        gateCase,
        fc.array(fc.integer({ min: 0, max: 4 }), { minLength: 60, maxLength: 60 }),
        (c, more) => {
          const { s, plan, evidence } = setup(c)
          const before = viewRollout(s, plan, evidence)
          // Grow: a node with no record gets one; a node's report gains its later facts
          // (a newer record of the same node carries everything the older one did). The peer
          // judging is the first node: having seen an abort, it reports it, as the daemon does.
          const grown = setup({
            ...c,
            stages: c.stages.map((st, i) => {
              const m = more[i] ?? 0
              if (st < 0) return m
              if (st === 3 || st === 4) return st
              return Math.max(st, m)
            })
          }).evidence
          const observer = [...c.nodes.keys()][0]!
          if (before.state === 'aborted') {
            const e = grown.get(observer) ?? { at: 0 }
            const r = e.report ?? { digest: s.digest, seenAt: 1 }
            grown.set(observer, { at: e.at, report: { ...r, abortedAt: 5000 } })
          }
          const after = viewRollout(s, plan, grown)
          if (before.state === 'aborted') assert.equal(after.state, 'aborted')
          if (before.state === 'completed') {
            assert.ok(['completed', 'aborted'].includes(after.state))
          }
          if (after.state !== 'aborted') {
            for (const w of before.waves) if (w.passed) assert.ok(after.waves[w.index]!.passed)
          }
        }
      ),
      { numRuns: 300 }
    )
  })

  it('a soak claim shorter than the wave soak, or in another digest, is no evidence', () => {
    const nodes = [key(1), key(2)]
    const s = spec({ waves: [{ percent: 50 }, { percent: 100 }], soak: 1000 }, nodes)
    const plan = planWaves(s, () => ({}))
    const first = plan.waves[0]![0]!
    const second = plan.waves[1]![0]!
    const body = (r: Record<string, unknown>) => ({ at: 5000, rollouts: { [s.id]: r } })
    const short = { digest: s.digest, seenAt: 1, switchedAt: 10, healthySince: 10, soakedAt: 900 }
    const other = { ...short, digest: 'ff'.repeat(16), soakedAt: 2000 }
    for (const r of [short, other]) {
      const ev = evidenceFrom(s, [{ node: first, body: body(r) }])
      const view = viewRollout(s, plan, ev)
      assert.equal(view.waves[0]!.passed, false)
      const d = decide(s, plan, view, { key: second, labels: {}, localMinutes: 0 }, () => ({}))
      assert.equal(d.run, 'old')
    }
    const ok = evidenceFrom(s, [{ node: first, body: body({ ...short, soakedAt: 1010 }) }])
    const d = decide(
      s,
      plan,
      viewRollout(s, plan, ok),
      { key: second, labels: {}, localMinutes: 0 },
      () => ({})
    )
    assert.equal(d.run, 'new')
  })

  it('an abort anyone reported is an abort everywhere, even when the ratio later falls', () => {
    const nodes = Array.from({ length: 10 }, (_, i) => key(i + 1))
    const s = spec(
      {
        waves: [{ percent: 100 }],
        threshold: 80,
        soak: 0,
        abort: { minExecuted: 1, maxFailedPercent: 50 }
      },
      nodes
    )
    const plan = planWaves(s, () => ({}))
    const ev = new Map<string, Evidence>([[nodes[0]!, { at: 10, report: report(s, 4, 1, 0) }]])
    const seen = viewRollout(s, plan, ev)
    assert.equal(seen.state, 'aborted')
    // The peer that saw it says so; another peer holds that record and many soaked ones.
    const other = new Map<string, Evidence>([
      [nodes[1]!, { at: 11, report: { ...report(s, 2, 1, 0), abortedAt: 11 } }]
    ])
    for (const k of nodes.slice(2)) other.set(k, { at: 12, report: report(s, 3, 1, 0) })
    assert.equal(viewRollout(s, plan, other).state, 'aborted')
    other.delete(nodes[1]!)
    assert.equal(viewRollout(s, plan, other).state, 'completed')
  })

  it('silent nodes do not block a wave beyond its threshold, and the rollout names them', () => {
    const nodes = Array.from({ length: 5 }, (_, i) => key(i + 1))
    const s = spec({ waves: [{ percent: 100 }], threshold: 80, soak: 0 }, nodes)
    const plan = planWaves(s, () => ({}))
    const ev = new Map<string, Evidence>()
    for (const k of nodes.slice(1)) ev.set(k, { at: 50_000, report: report(s, 2, 1, 0) })
    let view = viewRollout(s, plan, ev)
    assert.equal(view.state, 'running')
    assert.deepEqual(
      view.waitingFor.map(w => `${w.key} ${w.why.split(' ')[0]}`).sort(),
      nodes.map(k => `${k} ${k === nodes[0] ? 'silent' : 'soaking'}`)
    )
    // Switched but not healthy yet: starting, not soaking.
    ev.set(nodes[1]!, { at: 50_000, report: report(s, 1, 1, 0) })
    view = viewRollout(s, plan, ev)
    assert.match(
      view.waitingFor.find(w => w.key === nodes[1])!.why,
      /^starting: switched at .*, not healthy yet$/
    )
    for (const k of nodes.slice(1)) ev.set(k, { at: 50_000, report: report(s, 3, 1, 0) })
    view = viewRollout(s, plan, ev)
    assert.equal(view.state, 'completed')
    // The silent node, back: it follows the final state.
    const d = decide(s, plan, view, { key: nodes[0]!, labels: {}, localMinutes: 0 }, () => ({}))
    assert.equal(d.run, 'new')
  })

  it("one node dating its records years ahead neither frees a group's budget nor silences the fleet", () => {
    const nodes = Array.from({ length: 6 }, (_, i) => key(i + 1))
    const s = spec({ waves: [{ percent: 100 }], soak: '1m', budget: { maxUnavailable: 1 } }, nodes)
    const plan = planWaves(s, () => ({ site: 'berlin' }))
    const [updating, liar, next] = plan.waves[0]!.filter(k => k !== undefined) as [
      string,
      string,
      string
    ]
    const ev = new Map<string, Evidence>()
    for (const k of nodes) ev.set(k, { at: 100_000, report: report(s, 0, 99_000, 60_000) })
    // One node switched and is soaking: its claim holds berlin's budget until 160 s.
    ev.set(updating, { at: 100_000, report: report(s, 2, 99_000, 60_000) })
    // A stolen device's record, dated a year ahead.
    ev.set(liar, { at: 100_000 + 365 * 24 * 3600_000, report: report(s, 0, 99_000, 60_000) })
    const view = viewRollout(s, plan, ev)
    const u = view.nodes.find(n => n.key === updating)!
    assert.equal(u.phase, 'updating')
    assert.equal(u.expired, false, 'the claim still holds the budget')
    assert.deepEqual(
      view.nodes.filter(n => n.silent).map(n => n.key),
      [],
      'nobody is silent because one clock ran ahead'
    )
    const d = decide(
      s,
      plan,
      view,
      { key: next, labels: { site: 'berlin' }, localMinutes: 0 },
      () => ({
        site: 'berlin'
      })
    )
    assert.equal(d.run, 'old')
    assert.match(d.why, /^budget: site=berlin has 1 updating/)
    // Three nodes past the claim's end: it has run out, honestly.
    const later = new Map(ev)
    for (const k of nodes.filter(n => n !== updating).slice(0, 3)) {
      later.set(k, { ...ev.get(k)!, at: 200_000 })
    }
    assert.equal(viewRollout(s, plan, later).nodes.find(n => n.key === updating)!.expired, true)
  })

  it("an operator's rollout reaches no node outside its scope, whatever its eligible list says", () => {
    const labels = new Map([
      [key(1), { site: 'berlin' }],
      [key(2), { site: 'paris' }]
    ])
    const { rollouts } = rolloutsOf([
      {
        id: 'site/berlin',
        value: {
          rollouts: {
            'web-v2': {
              change: { workloads: { web: { version: '2' } } },
              waves: [{ percent: 100 }],
              threshold: 0,
              eligible: [key(1), key(2)]
            }
          }
        },
        writerScopes: [{ site: 'berlin' }]
      }
    ])
    const s = rollouts[0]!
    const plan = planWaves(s, k => labels.get(k))
    assert.deepEqual(plan.waves, [[key(1)]])
    const view = viewRollout(s, plan, new Map())
    const decideFor = (k: string) =>
      decide(s, plan, view, { key: k, labels: labels.get(k)!, localMinutes: 0 }, x => labels.get(x))
        .run
    assert.equal(decideFor(key(1)), 'new')
    assert.equal(decideFor(key(2)), 'old')
  })

  it("a node switches only inside its group's maintenance window, on its own local clock", () => {
    const labels = new Map([
      [key(1), { site: 'berlin' }],
      [key(2), { site: 'paris' }]
    ])
    const s = spec(
      { waves: [{ percent: 100 }], windows: { berlin: ['22:00-06:00'], '*': ['12:00-13:00'] } },
      [key(1), key(2)]
    )
    const plan = planWaves(s, k => labels.get(k))
    const view = viewRollout(s, plan, new Map())
    const at = (k: string, hh: number) =>
      decide(s, plan, view, { key: k, labels: labels.get(k)!, localMinutes: hh * 60 }, x =>
        labels.get(x)
      )
    assert.equal(at(key(1), 23).run, 'new')
    assert.equal(at(key(1), 12).run, 'old')
    assert.match(at(key(1), 12).why, /outside the maintenance window of site=berlin/)
    assert.equal(at(key(2), 12).run, 'new')
    assert.equal(at(key(2), 23).run, 'old')
  })

  it('a simulated fleet, nodes deciding together: waves in order, the budget never exceeded, every node reached', () => {
    fc.assert(
      fc.property(
        fleetArb,
        wavesArb,
        fc.integer({ min: 1, max: 3 }),
        fc.array(fc.nat(), { minLength: 400, maxLength: 400 }),
        (nodes, waves, maxUnavailable, picks) => {
          const s = spec(
            { waves: waves.map(w => ({ ...w, soak: 10 })), budget: { maxUnavailable } },
            [...nodes.keys()]
          )
          const plan = planWaves(s, k => nodes.get(k))
          const keys = [...nodes.keys()]
          const ev = new Map<string, Evidence>(
            keys.map(k => [k, { at: 0, report: { digest: s.digest, seenAt: 0 } }])
          )
          let t = 0
          for (let step = 0; step < 400; step++) {
            t += 1
            // Up to three nodes decide at once on the same evidence (records in flight).
            const pick = picks[step] ?? 0
            const movers = [...new Set([pick, pick >> 4, pick >> 8].slice(0, 1 + (pick % 3)))]
            const view = viewRollout(s, plan, ev)
            const next = new Map<string, Evidence>()
            for (const k of movers.map(p => keys[p % keys.length]!)) {
              const r = { ...ev.get(k)!.report! }
              if (r.switchedAt === undefined) {
                const d = decide(
                  s,
                  plan,
                  view,
                  { key: k, labels: nodes.get(k)!, localMinutes: 0 },
                  x => nodes.get(x)
                )
                if (d.run === 'new') {
                  const w = plan.waveOf.get(k)!
                  for (const earlier of view.waves.slice(0, w)) assert.ok(earlier.passed)
                  Object.assign(r, { switchedAt: t, healthySince: t, until: t + 1000 })
                }
              } else if (r.soakedAt === undefined && t - r.healthySince! >= 10) {
                r.soakedAt = t
              }
              next.set(k, { at: t, report: r })
            }
            for (const [k, e] of next) ev.set(k, e)
            const updating = new Map<string, number>()
            for (const [x, { report: rr }] of ev) {
              if (rr?.switchedAt !== undefined && rr.soakedAt === undefined) {
                const g = nodes.get(x)!.site
                updating.set(g, (updating.get(g) ?? 0) + 1)
              }
            }
            for (const n of updating.values()) assert.ok(n <= maxUnavailable)
          }
          // Then everyone gets turns until done (bounded): the rollout completes.
          for (let round = 0; round < 4 * keys.length + 8; round++) {
            t += 11
            for (const k of keys) {
              const r = { ...ev.get(k)!.report! }
              if (r.switchedAt === undefined) {
                const d = decide(
                  s,
                  plan,
                  viewRollout(s, plan, ev),
                  { key: k, labels: nodes.get(k)!, localMinutes: 0 },
                  x => nodes.get(x)
                )
                if (d.run === 'new') {
                  Object.assign(r, { switchedAt: t, healthySince: t, until: t + 1000 })
                }
              } else if (r.soakedAt === undefined) r.soakedAt = t + 10
              ev.set(k, { at: t, report: r })
            }
          }
          assert.equal(viewRollout(s, plan, ev).state, 'completed')
        }
      ),
      { numRuns: 100 }
    )
  })
})

describe('rollout news in a status record', () => {
  const body = (reports: Record<string, Record<string, unknown>>) => ({ at: 5, rollouts: reports })
  const r = (facts: Record<string, unknown> = {}) => ({ digest: 'd', seenAt: 1, ...facts })

  it('is a step the previous record did not report that moves a gate or the abort rule on, or a rollout it did not report', () => {
    for (const step of ['switchedAt', 'soakedAt', 'failedAt', 'revertedAt']) {
      for (const f of [bringsNews, bringsStep]) {
        assert.equal(f(body({ a: r() }), body({ a: r({ [step]: 9 }) }), 32), true, step)
        assert.equal(f(undefined, body({ a: r({ [step]: 9 }) }), 32), true, step)
        assert.equal(f(body({ a: r() }), body({ a: r(), b: r({ [step]: 9 }) }), 32), true)
      }
    }
    // The same step under another digest is another rollout's.
    const failed = r({ switchedAt: 2, failedAt: 3 })
    assert.equal(bringsStep(body({ a: failed }), body({ a: { ...failed, digest: 'e' } }), 32), true)
    // Taking part counts toward a group's disruption budget: news, but not a step.
    assert.equal(bringsNews(undefined, body({ a: r() }), 32), true)
    assert.equal(bringsNews(body({ a: r() }), body({ a: r(), b: r() }), 32), true)
    assert.equal(bringsNews(body({ a: r() }), body({ a: r({ digest: 'e' }) }), 32), true)
    assert.equal(bringsStep(undefined, body({ a: r() }), 32), false)
    assert.equal(bringsStep(body({ a: r() }), body({ a: r(), b: r() }), 32), false)
  })

  it('is not health, an abort seen, the same steps again, a changed claim, another field, or anything malformed', () => {
    // Nobody's gate waits for these: an abort is known from the evidence that made it.
    for (const f of [bringsNews, bringsStep]) {
      assert.equal(f(body({ a: r() }), body({ a: r({ abortedAt: 9 }) }), 32), false)
      const switched = body({ a: r({ switchedAt: 2, until: 10 }) })
      assert.equal(
        f(switched, body({ a: r({ switchedAt: 2, until: 10, healthySince: 3 }) }), 32),
        false
      )
      assert.equal(f(switched, body({ a: r({ switchedAt: 2, until: 10 }) }), 32), false)
      assert.equal(f(switched, body({ a: r({ switchedAt: 2, until: 99 }) }), 32), false)
      assert.equal(f(switched, { ...switched, workloads: { x: 1 } }, 32), false)
      assert.equal(f(switched, body({ a: r({ switchedAt: 2, healthySince: 'x' }) }), 32), false)
      assert.equal(f(undefined, { rollouts: 'x' }, 32), false)
      assert.equal(f(undefined, null, 32), false)
      assert.equal(f(undefined, body({ a: { seenAt: 1, switchedAt: 2 } }), 32), false)
    }
  })

  it('is taking part only in a rollout the judge holds with a disruption budget', () => {
    const budgeted = (id: string) => id === 'a'
    // No order reads a node taking part in rollout b, which has no budget here.
    assert.equal(bringsNews(undefined, body({ b: r() }), 32, budgeted), false)
    assert.equal(bringsNews(body({ a: r() }), body({ a: r(), b: r() }), 32, budgeted), false)
    assert.equal(bringsNews(body({ b: r() }), body({ b: r({ digest: 'e' }) }), 32, budgeted), false)
    // Taking part in a: news; a step in b: news all the same.
    assert.equal(bringsNews(body({ b: r() }), body({ a: r(), b: r() }), 32, budgeted), true)
    assert.equal(bringsNews(undefined, body({ b: r({ switchedAt: 2 }) }), 32, budgeted), true)
    assert.equal(
      bringsNews(body({ b: r() }), body({ b: r({ switchedAt: 2 }) }), 32, budgeted),
      true
    )
  })

  it('reads at most the given number of reports', () => {
    const many = Object.fromEntries(
      Array.from({ length: 40 }, (_, i) => [`r${i}`, r({ switchedAt: 2 })])
    )
    const first32 = Object.fromEntries(Object.entries(many).slice(0, 32))
    assert.equal(bringsNews(body(first32), body(many), 32), false)
  })
})
