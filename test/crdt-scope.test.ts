/**
 * Node scope read from the `devices` document's history (crdt/devices.ts `outOfReach`): an
 * operator that may write `devices` cannot move a device into its own scope by relabelling it.
 * A device whose labels a change signed by the operator moved from outside its selector to inside
 * is never reached by the documents the operator wrote, on every replica, whatever order the
 * changes came in; enrolling a new device inside the scope, relabelling inside it, and an
 * admin's relabelling still work.
 */
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { DEVICES_DOC, documentReach, enrolledDevices, outOfReach } from '../crdt/devices.ts'
import { publicKeyHex } from '../crdt/keys.ts'
import type { SignedDocument, Signer } from '../crdt/document.ts'
import { decide, viewRollout } from '../crdt/rollout-gate.ts'
import { planWaves } from '../crdt/rollout-waves.ts'
import { rolloutsOf } from '../crdt/rollout.ts'
import {
  berlinFleet,
  deviceKey,
  tillAt,
  assertOrderFree,
  workloadsOf,
  writeSite,
  type Devices,
  type Entry
} from './fixtures/devices-history.ts'

/** A `berlinFleet`'s one replica, its admin's and operator's signers there, and its `devices`. */
async function berlinDevices(label: string) {
  const f = await berlinFleet(label)
  const r = f.replicas[0]!
  const devices = await r.open<Devices>(DEVICES_DOC)
  return { f, r, admin: f.signer(0, f.admins[0]!), operator: f.signer(0, f.operator), devices }
}

const munich = (name: string): Entry => tillAt('munich', name)
const berlin = (name: string): Entry => tillAt('berlin', name)

/** `by` sets device `key`'s site label, in a change of its own. */
const relabel = (devices: SignedDocument<Devices>, by: Signer, key: string, site: string) =>
  devices.change(by, d => {
    d.devices[key]!.labels.site = site
  })

/** Device `key` deleted in a change by `deleter`, then enrolled again as `entry` in one by `enroller`. */
async function deleteAndEnrolAgain(
  devices: SignedDocument<Devices>,
  [deleter, enroller]: [Signer, Signer],
  key: string,
  entry: Entry
): Promise<void> {
  await devices.change(deleter, d => {
    delete d.devices[key]
  })
  await devices.change(enroller, d => {
    d.devices[key] = entry
  })
}

describe('operator scope and device labels', () => {
  test('an operator cannot relabel a device into its scope; enrolling and relabelling inside it works', async () => {
    const { f, r, admin, operator, devices } = await berlinDevices('scope-relabel')
    const [relabelled, readded, replaced, blessed, fresh, swapped] = [
      'relabelled',
      'readded',
      'replaced',
      'blessed',
      'fresh',
      'swapped'
    ].map(deviceKey) as [string, string, string, string, string, string]
    const trustNode = publicKeyHex(f.nodes[0]!.publicKey)
    await devices.change(admin, d => {
      d.devices = {}
      for (const [k, n] of [
        [relabelled, 'm-1'],
        [readded, 'm-2'],
        [replaced, 'm-3'],
        [blessed, 'm-4'],
        [swapped, 'm-5']
      ] as const) {
        d.devices[k] = munich(n)
      }
    })
    await (
      await r.open('site/berlin')
    ).change(operator, d => {
      d.defaults = { workloads: { miner: { command: ['/bin/miner'] } } }
    })
    const miner = { miner: { command: ['/bin/miner'] } }
    assert.equal(await workloadsOf(r, relabelled), undefined, 'munich: out of scope')

    // The escape: the operator writes site=berlin on a munich device.
    await relabel(devices, operator, relabelled, 'berlin')
    // Deleting the entry, then adding it again as berlin, in two changes.
    await deleteAndEnrolAgain(devices, [operator, operator], readded, berlin('m-2'))
    // Replacing the entry with a new one; and enrolling a trust-statement node (site=x) as berlin.
    await devices.change(operator, d => {
      d.devices[replaced] = berlin('m-3')
      d.devices[trustNode] = berlin('node-0')
    })
    // A whole new `devices` map, a copy of the old one but for one munich device made berlin.
    await devices.change(operator, d => {
      const copy = JSON.parse(JSON.stringify(d.devices)) as Devices['devices']
      copy[swapped]!.labels.site = 'berlin'
      d.devices = copy
    })
    // An admin moves a munich device to berlin: the operator reaches it.
    await relabel(devices, admin, blessed, 'berlin')
    // The operator enrols a new berlin device, then relabels it inside berlin.
    await devices.change(operator, d => {
      d.devices[fresh] = berlin('b-1')
    })
    await devices.change(operator, d => {
      d.devices[fresh]!.labels.role = 'kiosk'
    })

    const now = enrolledDevices(r.trust, devices.value)
    for (const k of [relabelled, readded, replaced, trustNode, swapped]) {
      assert.notEqual(
        now.get(k)?.labels.site,
        'berlin',
        'the operator’s relabelling does not count'
      )
      assert.equal(await workloadsOf(r, k), undefined, `${now.get(k)?.name}: not reached`)
    }
    assert.deepEqual(await workloadsOf(r, blessed), miner, 'moved by an admin: reached')
    assert.deepEqual(await workloadsOf(r, fresh), miner, 'enrolled and relabelled in berlin')
    assert.deepEqual(
      [
        ...(outOfReach(r.trust, devices.value).get(publicKeyHex(f.operator.publicKey)) ?? [])
      ].sort(),
      [relabelled, readded, replaced, trustNode, swapped].sort()
    )

    // Moving a device out of its scope is fine: it just loses it.
    await relabel(devices, operator, fresh, 'munich')
    assert.equal(await workloadsOf(r, fresh), undefined)
    // An admin's document still reaches the relabelled device.
    await (
      await r.open('fleet')
    ).change(admin, d => {
      d.defaults = { workloads: { agent: { command: ['/bin/agent'] } } }
    })
    assert.deepEqual(await workloadsOf(r, relabelled), { agent: { command: ['/bin/agent'] } })
  })

  test("an operator's rollout leaves out the device it relabelled, whatever its eligible list says", async () => {
    const { r, admin, operator, devices } = await berlinDevices('scope-rollout')
    const [moved, own] = ['moved', 'own'].map(deviceKey) as [string, string]
    await devices.change(admin, d => {
      d.devices = { [moved]: munich('m-1') }
    })
    await devices.change(operator, d => {
      d.devices[moved]!.labels.site = 'berlin'
      d.devices[own] = berlin('b-1')
    })
    const site = await r.open('site/berlin')
    await site.change(operator, d => {
      d.rollouts = {
        'web-v2': {
          change: { workloads: { web: { version: '2' } } },
          waves: [{ percent: 100 }],
          threshold: 0,
          eligible: [moved, own].sort()
        }
      }
    })
    const { rollouts } = rolloutsOf([
      {
        id: 'site/berlin',
        value: site.value,
        ...documentReach(site.writerKeys(), r.trust, devices.value)
      }
    ])
    const spec = rollouts[0]!
    const labels = enrolledDevices(r.trust, devices.value)
    const labelsOf = (k: string) => labels.get(k)?.labels
    const plan = planWaves(spec, labelsOf)
    assert.deepEqual(plan.waves, [[own]], 'the relabelled device is in no wave')
    const view = viewRollout(spec, plan, new Map())
    const run = (k: string) =>
      decide(spec, plan, view, { key: k, labels: labelsOf(k)!, localMinutes: 0 }, labelsOf).run
    assert.equal(run(own), 'new')
    assert.equal(run(moved), 'old')
  })

  test('a device an admin moved to berlin and deleted may be enrolled again by the berlin operator', async () => {
    // Found by the property below: the operator's re-enrolment names as dependencies both the
    // delete and its own earlier change, an ancestor of the delete; the labels seen through that
    // older path (munich, before the admin's move) must not count, the entry's last labels do.
    const { f, r, admin, operator, devices } = await berlinDevices('scope-last-labels')
    const [moved, other] = ['moved', 'other'].map(deviceKey) as [string, string]
    await devices.change(admin, d => {
      d.devices = { [moved]: munich('m-1'), [other]: berlin('b-1') }
    })
    await devices.change(operator, d => {
      d.devices[other]!.labels.role = 'kiosk'
    })
    await relabel(devices, admin, moved, 'berlin')
    await deleteAndEnrolAgain(devices, [admin, operator], moved, berlin('m-1'))
    const taken = outOfReach(r.trust, devices.value).get(publicKeyHex(f.operator.publicKey))
    assert.equal(taken?.has(moved) ?? false, false, 'last labelled berlin by an admin: not a move')
  })

  test('which devices an operator may not reach does not depend on the order changes arrive in', async () => {
    const keys = ['d0', 'd1', 'd2'].map(deviceKey)
    await assertOrderFree({
      label: 'scope-order',
      keys,
      whats: ['berlin', 'munich', 'delete'] as const,
      write: writeSite,
      read: (r, devices, f) => outOfReach(r.trust, devices).get(publicKeyHex(f.operator.publicKey)),
      // One writer after another: the rule in plain terms. An operator's change that leaves a
      // device on berlin when its last labels (before a delete, if it was deleted) were not.
      model: ops => {
        const last = keys.map(() => 'munich')
        const expected = new Set<string>()
        for (const o of ops) {
          if (o.what === 'delete') continue
          if (o.by === 'operator' && o.what === 'berlin' && last[o.device] !== 'berlin') {
            expected.add(keys[o.device]!)
          }
          last[o.device] = o.what
        }
        return expected
      }
    })
  })
})
