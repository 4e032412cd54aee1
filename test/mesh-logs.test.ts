/**
 * Remote logs (`/rhizome/logs/1.0.0`): a daemon reads another node's recent workload output
 * through the mesh, also one it has no connection to (it dials the addresses the node advertised
 * in its status record); a workload that does not run there, a node that is not enrolled and a
 * node that is down each give their own answer; a viewer is refused; a peer asking too often is
 * told to wait.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '../crdt/keys.ts'
import { encodeFrame, readOneFrame } from '../mesh/frames.ts'
import { encodeLogsRequest, LOGS_PROTOCOL } from '../mesh/logs-protocol.ts'
import { makeFleet } from './fixtures/fleet.ts'
import { openStream, presentToken, rawPeer } from './fixtures/mesh-raw-peer.ts'
import { startNode, type TestNode } from './fixtures/mesh-node.ts'
import { waitFor } from './fixtures/wait.ts'

test("a node's workload output, read from another node through the mesh", async () => {
  const fleet = await makeFleet({ replicas: 0, nodes: 3, label: 'mesh-logs' })
  const nodes: TestNode[] = []
  const viewer = await rawPeer(generateKeyPair())
  try {
    // a - b - c by bootstrap links; no extra connections, so a has none to c of its own.
    for (let i = 0; i < 3; i++) {
      nodes.push(
        await startNode(fleet, fleet.nodes[i]!, {
          bootstrap: i === 0 ? [] : [nodes[i - 1]!.mesh.addresses()[0]!],
          extraPeers: 0
        })
      )
    }
    const [a, b, c] = nodes as [TestNode, TestNode, TestNode]
    nodes.forEach((n, i) => {
      n.mesh.serveLogs((workload, lines) =>
        workload === 'web'
          ? Array.from({ length: 1000 }, (_, k) => `node-${i} line ${k}`).slice(-lines)
          : undefined
      )
    })
    await waitFor('the chain to form', () => b.mesh.metrics().syncSessions === 2)
    await c.mesh.publishStatus({ name: 'node-2' })
    await waitFor("a to hold c's status record", () =>
      a.mesh.statuses().some(s => s.peerId === c.mesh.peerId)
    )
    assert.ok(!a.mesh.peers().some(p => p.peerId === c.mesh.peerId), 'a is not connected to c')

    const lines = await a.mesh.fetchLogs('node-2', 'web', { lines: 3 })
    assert.deepEqual(lines, ['node-2 line 997', 'node-2 line 998', 'node-2 line 999'])
    assert.equal((await a.mesh.fetchLogs('node-2', 'web'))?.length, 500, 'at most 500 lines')
    assert.equal(await a.mesh.fetchLogs(c.mesh.peerId, 'db'), undefined, 'no such workload there')
    assert.deepEqual(await a.mesh.fetchLogs('node-0', 'web', { lines: 1 }), ['node-0 line 999'])
    await assert.rejects(a.mesh.fetchLogs('node-9', 'web'), { name: 'UnknownNodeError' })

    // Asking too often: told to wait, not served.
    const burst = await Promise.allSettled(
      Array.from({ length: 16 }, () => a.mesh.fetchLogs('node-1', 'web', { lines: 1 }))
    )
    const refused = burst.filter(
      r => r.status === 'rejected' && (r.reason as Error).name === 'LogsRefusedError'
    )
    assert.ok(
      refused.length > 0,
      `some requests of the burst were refused: ${burst.map(r => (r.status === 'rejected' ? (r.reason as Error).name + ':' + (r.reason as Error).message : 'ok')).join(', ')}`
    )
    assert.ok(
      burst.some(r => r.status === 'fulfilled'),
      'the first ones were served'
    )

    // A viewer may not ask: its stream is reset before any reply.
    const addr = b.mesh.addresses()[0]!
    assert.equal((await presentToken(viewer, addr, b.mesh.issueViewerToken())).ok, true)
    const s = await openStream(viewer, addr, LOGS_PROTOCOL)
    await assert.rejects(async () => {
      s.send(encodeFrame(encodeLogsRequest({ workload: 'web', lines: 10 })))
      await readOneFrame(s, 1 << 20, 5000)
    })

    // A node that is down: unreachable, said so.
    await c.mesh.stop()
    await assert.rejects(a.mesh.fetchLogs('node-2', 'web'), { name: 'PeerGoneError' })
  } finally {
    await viewer.stop()
    await Promise.all(nodes.map(n => n.mesh.stop()))
  }
})
