/**
 * The CLI's client of the daemon API: a kept-alive connection that the daemon closed while the
 * CLI was busy is not reported as "cannot reach the daemon" (the request goes again on a new
 * connection); an aborted request ends at once.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer, type AddressInfo, type Server } from 'node:net'
import { DaemonClient } from '../node/daemon-client.ts'

async function listen(server: Server): Promise<string> {
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

test('a request on a connection the daemon closed is sent again on a new one', async () => {
  let connections = 0
  // The first connection is dropped once the request arrives, as a daemon's keep-alive timeout
  // does when it crosses the request; the second one answers.
  const server = createServer(socket => {
    const n = ++connections
    socket.once('data', () => {
      if (n === 1) {
        socket.destroy()
        return
      }
      const body = JSON.stringify([{ id: 'fleet', heads: [] }])
      socket.end(
        `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`
      )
    })
  })
  try {
    const client = new DaemonClient(await listen(server))
    assert.deepEqual(await client.docIds(), ['fleet'])
    assert.equal(connections, 2)
  } finally {
    server.close()
  }
})

test('an aborted request to a daemon that never answers ends at once', async () => {
  // accepts connections and never says anything
  const server = createServer(() => {})
  try {
    const client = new DaemonClient(await listen(server))
    const t0 = Date.now()
    await assert.rejects(client.docIds({ signal: AbortSignal.timeout(200) }), {
      name: 'TimeoutError'
    })
    assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`)
  } finally {
    server.close()
  }
})
