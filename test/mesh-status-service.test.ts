/**
 * The status service (`mesh/status-service.ts`) on its own, over fake sync streams: a record from
 * an enrolled node is kept and relayed to every other peer, not back to its sender; an older one
 * is neither; a record of a key not enrolled here is dropped without blaming the messenger, a
 * forged one is a fault; records outlive a restart; a peer's first hello and every anti-entropy
 * round send it what is held; a record of a node enrolled only later is held aside (bounded)
 * and kept once the enrolment arrives; a record bringing rollout news is not held up behind its
 * node's routine records, within a bounded budget of its own; a routine record goes on to a few
 * devices and every session, news and a node's own records to every peer.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { TypedEventEmitter, type PeerId } from '@libp2p/interface'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { toHex } from '../crdt/bytes.ts'
import { generateKeyPair, type KeyPair } from '../crdt/keys.ts'
import type { Replica } from '../crdt/replica.ts'
import { MeshCounters } from '../mesh/counters.ts'
import {
  STATUS_NEWS_BURST,
  STATUS_PENDING_MAX,
  STATUS_RELAY_BURST,
  STATUS_RELAY_FANOUT
} from '../mesh/limits.ts'
import { signStatus } from '../mesh/status-record.ts'
import { StatusService, type StatusComponents, type StatusInit } from '../mesh/status-service.ts'
import type { StatusReceiver, SyncEvents } from '../mesh/sync-service.ts'
import type { SyncStream } from '../mesh/sync-stream.ts'
import { makeFleet } from './fixtures/fleet.ts'

/** A sync stream that only records the status records sent on it. */
function fakeStream(peerId?: string): SyncStream & { sent: Uint8Array[] } {
  const sent: Uint8Array[] = []
  return {
    sent,
    peerId,
    sendStatus: (r: Uint8Array) => {
      sent.push(r)
    }
  } as unknown as SyncStream & { sent: Uint8Array[] }
}

class FakeSync extends TypedEventEmitter<SyncEvents> {
  list: SyncStream[] = []
  receiver: StatusReceiver | undefined
  streams(): SyncStream[] {
    return this.list
  }
  setStatusReceiver(r: StatusReceiver): void {
    this.receiver = r
  }
}

const peerOf = (k: KeyPair): string => peerIdFromPublicKey(publicKeyFromRaw(k.publicKey)).toString()

async function service(
  replica: Replica,
  identity: KeyPair,
  enrolled: Set<string>,
  admissionOf?: (peer: PeerId) => string,
  init: Partial<StatusInit> = {}
) {
  const sync = new FakeSync()
  const components: StatusComponents = {
    addressManager: {
      getAddresses: () => [multiaddr('/ip4/192.0.2.7/tcp/4001/p2p/' + peerOf(identity))]
    },
    sync,
    admission: {
      isEnrolledKey: k => enrolled.has(k),
      ...(admissionOf === undefined ? {} : { admissionOf })
    }
  }
  const s = new StatusService(components, {
    replica,
    identity,
    staleAfterMs: 30_000,
    counters: new MeshCounters(),
    ...init
  })
  await s.start()
  return { s, sync }
}

/**
 * A one-replica fleet of `nodes` node keys, the first `enrolledNodes` of them enrolled, and the
 * first node's status service started on it; `record` signs a status record in this fleet.
 */
async function started(
  label: string,
  nodes: number,
  enrolledNodes = nodes,
  admissionOf?: (peer: PeerId) => string,
  init: Partial<StatusInit> = {}
) {
  const fleet = await makeFleet({ replicas: 1, nodes, label })
  const replica = fleet.replicas[0]!
  const enrolled = new Set(fleet.nodes.slice(0, enrolledNodes).map(k => toHex(k.publicKey)))
  const { s, sync } = await service(replica, fleet.nodes[0]!, enrolled, admissionOf, init)
  const record = async (key: KeyPair, seq: number, body: Record<string, unknown> = {}) =>
    (await signStatus(key, replica.fleetId, seq, body, fleet.ed)).bytes
  return { fleet, replica, enrolled, s, sync, record }
}

test('a newer record is kept and relayed to every other peer; an older one, an unknown key and a forgery are not', async () => {
  const { fleet, s, sync, record } = await started('status-service', 3)
  const [me, other, third] = fleet.nodes as [KeyPair, KeyPair, KeyPair]
  const from = fakeStream()
  const to = fakeStream()
  sync.list = [from, to]
  const events: number[] = []
  s.addEventListener('status', e => events.push(e.detail.seq))

  await sync.receiver!(await record(other, 10, { revision: 'r10' }), from)
  assert.deepEqual(
    s.records().map(r => [r.seq, r.body.revision]),
    [[10, 'r10']]
  )
  assert.equal(to.sent.length, 1, 'relayed to the other peer')
  assert.equal(from.sent.length, 0, 'not back to its sender')

  // Older and equal: neither kept nor relayed.
  await sync.receiver!(await record(other, 9), from)
  await sync.receiver!(await record(other, 10), to)
  assert.deepEqual(
    s.records().map(r => r.seq),
    [10]
  )
  assert.equal(to.sent.length, 1)

  // A key not enrolled here (perhaps in a devices document not yet received): dropped quietly.
  await sync.receiver!(await record(generateKeyPair(), 11), from)
  assert.equal(s.records().length, 1)

  // A forgery: the signature does not match the body.
  const forged = await record(third, 12, { revision: 'x' })
  forged[forged.length - 1] = forged[forged.length - 1]! ^ 1
  await assert.rejects(sync.receiver!(forged, from), { name: 'InvalidStatusError' })
  assert.equal(s.records().length, 1)
  assert.deepEqual(events, [10])

  // Our own record goes to every peer, with where we can be dialled (signed, outside the body).
  const own = await s.publish({ revision: 'mine' })
  assert.equal(own.node, toHex(me.publicKey))
  assert.deepEqual(own.addresses, ['/ip4/192.0.2.7/tcp/4001'])
  assert.deepEqual(own.body, { revision: 'mine' })
  assert.equal(from.sent.length, 1)
  assert.equal(to.sent.length, 2)

  // Advertised addresses: only multiaddrs of the node itself (no /p2p of another) are taken.
  await sync.receiver!(
    await record(third, 13, {
      meshAddrs: [
        '/ip4/10.0.0.9/tcp/4001',
        'not an address',
        `/ip4/10.0.0.8/tcp/1/p2p/${peerOf(me)}`
      ]
    }),
    from
  )
  const thirds = s.records().find(r => r.node === toHex(third.publicKey))
  assert.deepEqual(thirds?.addresses, ['/ip4/10.0.0.9/tcp/4001'])
  assert.deepEqual(thirds?.body, {})
  await s.stop()
})

test('records outlive a restart; a first hello and an anti-entropy round send what is held', async () => {
  const first = await started('status-service-restart', 2)
  const { fleet, replica, enrolled } = first
  const [me, other] = fleet.nodes as [KeyPair, KeyPair]
  const published = await first.s.publish({ revision: 'r1' })
  await first.sync.receiver!(await first.record(other, 5, { revision: 'o5' }), fakeStream())
  await first.s.stop()

  const again = await service(replica, me, enrolled)
  assert.deepEqual(
    again.s
      .records()
      .map(r => String(r.body.revision))
      .sort((x, y) => x.localeCompare(y)),
    ['o5', 'r1']
  )
  // Our sequence number carries on from the stored record, so peers take the next one as newer.
  const next = await again.s.publish({ revision: 'r2' })
  assert.ok(next.seq > published.seq)

  const peer = fakeStream()
  again.sync.safeDispatchEvent('stream:greeted', { detail: peer })
  assert.equal(peer.sent.length, 2)
  again.sync.safeDispatchEvent('stream:resync', { detail: peer })
  assert.equal(peer.sent.length, 4)
  await again.s.stop()
})

test(
  'a record that comes before its node is enrolled here is kept once the enrolment arrives (bounded)',
  { timeout: 10_000 },
  async () => {
    // A browser gets every record on its first hello, before the devices document has synced.
    const pending = await started('status-service-pending', 2, 1)
    const { fleet, replica, enrolled, s, sync, record: signed } = pending
    const late = fleet.nodes[1]!
    const from = fakeStream()
    sync.list = [from]
    const record = (key: KeyPair, seq: number) => signed(key, seq, { revision: `r${seq}` })
    await sync.receiver!(await record(late, 5), from)
    await sync.receiver!(await record(late, 4), from)
    // Strangers fill the held-aside set to its bound (the oldest make room), then `late` sends again.
    const strangers = Array.from({ length: STATUS_PENDING_MAX }, () => generateKeyPair())
    for (const k of strangers) await sync.receiver!(await record(k, 1), from)
    await sync.receiver!(await record(late, 6), from)
    assert.equal(s.records().length, 0, 'nothing kept while the node is not enrolled')
    const kept = new Promise<number>(resolve =>
      s.addEventListener('status', e => resolve(e.detail.seq), { once: true })
    )
    enrolled.add(toHex(late.publicKey))
    replica.safeDispatchEvent('change', { detail: { docId: 'devices', heads: [] } as never })
    assert.equal(await kept, 6, 'the newest record held aside is taken once the node is enrolled')
    assert.deepEqual(
      s.records().map(r => r.body.revision),
      ['r6']
    )
    // An enrolment in a trust statement's node list does it too.
    const listed = generateKeyPair()
    await sync.receiver!(await record(listed, 7), from)
    const keptToo = new Promise<number>(resolve =>
      s.addEventListener('status', e => resolve(e.detail.seq), { once: true })
    )
    enrolled.add(toHex(listed.publicKey))
    replica.safeDispatchEvent('trust', { detail: {} as never })
    assert.equal(await keptToo, 7)
    await s.stop()
  }
)

test('a record bringing rollout news is relayed at once when its node has spent its pace; news from a flooding node is still bounded', async () => {
  const { fleet, s, sync, record } = await started('status-service-news', 2)
  const other = fleet.nodes[1]!
  const from = fakeStream()
  const to = fakeStream()
  sync.list = [from, to]
  let seq = 0
  const receive = async (body: Record<string, unknown>) =>
    sync.receiver!(await record(other, ++seq, body), from)
  const report = (facts: Record<string, number>) => ({
    rollouts: { 'fleet:app': { digest: 'd1', seenAt: 1, ...facts } }
  })

  // A rollout's first steps and a workload restarting spend the node's burst …
  await receive(report({}))
  await receive(report({ switchedAt: 2 }))
  await receive({ ...report({ switchedAt: 2 }), workloads: { app: 'restarting' } })
  assert.equal(to.sent.length, STATUS_RELAY_BURST)
  // … so a routine record waits for the pace,
  await receive({ ...report({ switchedAt: 2 }), workloads: { app: 'crashed' } })
  assert.equal(to.sent.length, STATUS_RELAY_BURST, 'a routine record waits')
  // but the failure goes on at once (and the routine one waiting is dropped: this one is newer).
  await receive(report({ switchedAt: 2, failedAt: 3 }))
  assert.equal(to.sent.length, STATUS_RELAY_BURST + 1, 'the failure is relayed at once')
  assert.equal(s.records()[0]?.seq, seq)
  // Nothing new since: waits like any other.
  await receive({ ...report({ switchedAt: 2, failedAt: 3 }), workloads: { app: 'stopped' } })
  assert.equal(to.sent.length, STATUS_RELAY_BURST + 1)

  // A stolen device making up news in every record (a new rollout each time) gets its news
  // budget through and no more, then waits for the pace like the rest.
  for (let i = 0; i < 10; i++) {
    await receive({
      rollouts: { [`fleet:made-up-${i}`]: { digest: 'x', seenAt: 1, switchedAt: 2 } }
    })
  }
  assert.equal(to.sent.length, STATUS_RELAY_BURST + STATUS_NEWS_BURST)
  await s.stop()
})

test('a routine record is relayed to a few devices at random and to every session; news and our own records to every peer', async () => {
  const kinds = new Map<unknown, string>()
  const { fleet, s, sync, record } = await started(
    'status-service-fanout',
    2,
    2,
    p => kinds.get(p) ?? 'none'
  )
  const other = fleet.nodes[1]!
  const from = fakeStream('from')
  const devices = Array.from({ length: 6 }, (_, i) => fakeStream(`device-${i}`))
  const dashboard = fakeStream('dashboard')
  for (const d of [from, ...devices]) kinds.set(d.peerId, 'node')
  kinds.set(dashboard.peerId, 'viewer')
  sync.list = [from, ...devices, dashboard]
  const reached = () => devices.filter(d => d.sent.length > 0).length

  await sync.receiver!(await record(other, 1, { revision: 'r1' }), from)
  assert.equal(reached(), STATUS_RELAY_FANOUT, 'a routine record: a few devices')
  assert.equal(dashboard.sent.length, 1, 'and the dashboard, which relays nothing on')
  assert.equal(from.sent.length, 0)

  const failed = {
    rollouts: { 'fleet:app': { digest: 'd', seenAt: 1, switchedAt: 2, failedAt: 3 } }
  }
  await sync.receiver!(await record(other, 2, failed), from)
  assert.equal(
    devices.reduce((n, d) => n + d.sent.length, 0),
    STATUS_RELAY_FANOUT + devices.length,
    'news: every device'
  )
  assert.equal(reached(), devices.length)
  assert.equal(dashboard.sent.length, 2)

  for (const d of [from, ...devices, dashboard]) d.sent.length = 0
  await s.publish({ revision: 'mine' })
  assert.ok(
    [from, ...devices, dashboard].every(d => d.sent.length === 1),
    'our own: every peer'
  )
  await s.stop()
})

test('a first report of a rollout goes to every device only when the rollout has a disruption budget here', async () => {
  const kinds = new Map<unknown, string>()
  const { fleet, s, sync, record } = await started(
    'status-service-taking-part',
    3,
    3,
    p => kinds.get(p) ?? 'none',
    { rolloutBudgeted: id => id === 'fleet:budgeted' }
  )
  const [, one, two] = fleet.nodes as [KeyPair, KeyPair, KeyPair]
  const from = fakeStream('from')
  const devices = Array.from({ length: 6 }, (_, i) => fakeStream(`device-${i}`))
  for (const d of [from, ...devices]) kinds.set(d.peerId, 'node')
  sync.list = [from, ...devices]
  const reached = () => devices.filter(d => d.sent.length > 0).length
  const takingPart = (id: string) => ({ rollouts: { [id]: { digest: 'd', seenAt: 1 } } })

  // Every node's reconcile record after a rollout is applied says it takes part: no order reads
  // that without a budget, so it goes on like any routine record.
  await sync.receiver!(await record(one, 1, takingPart('fleet:plain')), from)
  assert.equal(reached(), STATUS_RELAY_FANOUT, 'no budget: a few devices')
  for (const d of devices) d.sent.length = 0
  // With a budget, the nodes behind count this one ahead of them: every device, at once.
  await sync.receiver!(await record(two, 1, takingPart('fleet:budgeted')), from)
  assert.equal(reached(), devices.length, 'a budget: every device')
  await s.stop()
})

test(
  'a record is relayed, and the stream reads on, without waiting for the disk',
  { timeout: 10_000 },
  async () => {
    const { fleet, replica, s, sync, record } = await started('status-service-disk', 2)
    const other = fleet.nodes[1]!
    const from = fakeStream()
    const to = fakeStream()
    sync.list = [from, to]
    // A slow disk (an SD card flushing, or every daemon on one machine writing at once).
    const store = replica.store
    const put = store.putMeta.bind(store)
    let release: () => void = () => {}
    const slow = new Promise<void>(resolve => {
      release = resolve
    })
    store.putMeta = async (...args) => {
      await slow
      return put(...args)
    }
    await sync.receiver!(await record(other, 1, { revision: 'r1' }), from)
    assert.equal(to.sent.length, 1, 'relayed before the write finished')
    assert.equal(s.records().length, 1)
    release()
    await s.stop()
    assert.ok((await put.call(store, 'x', new Uint8Array())) === undefined)
    assert.ok(
      (await store.listMeta('mesh/status/')).length === 1,
      'written once the disk caught up'
    )
  }
)
