/**
 * A replica given a batch whose sender has gone away (its abort signal fired) applies nothing.
 * (The CLI's client honouring an abort is in node-daemon-client.test.ts.)
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { makeFleet } from './fixtures/fleet.ts'

test('a replica does not apply a batch whose sender has gone away', async () => {
  const fleet = await makeFleet({ replicas: 2, label: 'abort' })
  const [a, b] = fleet.replicas as [(typeof fleet.replicas)[0], (typeof fleet.replicas)[0]]
  const batch = await (
    await a.open('fleet')
  ).change(fleet.signer(0, fleet.admins[0]!), d => {
    d.defaults = { x: 1 }
  })
  const gone = new AbortController()
  gone.abort(new Error('the sender closed the connection'))
  await assert.rejects(b.accept(batch!, { signal: gone.signal }), /sender closed/)
  assert.deepEqual(b.documentIds(), [])
  assert.equal((await b.accept(batch!)).status, 'applied')
})
