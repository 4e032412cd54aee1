/**
 * Who may revoke a device (crdt/devices.ts `revokedDevices`): an admin's `revoked: true` always
 * revokes; an operator's only when every set of labels the device had in the change's own past
 * matched the operator's selector and no change of the operator's own in that past moved it into
 * its scope. An operator scoped to site=berlin therefore cannot cut off a munich device, by a mark
 * alone, after relabelling it, or concurrently with an admin moving it to berlin; and every
 * replica decides the same whatever order the changes reach it in.
 */
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { DEVICES_DOC, enrolledDevices, mayRevoke, revokedDevices } from '../crdt/devices.ts'
import type { SignedDocument, Signer } from '../crdt/document.ts'
import { publicKeyHex } from '../crdt/keys.ts'
import type { Replica } from '../crdt/replica.ts'
import type { SignedBatch } from '../crdt/signed-change.ts'
import {
  berlinFleet,
  scopeCase,
  deviceKey,
  tillAt,
  assertOrderFree,
  writeSite,
  type Devices
} from './fixtures/devices-history.ts'

/**
 * `by` marks device `key` revoked. Automerge writes nothing for a value that does not change, so
 * an entry already marked gets a mark of its own (as `rhizome revoke-device` does).
 */
const revoke = (devices: SignedDocument<Devices>, by: Signer, key: string) =>
  devices.change(by, d => {
    const e = d.devices[key]
    if (e === undefined) return
    if (e.revoked === true) e.revoked = false
    e.revoked = true
  })

const relabel = (devices: SignedDocument<Devices>, by: Signer, key: string, site: string) =>
  devices.change(by, d => {
    d.devices[key]!.labels.site = site
  })

async function revokedOn(r: Replica): Promise<string[]> {
  const d = await r.open<Devices>(DEVICES_DOC)
  return [...revokedDevices(r.trust, d.value)].sort()
}

describe('an operator revokes only the devices inside its scope', () => {
  test('outside its selector a mark does not revoke, inside it does, an admin’s always does', async () => {
    const { f, a, b, admin, operator, opKey, keys, devices, batches, keep } = await scopeCase(
      'revscope-unit',
      ['munich', 'berlin', 'by-admin', 'laundered', 'stranger'],
      {
        munich: 'munich m-1',
        berlin: 'berlin b-1',
        'by-admin': 'munich m-2',
        laundered: 'munich m-3'
      }
    )
    const [munich, berlin, byAdmin, laundered, stranger] = keys as [
      string,
      string,
      string,
      string,
      string
    ]
    const trustNode = publicKeyHex(f.nodes[0]!.publicKey)
    assert.equal(mayRevoke(a.trust, devices.value, opKey, munich), false)
    assert.equal(mayRevoke(a.trust, devices.value, opKey, berlin), true)
    keep(await revoke(devices, operator, munich))
    keep(await revoke(devices, operator, berlin))
    keep(await revoke(devices, admin, byAdmin))
    // Relabelled into the operator's scope by the operator itself, then revoked: no.
    keep(await relabel(devices, operator, laundered, 'berlin'))
    assert.equal(mayRevoke(a.trust, devices.value, opKey, laundered), false)
    keep(await revoke(devices, operator, laundered))
    // A trust-statement node (site=x) given an entry that says revoked: judged by its statement
    // labels. A key the fleet never knew: the mark counts (it harms nobody).
    keep(
      await devices.change(operator, d => {
        d.devices[trustNode] = { ...tillAt('berlin', 'node-0'), revoked: true }
        d.devices[stranger] = { ...tillAt('berlin', 'new'), revoked: true }
      })
    )
    const expected = [berlin, byAdmin, stranger].sort()
    assert.deepEqual(await revokedOn(a), expected)
    assert.equal(devices.value.devices[munich]?.revoked, true, 'the entry says revoked')
    const enrolled = enrolledDevices(a.trust, devices.value)
    for (const k of [munich, laundered, trustNode]) assert.ok(enrolled.has(k), 'still enrolled')
    for (const k of expected) assert.equal(enrolled.has(k), false)

    // Another replica, the changes newest first: the same verdict.
    for (const batch of [...batches].reverse()) await b.accept(batch)
    assert.deepEqual(await revokedOn(b), expected)

    // An admin revokes the munich device the operator could not: now it is.
    await revoke(devices, admin, munich)
    assert.deepEqual(await revokedOn(a), [...expected, munich].sort())
  })

  test('a device moved into scope concurrently with the mark stays; one moved out after it does not come back', async () => {
    const f = await berlinFleet('revscope-concurrent', 3, [DEVICES_DOC])
    const [a, b, c] = f.replicas as [Replica, Replica, Replica]
    const [moved, left] = ['moved', 'left'].map(deviceKey) as [string, string]
    const onA = await a.open<Devices>(DEVICES_DOC)
    const batches: SignedBatch[] = []
    batches.push(
      (await onA.change(f.signer(0, f.admins[0]!), d => {
        d.devices = {}
        d.devices[moved] = tillAt('munich', 'm')
        d.devices[left] = tillAt('berlin', 'b')
      }))!
    )
    await b.accept(batches[0]!)
    const onB = await b.open<Devices>(DEVICES_DOC)
    // On a, the admin moves `moved` to berlin and `left` to munich; on b, concurrently, the
    // operator revokes both: it saw `moved` in munich (no) and `left` in berlin (yes).
    batches.push((await relabel(onA, f.signer(0, f.admins[0]!), moved, 'berlin'))!)
    batches.push((await relabel(onA, f.signer(0, f.admins[0]!), left, 'munich'))!)
    batches.push((await revoke(onB, f.signer(1, f.operator), moved))!)
    batches.push((await revoke(onB, f.signer(1, f.operator), left))!)
    for (const batch of batches) {
      await a.accept(batch)
      await b.accept(batch)
    }
    for (const batch of [...batches].reverse()) await c.accept(batch)
    for (const r of [a, b, c]) assert.deepEqual(await revokedOn(r), [left])
    // Having seen the admin's move, the operator may revoke `moved`: it is in its scope now.
    const merged = await b.open<Devices>(DEVICES_DOC)
    await revoke(merged, f.signer(1, f.operator), moved)
    assert.deepEqual(await revokedOn(b), [left, moved].sort())
  })

  test('which devices are revoked does not depend on the order changes arrive in', async () => {
    const keys = ['d0', 'd1', 'd2'].map(deviceKey)
    await assertOrderFree({
      label: 'revscope-order',
      keys,
      whats: ['berlin', 'munich', 'delete', 'revoke', 'revoke'] as const,
      docs: [DEVICES_DOC],
      write: (doc, by, k, what) =>
        what === 'revoke' ? revoke(doc, by, k) : writeSite(doc, by, k, what),
      read: (r, devices) => revokedDevices(r.trust, devices),
      // One writer after another: the rule in plain terms. A device's last labels survive its
      // deletion; the operator's mark counts when they are berlin and it never moved the device
      // to berlin itself; an admin's always counts.
      model: ops => {
        const last = keys.map(() => 'munich')
        const present = keys.map(() => true)
        const movedIn = keys.map(() => false)
        const expected = new Set<string>()
        for (const o of ops) {
          const i = o.device
          if (o.what === 'delete') present[i] = false
          else if (o.what === 'revoke') {
            if (!present[i]) continue
            if (o.by === 'admin' || (last[i] === 'berlin' && !movedIn[i])) {
              expected.add(keys[i]!)
            }
          } else {
            if (o.by === 'operator' && o.what === 'berlin' && last[i] !== 'berlin') {
              movedIn[i] = true
            }
            last[i] = o.what
            present[i] = true
          }
        }
        return expected
      }
    })
  })
})
