/**
 * Separate daemon processes on loopback, each a LevelStore replica with createMesh
 * (test/fixtures/mesh-daemon.ts): one is killed with SIGKILL and restarted, another is cut off
 * through a TCP proxy the test controls; changes are made meanwhile. After healing all converge
 * and nothing any node had accepted is lost.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { makeFleet } from './fixtures/fleet.ts'
import { spawnDaemon, type DaemonProcess } from './fixtures/mesh-process.ts'
import { startProxy, tcpPort, peerIdOf } from './fixtures/tcp-proxy.ts'

interface DocState {
  heads: string[]
  value: Record<string, unknown>
}

async function fleetDoc(d: DaemonProcess): Promise<DocState | undefined> {
  const s = await d.request({ cmd: 'state' })
  return (s.docs as Record<string, DocState>).fleet
}

async function converged(ds: DaemonProcess[], ms = 40_000): Promise<DocState> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    const states = await Promise.all(ds.map(fleetDoc))
    const first = states[0]
    if (
      first !== undefined &&
      states.every(s => s !== undefined && s.heads.join() === first.heads.join())
    ) {
      return first
    }
    await new Promise(resolve => setTimeout(resolve, 200))
  }
  throw new Error(`daemons did not converge within ${ms} ms`)
}

test('SIGKILL and restart, a cut link, changes meanwhile: all converge and nothing accepted is lost', async () => {
  const fleet = await makeFleet({ nodes: 3, replicas: 0, label: 'mesh-process' })
  const root = await mkdtemp(path.join(tmpdir(), 'rhizome-mesh-proc-'))
  const procs: DaemonProcess[] = []
  const proxy = { p: undefined as Awaited<ReturnType<typeof startProxy>> | undefined }
  try {
    let a = await spawnDaemon(fleet, {
      dir: path.join(root, 'a'),
      identity: fleet.nodes[0]!,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: []
    })
    procs.push(a)
    const aAddr = a.addresses[0]!
    const b = await spawnDaemon(fleet, {
      dir: path.join(root, 'b'),
      identity: fleet.nodes[1]!,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: [aAddr]
    })
    procs.push(b)
    proxy.p = await startProxy(tcpPort(aAddr))
    const c = await spawnDaemon(fleet, {
      dir: path.join(root, 'c'),
      identity: fleet.nodes[2]!,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: [`/ip4/127.0.0.1/tcp/${proxy.p.port}/p2p/${peerIdOf(aAddr)}`]
    })
    procs.push(c)

    await a.request({ cmd: 'change', docId: 'fleet', key: 'a1', value: 1 })
    await converged([a, b, c])

    // A acknowledges a change, then dies without warning.
    await a.request({ cmd: 'change', docId: 'fleet', key: 'a2', value: 2 })
    await a.kill()
    await b.request({ cmd: 'change', docId: 'fleet', key: 'b1', value: 1 })
    // A restarts on the same port and data directory.
    a = await spawnDaemon(fleet, {
      dir: path.join(root, 'a'),
      identity: fleet.nodes[0]!,
      listen: [aAddr.slice(0, aAddr.indexOf('/p2p/'))],
      bootstrap: []
    })
    procs[0] = a
    assert.equal((await fleetDoc(a))?.value.a2, 2, 'A kept its acknowledged change across SIGKILL')

    // C is cut off; both sides change meanwhile.
    proxy.p.cut()
    await c.request({ cmd: 'change', docId: 'fleet', key: 'c1', value: 1 })
    await a.request({ cmd: 'change', docId: 'fleet', key: 'a3', value: 3 })
    await converged([a, b])
    assert.equal((await fleetDoc(c))?.value.a3, undefined, 'C did not hear of a3 while cut off')
    proxy.p.heal()

    const final = await converged([a, b, c], 60_000)
    for (const k of ['a1', 'a2', 'b1', 'c1', 'a3']) assert.ok(k in final.value, `${k} survived`)
  } finally {
    await Promise.all(procs.map(p => p.kill()))
    await proxy.p?.close()
    await rm(root, { recursive: true, force: true })
  }
})
