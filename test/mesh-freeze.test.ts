/**
 * Freeze detection (issue 11, item 7): a peer that keeps serving old state — a stolen device
 * cut off from the fleet, still connected to a site device — makes its victim report `stale`
 * within one beacon period after the last beacon it let through expires. Before beacons the
 * victim reported itself up to date for ever. Three in-process mesh nodes on loopback: the admin
 * side issues a beacon every period; the frozen peer reaches it through a proxy the test cuts.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Registry } from 'prom-client'
import { signBeacon } from '../crdt/beacon.ts'
import { MemoryStore } from '../crdt/store.ts'
import { makeFleet } from './fixtures/fleet.ts'
import { headsOf, startNode, type TestNode } from './fixtures/mesh-node.ts'
import { peerIdOf, startProxy, tcpPort } from './fixtures/tcp-proxy.ts'
import { waitFor } from './fixtures/wait.ts'
import { TimeFloor, TrustWatch } from '../node/trust-daemon.ts'

const PERIOD_MS = 2000
const VALID_MS = 4000

test('a frozen peer makes its victim report stale within one beacon period after expiry', async () => {
  const fleet = await makeFleet({ nodes: 3, replicas: 0, admins: 1, label: 'freeze' })
  const nodes: TestNode[] = []
  // No connections beyond the bootstrap links: the cut proxy must partition the fleet.
  const only = { extraPeers: 0 }
  const a = await startNode(fleet, fleet.nodes[0]!, only)
  nodes.push(a)
  const proxy = await startProxy(tcpPort(a.mesh.addresses()[0]!))
  const viaProxy = `/ip4/127.0.0.1/tcp/${proxy.port}/p2p/${peerIdOf(a.mesh.addresses()[0]!)}`
  const frozen = await startNode(fleet, fleet.nodes[1]!, { ...only, bootstrap: [viaProxy] })
  nodes.push(frozen)
  const store = new MemoryStore()
  const victim = await startNode(
    fleet,
    fleet.nodes[2]!,
    { ...only, bootstrap: frozen.mesh.addresses() },
    store
  )
  nodes.push(victim)
  const events: Array<{ event: string; at: number; fields: Record<string, unknown> }> = []
  const watch = new TrustWatch(
    victim.replica,
    (_level, event, fields = {}) => events.push({ event, at: Date.now(), fields }),
    new Registry(),
    await TimeFloor.open(store)
  )
  watch.start()
  let timer: ReturnType<typeof setInterval> | undefined
  try {
    // The admin side: a change, then a beacon every period, each valid for two.
    const admin = fleet.signer(0, fleet.admins[0]!)
    await (
      await a.replica.open('fleet')
    ).change(admin, d => {
      d.v = 1
    })
    let lastIssued = { expires: 0 }
    const issue = async (): Promise<void> => {
      const docs: Record<string, string[]> = {}
      for (const id of a.replica.documentIds()) docs[id] = (await a.replica.open(id)).heads
      const now = Date.now()
      const b = await signBeacon(
        {
          fleetId: a.replica.fleetId,
          trustVersion: a.replica.trust.version,
          issued: now,
          expires: now + VALID_MS,
          docs
        },
        fleet.admins[0]!,
        fleet.ed
      )
      await a.replica.acceptBeacon(b.bytes)
      lastIssued = b
    }
    await issue()
    timer = setInterval(() => void issue(), PERIOD_MS)
    await waitFor(
      'the victim to hold the change and be fresh',
      async () =>
        (await headsOf(victim.replica, 'fleet')) === (await headsOf(a.replica, 'fleet')) &&
        watch.freshnessStatus()?.state === 'fresh'
    )

    // The frozen peer is cut off from the fleet and keeps serving the victim what it has.
    proxy.cut()
    const held = () => victim.replica.beacon?.expires ?? 0
    await waitFor(
      'the last beacon through to have reached the victim',
      () => {
        // Beacons issued after the cut never get through; wait until one does not.
        return held() < lastIssued.expires
      },
      10_000
    )
    await (
      await a.replica.open('fleet')
    ).change(admin, d => {
      d.v = 2
    })
    const expires = held()
    const stale = await waitFor(
      'the victim to report stale',
      () => events.find(e => e.event === 'trust.stale'),
      VALID_MS + 3 * PERIOD_MS
    )
    assert.equal(stale.fields.reason, 'expired')
    assert.ok(
      stale.at - expires <= PERIOD_MS,
      `stale ${stale.at - expires} ms after its newest beacon expired; the period is ${PERIOD_MS} ms`
    )
    assert.equal(watch.freshnessStatus()?.state, 'stale')
    // It still runs what it had: its document is the old one, kept, not emptied.
    assert.equal((await victim.replica.open<{ v?: number }>('fleet')).value.v, 1)

    // Healed: the next beacon gets through and the victim is fresh again.
    proxy.heal()
    await waitFor(
      'the victim to be fresh again',
      () => events.find(e => e.event === 'trust.fresh'),
      30_000,
      100
    )
    // The beacon and the document come on their own messages: fresh can be said first.
    await waitFor(
      'the victim to receive the change made while it was frozen',
      async () => (await victim.replica.open<{ v?: number }>('fleet')).value.v === 2,
      30_000,
      100
    )
  } finally {
    clearInterval(timer)
    await watch.stop()
    for (const n of nodes) await n.mesh.stop()
    await proxy.close()
  }
})
