/**
 * The daemon's status reporter (`node/status-report.ts`) over a fake mesh: what each trigger
 * publishes. A reconcile pass, a workload's state or files put back ask for a record "soon",
 * published only if the body says something new (its time aside); the interval (and a rollout
 * step) publish whatever the body is, so peers keep reading the node as fresh.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import type { StatusBody, WorkloadStatus } from '../crdt/fleet-status.ts'
import type { Replica } from '../crdt/replica.ts'
import type { Mesh } from '../mesh/types.ts'
import { StatusReporter, type StatusReporterComponents } from '../node/status-report.ts'
import { waitFor } from './fixtures/wait.ts'

function reporter() {
  const published: StatusBody[] = []
  let peers = ['12D3KooWB', '12D3KooWA']
  const workloads: Record<string, WorkloadStatus> = {
    web: { state: 'running', healthy: true, restarts: 0, log: [] }
  }
  const mesh = {
    publishStatus: async (body: unknown) => {
      published.push(body as StatusBody)
      return {}
    },
    peers: () => peers.map(peerId => ({ peerId })),
    statuses: () => []
  } as unknown as Mesh
  const components: StatusReporterComponents = {
    replica: {} as Replica,
    mesh,
    reconciler: {
      identity: async () => ({ name: 'n1', labels: { site: 'lab' }, enrolled: true }),
      revision: async () => ({ fleet: ['h1'] }),
      last: undefined
    },
    workloads: () => structuredClone(workloads),
    files: () => ({ ok: true, drifted: [] }),
    key: 'a'.repeat(64),
    peerId: '12D3KooWSelf',
    startedAt: 1,
    intervalMs: 60_000
  }
  const r = new StatusReporter(components)
  return {
    r,
    published,
    workloads,
    setPeers: (p: string[]) => {
      peers = p
    }
  }
}

test('a record asked for soon goes out only when the body says something new; the interval publishes anyway', async () => {
  const { r, published, workloads, setPeers } = reporter()
  await r.publish({ ifChanged: true })
  assert.equal(published.length, 1, 'the first record')
  // A reconcile pass that changed nothing: its time is all that differs.
  await r.publish({ ifChanged: true })
  assert.equal(published.length, 1, 'nothing new: no record')
  // The same peers in another order are no news either.
  setPeers(['12D3KooWA', '12D3KooWB'])
  await r.publish({ ifChanged: true })
  assert.equal(published.length, 1, 'peers reordered: no record')

  // A workload restarted: news, through the coalescing timer the daemon's triggers use.
  workloads.web = { state: 'running', healthy: true, restarts: 1, log: [] }
  r.schedule()
  await waitFor('the scheduled record', () => published.length === 2, 5_000)
  assert.equal(published[1]!.workloads.web!.restarts, 1)

  // The interval keeps the node fresh in every peer's eyes, changed or not.
  await r.publish()
  assert.equal(published.length, 3, 'the interval: a record')
  assert.ok(published[2]!.at >= published[1]!.at)
  r.stop()
})
