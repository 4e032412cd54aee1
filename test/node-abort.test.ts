/**
 * The I/O edges honour an abort: the CLI's client of the daemon API gives up at once instead of
 * waiting out its own 30 s timeout on a daemon that does not answer, and a replica given a batch
 * whose sender has gone away applies nothing.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, type AddressInfo } from 'node:net'
import { DaemonClient } from '../node/daemon-client.ts'
import { makeFleet } from './fixtures/fleet.ts'

test('an aborted request to a daemon that never answers ends at once', async () => {
  // accepts connections and never says anything
  const server = createServer(() => {})
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  try {
    const { port } = server.address() as AddressInfo
    const client = new DaemonClient(`http://127.0.0.1:${port}`)
    const t0 = Date.now()
    await assert.rejects(client.docIds({ signal: AbortSignal.timeout(200) }), {
      name: 'TimeoutError'
    })
    assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`)
  } finally {
    server.close()
  }
})

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
