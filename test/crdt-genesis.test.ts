/**
 * Documents start from a deterministic genesis change, so concurrent first writes into a
 * top-level map (two operators enrolling devices at once into an empty `devices` document) both
 * survive the merge instead of one map replacing the other.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Replica } from '../crdt/replica.ts'
import { enrolledDevices } from '../crdt/devices.ts'
import { makeFleet, repair } from './fixtures/fleet.ts'

interface Devices {
  devices: Record<string, { name: string; labels: Record<string, string> }>
}

test('two admins enrolling concurrently into an empty devices document both keep their device', async () => {
  const fleet = await makeFleet({ replicas: 2, label: 'genesis-enrol' })
  const [a, b] = fleet.replicas as [Replica, Replica]
  const da = await a.open<Devices>('devices')
  const db = await b.open<Devices>('devices')
  assert.deepEqual(da.heads, db.heads, 'both replicas start from the same genesis change')
  await da.change(Replica.signer(fleet.admins[0]!), d => {
    d.devices['a'.repeat(64)] = { name: 'till-1', labels: {} }
  })
  await db.change(Replica.signer(fleet.admins[1]!), d => {
    d.devices['b'.repeat(64)] = { name: 'till-2', labels: {} }
  })
  await repair(a, b, 'devices')
  await repair(b, a, 'devices')
  assert.deepEqual(da.heads, db.heads)
  for (const r of [a, b]) {
    const names = [...enrolledDevices(r.trust, (await r.open('devices')).value).values()]
      .map(d => d.name)
      .sort()
    assert.ok(
      names.includes('till-1') && names.includes('till-2'),
      `both devices enrolled, got ${names.join(', ')}`
    )
  }
})

test('the genesis change is not listed in history and needs no signature', async () => {
  const fleet = await makeFleet({ replicas: 1, label: 'genesis-history' })
  const doc = await fleet.replicas[0]!.open('fleet')
  assert.deepEqual(doc.history(), [])
  await doc.change(Replica.signer(fleet.admins[0]!), d => {
    d.defaults = { x: 1 }
  })
  assert.equal(doc.history().length, 1)
})
