import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Replica } from '../crdt/replica.ts'
import { makeFleet, startNode, waitFor, headsOf } from './fixtures/mesh-fleet.ts'

test('two daemons sync a document and gossip status', async () => {
  const fleet = await makeFleet(2)
  const a = await startNode(fleet, fleet.nodes[0]!)
  const b = await startNode(fleet, fleet.nodes[1]!, { bootstrap: a.mesh.addresses() })
  try {
    const fleetDoc = await a.replica.open('fleet')
    await fleetDoc.change(Replica.signer(fleet.admin), d => { d.x = 1 })
    await waitFor('b has fleet doc', async () => b.replica.documentIds().includes('fleet') && await headsOf(b.replica, 'fleet') === await headsOf(a.replica, 'fleet'))
    await a.mesh.publishStatus({ ok: true })
    await waitFor('b has status', () => b.mesh.statuses().length === 1)
    assert.equal(b.mesh.statuses()[0]!.body.ok, true)
  } finally {
    await a.mesh.stop(); await b.mesh.stop()
  }
})
