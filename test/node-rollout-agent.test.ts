/**
 * The rollout agent on one device, with its effects faked (status records, workloads, peers) but
 * its state file real: a switched node soaks or fails on its own and goes back, remembers it
 * across a restart, follows an abort it learns from a peer's record, and try mode rolls back a
 * config after which no peer is reached.
 */
import { afterEach, beforeEach, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { effectiveConfig, type ConfigObject } from '../crdt/effective-config.ts'
import { RolloutAgent, type RolloutAgentComponents } from '../node/rollout-agent.ts'
import { ROLLOUT_STATE_FILE, saveRolloutState } from '../node/rollout-state.ts'
import type { WorkloadStatus } from '../crdt/fleet-status.ts'
import { waitFor } from './fixtures/wait.ts'

const SELF = 'a'.repeat(64)
const PEER = 'b'.repeat(64)

function fleetDoc(rollout: Record<string, unknown> | undefined, version = '1') {
  return {
    id: 'fleet',
    value: {
      defaults: { workloads: { web: { command: ['node', 'web.js'], version } } },
      ...(rollout === undefined ? {} : { rollouts: { 'web-v2': rollout } })
    }
  }
}

const rollout = (over: Record<string, unknown> = {}) => ({
  change: { workloads: { web: { version: '2', health: { http: 'http://x/', intervalMs: 20 } } } },
  waves: [{ percent: 100 }],
  soak: '150ms',
  health: { failedChecks: 2, restarts: 1, startTimeout: '2s' },
  eligible: [SELF, PEER].sort(),
  ...over
})

describe('rollout agent', () => {
  let dir: string
  let workloads: Record<string, WorkloadStatus>
  let statuses: Array<{ node: string; body: unknown }>
  /** How many times the agent read the records held. */
  let statusReads: number
  let connected: boolean
  let reconciles: string[]
  /** How many times the agent published its status. */
  let publishes: number
  let agents: RolloutAgent[]
  let events: Array<{ event: string; fields: Record<string, unknown> }>
  /** Added to the agent's clock: a test moves time on without waiting for it. */
  let skew: number

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rhizome-rollout-agent-'))
    workloads = {}
    statuses = []
    statusReads = 0
    connected = true
    reconciles = []
    publishes = 0
    agents = []
    events = []
    skew = 0
  })
  afterEach(async () => {
    for (const a of agents) await a.stop()
    await rm(dir, { recursive: true, force: true })
  })

  async function open(
    options: RolloutAgentComponents['options'] = {},
    saveState?: RolloutAgentComponents['saveState']
  ): Promise<RolloutAgent> {
    const agent = await RolloutAgent.open({
      ...(saveState === undefined ? {} : { saveState }),
      key: SELF,
      dataDir: dir,
      statuses: () => {
        statusReads++
        return statuses
      },
      enrolled: async () =>
        new Map([
          [SELF, { site: 'x' }],
          [PEER, { site: 'x' }]
        ]),
      workloads: () => workloads,
      connected: () => connected,
      reconcile: reason => {
        reconciles.push(reason)
      },
      publish: () => {
        publishes++
      },
      events: (_level, event, fields = {}) => {
        events.push({ event, fields })
      },
      now: () => Date.now() + skew,
      options: { tryModeMs: 0, settleMs: 0, ...options }
    })
    agents.push(agent)
    return agent
  }

  /** One reconcile pass as the daemon runs it: the config the agent shapes, then applied. */
  async function pass(agent: RolloutAgent, docs: Array<{ id: string; value: unknown }>) {
    const identity = { name: 'n', labels: { site: 'x' } }
    const r = await agent.configFor(docs, identity, effectiveConfig(docs, identity))
    agent.afterReconcile()
    return r
  }
  const version = (c: { config: ConfigObject }) =>
    (c.config.workloads as Record<string, { version: string }>).web!.version

  it('switches, watches the probe for the soak, and keeps "soaked" across a restart', async () => {
    const agent = await open()
    const docs = [fleetDoc(rollout())]
    assert.equal(version(await pass(agent, docs)), '2')
    workloads.web = { state: 'running', healthy: true, restarts: 0, version: '2', log: [] }
    await waitFor('soaked', () => agent.reports()['fleet:web-v2']?.soakedAt)
    const r = agent.reports()['fleet:web-v2']!
    assert.ok(r.soakedAt! - r.healthySince! >= 150)
    await agent.stop()
    const again = await open()
    assert.equal(version(await pass(again, docs)), '2')
    assert.equal(again.reports()['fleet:web-v2']?.soakedAt, r.soakedAt)
  })

  it('a crash loop fails the new version: back to the old one, marked bad, also after a restart', async () => {
    const agent = await open()
    const docs = [fleetDoc(rollout())]
    assert.equal(version(await pass(agent, docs)), '2')
    workloads.web = { state: 'crashed', healthy: false, restarts: 2, version: '2', log: [] }
    await waitFor('a pass to go back', () => reconciles.includes('rollout'))
    const r = agent.reports()['fleet:web-v2']!
    assert.ok(r.failedAt !== undefined)
    assert.match(r.reason!, /crash loop: 2 restarts/)
    assert.equal(version(await pass(agent, docs)), '1')
    await agent.stop()
    const again = await open()
    assert.equal(version(await pass(again, docs)), '1')
    assert.equal(again.status()[0]?.self.run, 'old')
  })

  it('a failure goes out and goes back before its save reaches the disk; a switch only after', async () => {
    // The state file's writes held until released: a disk busy with other daemons' stores.
    let held = false
    let release = (): void => {}
    const agent = await open({}, async (file, state) => {
      if (held) await new Promise<void>(resolve => (release = resolve))
      await saveRolloutState(file, state)
    })
    const docs = [fleetDoc(rollout({ soak: '10s' }))]
    try {
      held = true
      const switching = pass(agent, docs)
      await waitFor('the switch decided', () => events.some(e => e.event === 'rollout.switch'))
      // Not said, nor acted on, before it is on disk.
      assert.equal(agent.reports()['fleet:web-v2']?.switchedAt, undefined)
      assert.equal(publishes, 0)
      held = false
      release()
      assert.equal(version(await switching), '2')
      assert.ok(agent.reports()['fleet:web-v2']?.switchedAt !== undefined)
      assert.equal(publishes, 1)

      held = true
      workloads.web = { state: 'crashed', healthy: false, restarts: 2, version: '2', log: [] }
      // Published and acted on while the write still waits (before: not until it was flushed).
      await waitFor('the failure published', () => agent.reports()['fleet:web-v2']?.failedAt, 3000)
      assert.equal(publishes, 2)
      await waitFor('a pass to go back', () => reconciles.includes('rollout'), 3000)
      assert.equal(version(await pass(agent, docs)), '1')
      const onDisk = JSON.parse(await readFile(join(dir, ROLLOUT_STATE_FILE), 'utf8')) as {
        reports: Record<string, { failedAt?: number }>
      }
      assert.equal(onDisk.reports['fleet:web-v2']?.failedAt, undefined)
    } finally {
      // Never leaves a write waiting (stop() waits for it), whatever failed above.
      held = false
      release()
    }
    await agent.stop()
    const again = await open()
    assert.ok(again.reports()['fleet:web-v2']?.failedAt !== undefined)
    assert.equal(version(await pass(again, docs)), '1')
  })

  it('a rollout written by an operator whose scope excludes this node is never applied here', async () => {
    const agent = await open()
    const scoped = {
      id: 'site/x',
      value: { rollouts: { 'web-v2': rollout({ threshold: 0 }) } },
      writerScopes: [{ site: 'elsewhere' }]
    }
    assert.equal(version(await pass(agent, [fleetDoc(undefined), scoped])), '1')
    assert.equal(agent.reports()['site/x:web-v2'], undefined)
    assert.match(agent.status()[0]!.self.why, /outside the node scope/)
  })

  it('a probe that fails N times running after it was healthy fails the version', async () => {
    const agent = await open()
    await pass(agent, [fleetDoc(rollout({ soak: '10s' }))])
    workloads.web = { state: 'running', healthy: true, restarts: 0, version: '2', log: [] }
    await waitFor('healthy', () => agent.reports()['fleet:web-v2']?.healthySince)
    workloads.web = { ...workloads.web, healthy: false }
    const r = await waitFor('failed', () => agent.reports()['fleet:web-v2']?.reason)
    assert.match(r, /health check failed 2 times running/)
  })

  it("a peer's failure aborts the rollout here: a switched node goes back and says it saw the abort", async () => {
    const agent = await open()
    const docs = [fleetDoc(rollout({ soak: '10s' }))]
    assert.equal(version(await pass(agent, docs)), '2')
    const digest = agent.reports()['fleet:web-v2']!.digest
    statuses = [
      {
        node: PEER,
        body: {
          at: Date.now(),
          rollouts: {
            'fleet:web-v2': { digest, seenAt: 1, switchedAt: 2, failedAt: 3, reason: 'probe' }
          }
        }
      }
    ]
    const published = publishes
    agent.onStatus({ node: PEER })
    await waitFor('a pass to go back', () => reconciles.includes('rollout'))
    const r = agent.reports()['fleet:web-v2']!
    assert.ok(r.revertedAt !== undefined && r.abortedAt !== undefined)
    // Going back frees budget and can leave a wave unable to pass: said at once.
    assert.equal(publishes, published + 1)
    assert.equal(version(await pass(agent, docs)), '1')
    assert.equal(agent.status()[0]?.view.state, 'aborted')
  })

  it('taking part and seeing an abort ride the next record, published by nothing of their own', async () => {
    // Paused: this node takes part but does not switch yet.
    const agent = await open()
    await pass(agent, [fleetDoc(rollout({ state: 'paused', soak: '10s' }))])
    const seen = agent.reports()['fleet:web-v2']
    assert.ok(seen?.seenAt !== undefined, 'the next record says it takes part')
    assert.equal(publishes, 0, 'no record of its own for taking part')

    // A peer's failure aborts the rollout here; this node never switched, so nothing it runs
    // changes and no peer needs its word: the failure that aborted it reaches them too.
    statuses = [
      {
        node: PEER,
        body: {
          at: Date.now(),
          rollouts: {
            'fleet:web-v2': {
              digest: seen.digest,
              seenAt: 1,
              switchedAt: 2,
              failedAt: 3,
              reason: 'probe'
            }
          }
        }
      }
    ]
    agent.onStatus({ node: PEER })
    await waitFor('the abort', () => agent.reports()['fleet:web-v2']?.abortedAt)
    assert.equal(publishes, 0, 'no record of its own for the abort')
    assert.equal(agent.status()[0]?.view.state, 'aborted')
  })

  it('taking part in a rollout with a disruption budget is said at once: the group counts this node ahead', async () => {
    const agent = await open()
    await pass(agent, [
      fleetDoc(rollout({ state: 'paused', groupBy: 'site', budget: { maxUnavailable: 1 } }))
    ])
    assert.ok(agent.reports()['fleet:web-v2']?.seenAt !== undefined)
    assert.equal(publishes, 1)
    // What a relay asks before it floods a node's first report of the rollout (`bringsNews`).
    assert.equal(agent.budgeted('fleet:web-v2'), true)
    assert.equal(agent.budgeted('fleet:not-held-here'), true, 'not held: errs towards news')
    await pass(agent, [fleetDoc(rollout({ state: 'paused' }))])
    assert.equal(agent.budgeted('fleet:web-v2'), false, 'no budget: no order reads taking part')
  })

  it('a burst of status records is decided on once, not once per record', async () => {
    const agent = await open()
    await pass(agent, [fleetDoc(rollout({ soak: '10s' }))])
    const digest = agent.reports()['fleet:web-v2']!.digest
    statuses = [
      {
        node: PEER,
        body: {
          at: Date.now(),
          rollouts: { 'fleet:web-v2': { digest, seenAt: 1, switchedAt: 2, failedAt: 3 } }
        }
      }
    ]
    statusReads = 0
    // A fleet's records arriving together (every node's "aborted" after a canary fails, say):
    // one evaluation per record queued up behind each save kept decisions seconds late.
    for (let i = 0; i < 200; i++) agent.onStatus({ node: PEER })
    await waitFor('the abort', () => agent.reports()['fleet:web-v2']?.abortedAt !== undefined)
    await agent.stop()
    // Every evaluation reads the records held once per rollout.
    assert.ok(statusReads <= 2, `200 records arriving together cost ${statusReads} evaluations`)
  })

  it('try mode: a config after which no peer is reached is rolled back to the last known-good one', async () => {
    const agent = await open({ tryModeMs: 200 })
    assert.equal(version(await pass(agent, [fleetDoc(undefined, '1')])), '1')
    await waitFor('v1 known good', () => agent.tryMode().lastKnownGood)
    // v2 arrives (so a peer was reachable), and the device loses every peer once it runs.
    const v2 = [fleetDoc(undefined, '2')]
    assert.equal(version(await pass(agent, v2)), '2')
    connected = false
    await waitFor('try mode rollback', () => agent.tryMode().rolledBack)
    assert.ok(events.some(e => e.event === 'trymode.rollback'))
    const back = await pass(agent, v2)
    assert.equal(version(back), '1')
    assert.match(back.errors.join(), /lost every peer when it was applied/)
    await agent.stop()
    const again = await open({ tryModeMs: 200 })
    assert.equal(version(await pass(again, v2)), '1')
    // A new desired config is tried again.
    connected = true
    assert.equal(version(await pass(again, [fleetDoc(undefined, '3')])), '3')
  })

  it('a config that keeps a peer in reach becomes the last known good', async () => {
    const agent = await open({ tryModeMs: 60_000 })
    await pass(agent, [fleetDoc(undefined, '1')])
    assert.equal(agent.tryMode().lastKnownGood, undefined)
    // The session dropped, but a peer's record came in the second half of the window.
    connected = false
    skew += 40_000
    agent.onStatus({ node: PEER })
    skew += 30_000
    await waitFor('known good', () => agent.tryMode().lastKnownGood)
    assert.equal(agent.tryMode().rolledBack, undefined)
  })
})
