/**
 * Device revocation is final (crdt/devices.ts `revokedDevices`): a key whose entry any held
 * change of the `devices` document marked revoked stays revoked, whatever later signed changes
 * write — `revoked: false`, the entry deleted, the key enrolled again — on every replica, in
 * whatever order the changes arrived. A device that was never revoked can be unenrolled and
 * enrolled again. Only valid changes count: a revocation by a key roots later cut is dropped.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { toHex } from '../crdt/bytes.ts'
import { DEVICES_DOC, enrolledDevices, revokedDevices } from '../crdt/devices.ts'
import { publicKeyHex } from '../crdt/keys.ts'
import type { SignedBatch } from '../crdt/signed-change.ts'
import { nextStatement } from '../crdt/trust.ts'
import { makeFleet, testKey } from './fixtures/fleet.ts'
import { waitFor } from './fixtures/wait.ts'

type Entry = { name: string; labels: Record<string, string>; revoked?: boolean }
type Devices = { devices: Record<string, Entry> }

test('a revoked device stays revoked whatever later changes say, on every replica in any order', async () => {
  const fleet = await makeFleet({ replicas: 2, nodes: 1, label: 'devices-final' })
  const [a, b] = fleet.replicas as [(typeof fleet.replicas)[0], (typeof fleet.replicas)[0]]
  const admin = fleet.signer(0, fleet.admins[0]!)
  const doc = await a.open<Devices>(DEVICES_DOC)
  const [flagged, readded, trustNode, honest] = [
    toHex(testKey('devices-final/flagged').publicKey),
    toHex(testKey('devices-final/readded').publicKey),
    toHex(fleet.nodes[0]!.publicKey),
    toHex(testKey('devices-final/honest').publicKey)
  ]
  const batches: SignedBatch[] = []
  const change = async (fn: (d: Devices) => void): Promise<void> => {
    batches.push((await doc.change(admin, fn))!)
  }
  const entry = (name: string): Entry => ({ name, labels: { site: 'x' }, revoked: false })
  await change(d => {
    d.devices[flagged] = entry('flagged')
    d.devices[readded] = entry('readded')
    d.devices[honest] = entry('honest')
  })
  await change(d => {
    d.devices[flagged]!.revoked = true
    d.devices[readded]!.revoked = true
    // A device the trust statement enrolls, revoked through the devices document.
    d.devices[trustNode] = { name: 'node-0', labels: {}, revoked: true }
  })
  const revoked = [flagged, readded, trustNode].sort()
  assert.deepEqual([...revokedDevices(a.trust, doc.value)].sort(), revoked)

  // Signed changes that would readmit each of them, and an honest unenrol and re-enrol.
  await change(d => {
    d.devices[flagged]!.revoked = false
  })
  await change(d => {
    delete d.devices[readded]
    delete d.devices[trustNode]
    delete d.devices[honest]
  })
  await change(d => {
    d.devices[readded] = entry('readded')
    d.devices[honest] = entry('honest')
  })
  assert.equal(doc.value.devices[flagged]?.revoked, false, 'the document says not revoked')

  // Replica b receives the batches newest first: the pending ones wait for their dependencies.
  for (const batch of [...batches].reverse()) await b.accept(batch)
  const other = await b.open<Devices>(DEVICES_DOC)
  assert.deepEqual(other.heads, doc.heads)
  for (const [r, d] of [
    [a, doc],
    [b, other]
  ] as const) {
    assert.deepEqual([...revokedDevices(r.trust, d.value)].sort(), revoked)
    const enrolled = enrolledDevices(r.trust, d.value)
    for (const k of revoked) assert.equal(enrolled.has(k), false, `${k.slice(0, 8)} stays out`)
    assert.equal(enrolled.get(honest)?.name, 'honest', 'an unrevoked device enrols again')
  }
})

test('a revocation signed by a key that roots later cut is dropped with it: the device is back', async () => {
  const fleet = await makeFleet({ replicas: 1, operatorDocs: ['devices'], label: 'devices-cut' })
  const r = fleet.replicas[0]!
  // The operator reaches every node (`selector: {}`): its revocations count until it is cut.
  const op = r.trust.latest.operators[0]!
  await r.addTrustStatement(
    await nextStatement(
      r.trust.latest,
      { operators: [{ ...op, selector: {} }] },
      [fleet.root],
      fleet.ed
    )
  )
  const doc = await r.open<Devices>(DEVICES_DOC)
  const device = toHex(testKey('devices-cut/device').publicKey)
  await doc.change(fleet.signer(0, fleet.admins[0]!), d => {
    d.devices[device] = { name: 'till', labels: {}, revoked: false }
  })
  // A leaked operator key revokes the device; roots then revoke the key with an empty cut.
  await doc.change(fleet.signer(0, fleet.operator), d => {
    d.devices[device]!.revoked = true
  })
  assert.ok(revokedDevices(r.trust, doc.value).has(device))
  const operator = publicKeyHex(fleet.operator.publicKey)
  await r.addTrustStatement(
    await nextStatement(
      r.trust.latest,
      {
        operators: [],
        revocations: [{ key: operator, reason: 'leaked', cuts: { [DEVICES_DOC]: [] } }]
      },
      [fleet.root],
      fleet.ed
    )
  )
  const after = await r.open<Devices>(DEVICES_DOC)
  await waitFor('the cut to be applied', () => !revokedDevices(r.trust, after.value).has(device))
  assert.equal(enrolledDevices(r.trust, after.value).get(device)?.name, 'till')
})
