/**
 * Handshake-slot exhaustion (issue 10, item 3): strangers on ten hosts (127.0.0.2-11) keep idle
 * TCP sockets open to a daemon, never starting a handshake, reopening each as soon as it is
 * dropped. Meanwhile an enrolled device that was connected before reconnects, a new enrolled
 * device joins from the same host, and the daemon's own outbound dial to a bootstrap peer gets
 * through; every idle socket is dropped within the handshake timeout.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { DEFAULT_LIMITS } from '../mesh/limits.ts'
import { makeFleet } from './fixtures/fleet.ts'
import { startNode, type TestNode } from './fixtures/mesh-node.ts'
import { waitFor } from './fixtures/wait.ts'

const HOSTS = 10
const SOCKETS_PER_HOST = 12
/** The flood stops by itself after this long, whatever happens. */
const FLOOD_MS = 40_000

/** Idle sockets from `hosts` to `port`, each reopened when it closes, until `stop()`. */
function flood(port: number, hosts: string[]) {
  let running = true
  let opened = 0
  let longest = 0
  const sockets = new Map<net.Socket, number>()
  const started = performance.now()
  const deadline = Date.now() + FLOOD_MS
  const open = (host: string): void => {
    if (!running || Date.now() > deadline) return
    const at = performance.now()
    const s = net.connect({ host: '127.0.0.1', port, localAddress: host })
    sockets.set(s, at)
    s.on('connect', () => {
      opened++
    })
    s.on('error', () => {})
    s.on('close', () => {
      sockets.delete(s)
      longest = Math.max(longest, performance.now() - at)
      setImmediate(() => open(host))
    })
  }
  for (const h of hosts) for (let i = 0; i < SOCKETS_PER_HOST; i++) open(h)
  return {
    get opened() {
      return opened
    },
    /** How long the flood has run, ms. */
    get age() {
      return performance.now() - started
    },
    /** The longest any socket stayed open, closed or still open, ms. */
    get longest() {
      const now = performance.now()
      let oldest = 0
      for (const at of sockets.values()) oldest = Math.max(oldest, now - at)
      return Math.max(longest, oldest)
    },
    stop(): void {
      running = false
      for (const s of sockets.keys()) s.destroy()
    }
  }
}

const tcpPort = (addr: string): number => Number(addr.split('/tcp/')[1]!.split('/')[0])

test('idle sockets from many hosts do not lock out enrolled devices or outbound dials; they are dropped within the handshake timeout', async () => {
  const fleet = await makeFleet({ replicas: 0, nodes: 4, label: 'handshake-flood' })
  const nodes: TestNode[] = []
  let attack: ReturnType<typeof flood> | undefined
  try {
    // g: a bootstrap peer of the victim, which the victim dials (outbound).
    let g = await startNode(fleet, fleet.nodes[3]!)
    nodes.push(g)
    const gAddr = g.mesh.addresses()[0]!
    const v = await startNode(fleet, fleet.nodes[0]!, { bootstrap: [gAddr] })
    nodes.push(v)
    const vAddr = v.mesh.addresses()[0]!
    const peersOf = (n: TestNode): string[] => n.mesh.peers().map(p => p.peerId)
    await waitFor('v to dial g', () => v.mesh.metrics().syncSessions === 1)

    // e was connected before the attack (its host is one an enrolled node came from); it goes.
    const e = await startNode(fleet, fleet.nodes[1]!, { bootstrap: [vAddr] })
    await waitFor('e to sync with v', () => e.mesh.metrics().syncSessions === 1)
    await e.mesh.stop()
    await g.mesh.stop()

    attack = flood(
      tcpPort(vAddr),
      Array.from({ length: HOSTS }, (_, i) => `127.0.0.${i + 2}`)
    )
    await waitFor('the flood to be under way', () => attack!.opened > 300, 10_000)

    const t0 = performance.now()
    const e2 = await startNode(fleet, fleet.nodes[1]!, { bootstrap: [vAddr] })
    nodes.push(e2)
    const f = await startNode(fleet, fleet.nodes[2]!, { bootstrap: [vAddr] })
    nodes.push(f)
    g = await startNode(fleet, fleet.nodes[3]!, {
      listen: [gAddr.slice(0, gAddr.indexOf('/p2p/'))]
    })
    nodes.push(g)
    await waitFor(
      'e to reconnect, f to join and v to redial g, during the flood',
      () =>
        e2.mesh.metrics().syncSessions === 1 &&
        f.mesh.metrics().syncSessions === 1 &&
        peersOf(v).includes(g.mesh.peerId),
      10_000
    )
    const joined = performance.now() - t0
    assert.ok(joined < 10_000, `joined after ${joined.toFixed(0)} ms`)
    // Held long enough that an idle socket kept past the handshake timeout would show.
    const timeout = DEFAULT_LIMITS.handshakeTimeoutMs
    await waitFor(
      'the flood to outlast the handshake timeout',
      () => attack!.age > timeout + 2500,
      20_000
    )
    const longest = attack.longest
    attack.stop()
    assert.ok(longest < timeout + 1500, `an idle socket was held ${longest.toFixed(0)} ms`)
    assert.ok(v.mesh.metrics().inboundRefused > 0, 'sockets over the per-host limit were refused')
  } finally {
    attack?.stop()
    await Promise.all(nodes.map(n => n.mesh.stop()))
  }
})
