/**
 * Document sync between daemons over real TCP on loopback: two nodes, ten nodes in a line, and a
 * partition (a TCP proxy the test cuts) with concurrent changes on both sides, healed; a sender
 * whose store is slow is not taken for a forger; a new admin key travels ahead of its changes.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { toHex } from '../crdt/bytes.ts'
import { generateKeyPair } from '../crdt/keys.ts'
import { Replica } from '../crdt/replica.ts'
import { nextStatement } from '../crdt/trust.ts'
import { MemoryStore } from '../crdt/store.ts'
import { ed, makeFleet } from './fixtures/fleet.ts'
import { startNode, headsOf, type TestNode } from './fixtures/mesh-node.ts'
import { waitFor } from './fixtures/wait.ts'
import { startProxy, tcpPort, peerIdOf } from './fixtures/tcp-proxy.ts'

async function stopAll(nodes: TestNode[]): Promise<void> {
  await Promise.all(nodes.map(n => n.mesh.stop()))
}

async function allSame(nodes: TestNode[], docId: string): Promise<boolean> {
  const heads = await Promise.all(
    nodes.map(async n => (n.replica.documentIds().includes(docId) ? headsOf(n.replica, docId) : ''))
  )
  return heads[0] !== '' && heads.every(h => h === heads[0])
}

test('two nodes: a change on either reaches the other; status records are gossiped', async () => {
  const fleet = await makeFleet({ nodes: 2, replicas: 0, label: 'sync-two-nodes' })
  const a = await startNode(fleet, fleet.nodes[0]!)
  const b = await startNode(fleet, fleet.nodes[1]!, { bootstrap: a.mesh.addresses() })
  try {
    const admin = Replica.signer(fleet.admins[0]!)
    await (
      await a.replica.open('fleet')
    ).change(admin, d => {
      d.ntp = 'pool.ntp.org'
    })
    await waitFor('b to receive the change', () => allSame([a, b], 'fleet'))
    await (
      await b.replica.open('site/berlin')
    ).change(admin, d => {
      d.x = 1
    })
    await waitFor('a to learn of site/berlin', () => allSame([a, b], 'site/berlin'))
    assert.equal((await a.replica.open('site/berlin')).value.x, 1)
    await b.mesh.publishStatus({ revision: 'r1' })
    await waitFor("a to hold b's status", () =>
      a.mesh.statuses().some(s => s.body.revision === 'r1')
    )
    assert.equal(a.mesh.metrics().batchesRejected, 0)
  } finally {
    await stopAll([a, b])
  }
})

// The cut can land within moments of the proxied connection opening. Sync streams ride existing
// connections only, so nothing re-dials around the proxy at the address identify taught (which
// made this test fail about one run in six before mesh/connections.ts#streamOnConnection).
test('ten nodes in a line: an admin change on one end reaches all; concurrent changes across a healed partition converge', async () => {
  const N = 10
  const fleet = await makeFleet({ nodes: N, replicas: 0, label: 'sync-line-of-ten' })
  const nodes: TestNode[] = []
  const proxy = { current: undefined as Awaited<ReturnType<typeof startProxy>> | undefined }
  try {
    for (let i = 0; i < N; i++) {
      let bootstrap: string[] = []
      if (i > 0) {
        const prev = nodes[i - 1]!.mesh.addresses()[0]!
        if (i === N / 2) {
          // The link between the halves runs through a proxy the test controls.
          proxy.current = await startProxy(tcpPort(prev))
          bootstrap = [`/ip4/127.0.0.1/tcp/${proxy.current.port}/p2p/${peerIdOf(prev)}`]
        } else bootstrap = [prev]
      }
      nodes.push(await startNode(fleet, fleet.nodes[i]!, { bootstrap }))
    }
    const admin = Replica.signer(fleet.admins[0]!)
    const t0 = Date.now()
    await (
      await nodes[0]!.replica.open('fleet')
    ).change(admin, d => {
      d.version = 1
    })
    await waitFor('the change to reach all ten', () => allSame(nodes, 'fleet'))
    const spread = Date.now() - t0
    assert.ok(spread < 10_000, `spread took ${spread} ms`)

    // Partition between nodes 4 and 5; both sides change the same document concurrently.
    proxy.current!.cut()
    await waitFor(
      'the halves to lose each other',
      () => !nodes[4]!.mesh.peers().some(p => p.peerId === nodes[5]!.mesh.peerId)
    )
    const left = Replica.signer(fleet.admins[0]!)
    const right = Replica.signer(fleet.admins[0]!)
    for (let i = 0; i < 20; i++) {
      await (
        await nodes[0]!.replica.open('fleet')
      ).change(left, d => {
        d[`left${i}`] = i
      })
      await (
        await nodes[9]!.replica.open('fleet')
      ).change(right, d => {
        d[`right${i}`] = i
      })
    }
    await waitFor(
      'each half to converge on its own',
      async () =>
        (await allSame(nodes.slice(0, 5), 'fleet')) && (await allSame(nodes.slice(5), 'fleet'))
    )
    assert.notEqual(
      await headsOf(nodes[0]!.replica, 'fleet'),
      await headsOf(nodes[9]!.replica, 'fleet')
    )

    proxy.current!.heal()
    await waitFor(
      'all ten to hold identical heads after healing',
      () => allSame(nodes, 'fleet'),
      40_000
    )
    const value = (await nodes[4]!.replica.open('fleet')).value as Record<string, unknown>
    assert.equal(value.left19, 19)
    assert.equal(value.right19, 19)
    for (const n of nodes) assert.equal(n.mesh.metrics().batchesRejected, 0)
  } finally {
    await stopAll(nodes)
    await proxy.current?.close()
  }
})

/** A store whose every batch append takes `ms`, as a busy disk does. */
class SlowStore extends MemoryStore {
  readonly ms: number
  constructor(ms: number) {
    super()
    this.ms = ms
  }
  override async appendBatch(docId: string, bytes: Uint8Array): Promise<number> {
    await new Promise(resolve => setTimeout(resolve, this.ms))
    return super.appendBatch(docId, bytes)
  }
}

test('a sender whose store is slow is not banned: sync waits for its write to finish, then delivers', async () => {
  const fleet = await makeFleet({ nodes: 2, replicas: 0, label: 'sync-slow-store' })
  // Anti-entropy every 40 ms on the sender, so sync messages are generated while a change is
  // applied in memory but not yet stored and signed-for.
  const a = await startNode(fleet, fleet.nodes[0]!, { antiEntropyMs: 40 }, new SlowStore(300))
  const b = await startNode(fleet, fleet.nodes[1]!, { bootstrap: a.mesh.addresses() })
  const rejected: string[] = []
  b.mesh.addEventListener('rejected', e => {
    rejected.push((e as CustomEvent<{ reason: string }>).detail.reason)
  })
  try {
    await waitFor(
      'a sync session between a and b',
      () => a.mesh.metrics().syncSessions === 1 && b.mesh.metrics().syncSessions === 1
    )
    const admin = Replica.signer(fleet.admins[0]!)
    for (let i = 0; i < 3; i++) {
      await (
        await a.replica.open('fleet')
      ).change(admin, d => {
        d[`k${i}`] = i
      })
      await waitFor(`b to receive change ${i}`, () => allSame([a, b], 'fleet'))
    }
    assert.deepEqual(rejected, [])
    assert.equal(b.mesh.metrics().batchesRejected, 0)
  } finally {
    await stopAll([a, b])
  }
})

test('a new admin key reaches every peer ahead of the changes it signs: nobody is banned for relaying them', async () => {
  const fleet = await makeFleet({ nodes: 3, replicas: 0, label: 'sync-new-admin' })
  // Anti-entropy out of the way: the statement must travel on its own, not be repaired later.
  const a = await startNode(fleet, fleet.nodes[0]!, { antiEntropyMs: 60_000 })
  const b = await startNode(fleet, fleet.nodes[1]!, {
    antiEntropyMs: 60_000,
    bootstrap: a.mesh.addresses()
  })
  const c = await startNode(fleet, fleet.nodes[2]!, {
    antiEntropyMs: 60_000,
    bootstrap: b.mesh.addresses()
  })
  try {
    await waitFor(
      'sessions a-b and b-c',
      () =>
        a.mesh.metrics().syncSessions === 1 &&
        b.mesh.metrics().syncSessions === 2 &&
        c.mesh.metrics().syncSessions === 1
    )
    const second = generateKeyPair()
    const prev = fleet.genesis.statement
    await a.replica.addTrustStatement(
      await nextStatement(
        prev,
        { admins: [...prev.admins, { key: toHex(second.publicKey), name: 'second admin' }] },
        [fleet.root],
        ed
      )
    )
    await (
      await a.replica.open('fleet')
    ).change(Replica.signer(second), d => {
      d.ntp = 'time.example'
    })
    await waitFor(
      "c to hold the second admin's change",
      async () =>
        (await allSame([a, b, c], 'fleet')) &&
        (await c.replica.open('fleet')).value.ntp === 'time.example'
    )
    assert.deepEqual(
      [a, b, c].map(n => n.replica.trust.version),
      [2, 2, 2]
    )
    assert.deepEqual(
      [a, b, c].map(n => n.mesh.metrics().peersBanned),
      [0, 0, 0]
    )
  } finally {
    await stopAll([a, b, c])
  }
})
