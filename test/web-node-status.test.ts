/**
 * The fleet as the dashboard lists it (web/src/node-status.ts), without a browser: every enrolled
 * node, named as enrolled, one never heard from listed as down; a record that reaches the page
 * long after its node made it (relayed from a daemon's store) is down at once.
 */
import { it } from 'node:test'
import assert from 'node:assert/strict'
import { toHex } from '../crdt/bytes.ts'
import { DEVICES_DOC, enrolledDevices } from '../crdt/devices.ts'
import {
  CLOCK_SKEW_ALLOWANCE_MS,
  enrolledNodes,
  fleetList,
  seenLabel,
  type RawStatus
} from '../web/src/node-status.ts'
import { makeFleet, testKey } from './fixtures/fleet.ts'

const key = (c: string): string => c.repeat(64)
const STALE = 30_000
const now = 10_000_000

const record = (node: string, at: number, receivedAt = now): RawStatus => ({
  node,
  peerId: `peer-${node.slice(0, 2)}`,
  body: { name: 'self-named', at },
  receivedAt,
  stale: false
})

it('lists every enrolled node, by its enrolment, and marks one never heard from down', () => {
  const enrolled = new Map<string, { name: string; labels: Record<string, string> }>([
    [key('a'), { name: 'n1', labels: { site: 'lab' } }],
    [key('b'), { name: 'n2', labels: {} }]
  ])
  const list = fleetList([record(key('a'), now - 1000)], enrolled, now, STALE, k => `d-${k[0]}`)
  assert.deepEqual(
    list.map(n => [n.name, n.stale, n.neverSeen ?? false, n.peerId, seenLabel(n, now)]),
    [
      ['n1', false, false, 'peer-aa', 'online'],
      ['n2', true, true, 'd-b', 'down · never seen']
    ]
  )
  assert.deepEqual(list[0]?.labels, { site: 'lab' })
})

it('a record made long before it reached the page is down at once; a clock a little off is not', () => {
  const list = fleetList(
    [
      record(key('a'), now - 3600_000),
      record(key('b'), now - STALE - CLOCK_SKEW_ALLOWANCE_MS + 5000),
      record(key('c'), now + 60_000)
    ],
    new Map(),
    now,
    STALE,
    () => ''
  )
  assert.deepEqual(
    list.map(n => n.stale),
    [true, false, false]
  )
  assert.equal(seenLabel(list[0]!, now), 'down · last seen 1 h ago')
})

it('plans rollouts over enrolled nodes only: a revoked device a later change un-revokes stays out', async () => {
  type Devices = { devices: Record<string, { name: string; labels: object; revoked: boolean }> }
  const fleet = await makeFleet({ replicas: 1, label: 'web-rollout-devices' })
  const replica = fleet.replicas[0]!
  const admin = fleet.signer(0, fleet.admins[0]!)
  const doc = await replica.open<Devices>(DEVICES_DOC)
  const [kept, stolen] = ['kept', 'stolen'].map(n => toHex(testKey(`web-rd/${n}`).publicKey))
  const entry = (name: string, revoked: boolean) => ({ name, labels: { site: 'x' }, revoked })
  await doc.change(admin, d => {
    d.devices[kept!] = entry('kept', false)
    d.devices[stolen!] = entry('stolen', false)
  })
  await doc.change(admin, d => {
    d.devices[stolen!]!.revoked = true
  })
  await doc.change(admin, d => {
    d.devices[stolen!]!.revoked = false
  })
  const enrolled = enrolledDevices(replica.trust, doc.value)
  // The stolen device still gossips records; a page lists it as heard from, not as enrolled.
  const list = fleetList([record(stolen!, now - 1000)], enrolled, now, STALE, () => '')
  assert.ok(
    list.some(n => n.node === stolen),
    'the stolen device is still listed as heard from'
  )
  const planned = enrolledNodes(list)
  assert.equal(planned.has(stolen!), false, 'the revoked device is in no wave')
  assert.deepEqual(planned.get(kept!), { name: 'kept', labels: { site: 'x' } })
})
