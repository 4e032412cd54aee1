/**
 * The config one node runs, computed away from it (crdt/node-config.ts: `rhizome describe`, the
 * dashboard's node view): its effective config, with the change of each rollout it reports
 * running on top, and only those: not one it failed, went back from, has not switched to, or
 * switched to under another digest (an edited rollout is a new one).
 */
import { it } from 'node:test'
import assert from 'node:assert/strict'
import { nodeConfig } from '../crdt/node-config.ts'
import { rolloutsOf } from '../crdt/rollout.ts'
import type { RolloutReport } from '../crdt/rollout-gate.ts'

const docs = [
  {
    id: 'fleet',
    value: {
      defaults: { workloads: { web: { command: ['node', 'web.js'], version: '1' } } },
      nodes: { 'n-2': { files: { '/etc/motd': { content: 'two' } } } },
      rollouts: {
        'web-v2': {
          change: { workloads: { web: { version: '2' } } },
          waves: [{ percent: 100 }]
        }
      }
    }
  }
]

it('layers the rollouts a node reports running, and only those, on its effective config', () => {
  const digest = rolloutsOf(docs).rollouts[0]!.digest
  const version = (reports?: Record<string, RolloutReport>, name = 'n-1') =>
    (
      nodeConfig(docs, { name, labels: {}, rollouts: reports }).config.workloads as {
        web: { version: string }
      }
    ).web.version
  const switched: RolloutReport = { digest, seenAt: 1, switchedAt: 2 }
  assert.equal(version(undefined), '1')
  assert.equal(version({ 'fleet:web-v2': { digest, seenAt: 1 } }), '1', 'not switched yet')
  assert.equal(version({ 'fleet:web-v2': switched }), '2')
  assert.equal(version({ 'fleet:web-v2': { ...switched, failedAt: 3 } }), '1', 'failed')
  assert.equal(version({ 'fleet:web-v2': { ...switched, revertedAt: 3 } }), '1', 'went back')
  assert.equal(version({ 'fleet:web-v2': { ...switched, digest: 'ab'.repeat(32) } }), '1')
  const two = nodeConfig(docs, { name: 'n-2', labels: {}, rollouts: { 'fleet:web-v2': switched } })
  assert.deepEqual(two.rollouts, ['fleet:web-v2'])
  assert.deepEqual(two.config.files, { '/etc/motd': { content: 'two' } })
})
