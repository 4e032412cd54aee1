/**
 * Freeze beacons (crdt/beacon.ts) and the time they are judged against (node/trust-daemon.ts):
 * only an admin's beacon counts, a damaged one is refused, freshness is fresh / stale (expired,
 * behind) / unknown, the newest wins everywhere alike, and the time floor never goes back.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  decodeBeacon,
  freshness,
  newerBeacon,
  signBeacon,
  verifyBeacon,
  type BeaconContent
} from '../crdt/beacon.ts'
import { ByteWriter } from '../crdt/bytes.ts'
import { MemoryStore } from '../crdt/store.ts'
import { TimeFloor } from '../node/trust-daemon.ts'
import { makeFleet, testKey, thrown } from './fixtures/fleet.ts'

test('a beacon counts only signed by an admin, intact; freshness follows expiry and what is held', async () => {
  const f = await makeFleet({ replicas: 1, admins: 1, label: 'beacon' })
  const r = f.replicas[0]!
  const doc = await r.open('fleet')
  await doc.change(f.signer(0, f.admins[0]!), d => {
    d.x = 1
  })
  const content: BeaconContent = {
    fleetId: r.fleetId,
    trustVersion: 1,
    issued: 1_000,
    expires: 5_000,
    docs: { fleet: doc.heads }
  }
  const b = await signBeacon(content, f.admins[0]!, f.ed)
  const decoded = decodeBeacon(b.bytes)
  assert.equal(await verifyBeacon(decoded, r.trust, f.ed), true)
  assert.equal(
    await verifyBeacon(await signBeacon(content, f.operator, f.ed), r.trust, f.ed),
    false
  )
  assert.equal(
    await verifyBeacon(await signBeacon(content, testKey('beacon/stranger'), f.ed), r.trust, f.ed),
    false
  )
  const flipped = b.bytes.slice()
  flipped[40]! ^= 1
  assert.equal(
    (await thrown(() => verifyBeacon(decodeBeacon(flipped), r.trust, f.ed))).name,
    'InvalidSignatureError'
  )

  const held = r.heldState()
  assert.deepEqual(freshness(undefined, 0, held), { state: 'unknown' })
  assert.equal(freshness(decoded, 4_999, held).state, 'fresh')
  assert.deepEqual(
    [freshness(decoded, 5_001, held).state, freshness(decoded, 5_001, held).reason],
    ['stale', 'expired']
  )
  const ahead = await signBeacon(
    { ...content, docs: { fleet: ['ab'.repeat(32)], site: ['cd'.repeat(32)] } },
    f.admins[0]!,
    f.ed
  )
  const behind = freshness(ahead, 2_000, held)
  assert.equal(behind.reason, 'behind')
  assert.deepEqual(behind.lacking, ['fleet', 'site'])
  const newerTrust = await signBeacon({ ...content, trustVersion: 2 }, f.admins[0]!, f.ed)
  assert.equal(freshness(newerTrust, 2_000, held).reason, 'behind')

  // The newest wins: a later issue, or the same issue and larger bytes, whatever the order seen.
  const later = await signBeacon({ ...content, issued: 2_000 }, f.admins[0]!, f.ed)
  assert.equal(newerBeacon(decoded, later), true)
  assert.equal(newerBeacon(later, decoded), false)
  assert.equal(await r.acceptBeacon(later.bytes), true)
  assert.equal(await r.acceptBeacon(b.bytes), false, 'an older beacon changes nothing')
  assert.equal(r.beacon?.issued, 2_000)
})

test('the time floor never goes back: a clock set back cannot make an expired beacon valid', async () => {
  const store = new MemoryStore()
  const far = Date.now() + 3_600_000
  await store.putMeta('time-floor', new ByteWriter().varint(far).finish())
  const t = await TimeFloor.open(store)
  assert.ok(t.now() >= far, 'the persisted floor is ahead of the clock: it wins')
  const before = t.now()
  t.raise(far - 10_000)
  assert.ok(t.now() >= before, 'an older signed time does not lower it')
  t.raise(far + 60_000)
  assert.ok(t.now() >= far + 60_000, "a beacon's signed issue time raises it")
  await t.persist()
  assert.ok((await TimeFloor.open(store)).now() >= far + 60_000, 'persisted')
})
