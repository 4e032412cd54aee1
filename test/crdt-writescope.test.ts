/**
 * Writes to a device entry outside an operator's scope (crdt/devices.ts `deviceWrites`): an
 * operator scoped to site=berlin that may write `devices` cannot relabel, rename, delete or
 * re-add a munich device. Its change is held (it is validly signed) but counts for nothing:
 * every replica computes the munich device's enrolment, name and labels from the writes that
 * count (admins', in-scope operators'), whatever order the changes came in, so the munich
 * configuration keeps applying to it. Inside its scope, and for an admin, writes still work.
 */
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { DEVICES_DOC, enrolledDevices, mayWrite } from '../crdt/devices.ts'
import type { SignedDocument, Signer } from '../crdt/document.ts'
import type { Replica } from '../crdt/replica.ts'
import type { SignedBatch } from '../crdt/signed-change.ts'
import {
  assertOrderFree,
  berlinFleet,
  scopeCase,
  deviceKey,
  tillAt,
  workloadsOf,
  writeSite,
  type Devices
} from './fixtures/devices-history.ts'

const till = { till: { command: ['/bin/till'] } }

/** A device's entry as one line: its key, name and labels (sorted). */
const entryText = (key: string, name: string, labels: Record<string, string>): string =>
  `${key} ${name} ${JSON.stringify(Object.entries(labels).sort(([a], [b]) => a.localeCompare(b)))}`

/** Name and labels of every device the `devices` document enrols, as a replica computes them. */
async function entriesOn(r: Replica): Promise<Record<string, { name: string; labels: object }>> {
  const d = await r.open<Devices>(DEVICES_DOC)
  const out: Record<string, { name: string; labels: object }> = {}
  for (const [k, e] of enrolledDevices(r.trust, d.value)) {
    if (e.source === 'devices') out[k] = { name: e.name, labels: e.labels }
  }
  return out
}

/** An admin's munich configuration: the till workload on every site=munich device. */
async function munichConfig(r: Replica, admin: Signer): Promise<SignedBatch> {
  const batch = await (
    await r.open('site/munich')
  ).change(admin, d => {
    d.selector = { site: 'munich' }
    d.defaults = { workloads: till }
  })
  return batch!
}

describe('an operator writes only the device entries inside its scope', () => {
  test('relabel out, rename, delete and re-add of a munich device count for nothing; an admin’s do', async () => {
    const { a, b, admin, operator, opKey, keys, devices, batches, keep } = await scopeCase(
      'writescope-unit',
      ['relabelled', 'renamed', 'deleted', 'readded', 'own', 'created'],
      {
        relabelled: 'munich m-1',
        renamed: 'munich m-2',
        deleted: 'munich m-3',
        readded: 'munich m-4',
        own: 'berlin b-1'
      }
    )
    const [relabelled, renamed, deleted, readded, own, created] = keys as [
      string,
      string,
      string,
      string,
      string,
      string
    ]
    keep(await munichConfig(a, admin))
    for (const k of [relabelled, renamed, deleted, readded]) {
      assert.equal(mayWrite(a.trust, devices.value, opKey, k), false, 'the CLI would refuse')
    }
    assert.equal(mayWrite(a.trust, devices.value, opKey, own), true)
    assert.equal(mayWrite(a.trust, devices.value, opKey, created, { site: 'munich' }), false)
    assert.equal(mayWrite(a.trust, devices.value, opKey, created, { site: 'berlin' }), true)

    // The escapes: every munich config would stop applying to a till moved to hamburg, and the
    // fleet would refuse a deleted one as a peer.
    keep(
      await devices.change(operator, d => {
        d.devices[relabelled]!.labels.site = 'hamburg'
      })
    )
    keep(
      await devices.change(operator, d => {
        d.devices[renamed]!.name = 'stolen'
      })
    )
    keep(
      await devices.change(operator, d => {
        delete d.devices[deleted]
      })
    )
    keep(
      await devices.change(operator, d => {
        delete d.devices[readded]
      })
    )
    keep(
      await devices.change(operator, d => {
        d.devices[readded] = tillAt('hamburg', 'm-4')
        // A new entry outside its selector: not enrolled.
        d.devices[created] = tillAt('munich', 'c-1')
        // Inside its scope: counts.
        d.devices[own]!.labels.role = 'kiosk'
      })
    )
    const expected = {
      [relabelled]: { name: 'm-1', labels: { site: 'munich', role: 'pos' } },
      [renamed]: { name: 'm-2', labels: { site: 'munich', role: 'pos' } },
      [deleted]: { name: 'm-3', labels: { site: 'munich', role: 'pos' } },
      [readded]: { name: 'm-4', labels: { site: 'munich', role: 'pos' } },
      [own]: { name: 'b-1', labels: { site: 'berlin', role: 'kiosk' } }
    }
    assert.deepEqual(await entriesOn(a), expected)
    assert.equal(devices.value.devices[relabelled]?.labels.site, 'hamburg', 'the document says so')
    for (const k of [relabelled, renamed, deleted, readded]) {
      assert.deepEqual(await workloadsOf(a, k), till, 'the munich config still applies')
    }

    // Another replica, the changes newest first: the same.
    for (const batch of [...batches].reverse()) await b.accept(batch)
    assert.deepEqual(await entriesOn(b), expected)

    // An admin, writing on top of the operator's changes, relabels, renames and deletes: counts.
    await devices.change(admin, d => {
      d.devices[relabelled]!.labels.site = 'hamburg'
      d.devices[renamed]!.name = 'm-2b'
      delete d.devices[readded]
    })
    const now = await entriesOn(a)
    assert.deepEqual(now[relabelled]?.labels, { site: 'hamburg', role: 'pos' })
    assert.equal(now[renamed]?.name, 'm-2b')
    assert.equal(now[readded], undefined, 'unenrolled by the admin')
    assert.equal(await workloadsOf(a, relabelled), undefined, 'moved out of munich by the admin')
  })

  test('an admin’s write on top of an operator’s out-of-scope one keeps only the admin’s', async () => {
    const f = await berlinFleet('writescope-on-top', 1, [DEVICES_DOC])
    const [a] = f.replicas as [Replica]
    const admin = f.signer(0, f.admins[0]!)
    const operator = f.signer(0, f.operator)
    const key = deviceKey('on-top')
    const devices = await a.open<Devices>(DEVICES_DOC)
    await devices.change(admin, d => {
      d.devices = { [key]: tillAt('munich', 'm-1') }
    })
    // The operator replaces the entry (a new map), then an admin renames it: the admin's name
    // counts, in the operator's map; the operator's labels do not.
    await devices.change(operator, d => {
      d.devices[key] = tillAt('berlin', 'taken')
    })
    await devices.change(admin, d => {
      d.devices[key]!.name = 'renamed'
    })
    assert.deepEqual((await entriesOn(a))[key], {
      name: 'renamed',
      labels: { site: 'munich', role: 'pos' }
    })
  })

  test('an entry’s name and labels do not depend on the order changes arrive in', async () => {
    const keys = ['d0', 'd1', 'd2'].map(deviceKey)
    const rename = (doc: SignedDocument<Devices>, by: Signer, k: string) =>
      doc.change(by, d => {
        const e = d.devices[k]
        if (e !== undefined) e.name = `${e.name}'`
      })
    await assertOrderFree({
      label: 'writescope-order',
      keys,
      whats: ['berlin', 'munich', 'delete', 'rename'] as const,
      docs: [DEVICES_DOC],
      write: (doc, by, k, what) =>
        what === 'rename' ? rename(doc, by, k) : writeSite(doc, by, k, what),
      read: (r, devices) =>
        [...enrolledDevices(r.trust, devices)]
          .filter(([, e]) => e.source === 'devices')
          .map(([k, e]) => entryText(k, e.name, e.labels)),
      // One writer after another: the rule in plain terms. The operator's write counts when the
      // device's site, as the writes that counted left it (before a delete, if deleted), is
      // berlin; an admin's always counts. A write that counts sets what it writes; its writer
      // wrote on what it saw in the document (`raw`), whether that counted or not.
      model: ops => {
        type State = { present: boolean; name: string; labels: Record<string, string> }
        const initial = (k: string): State => ({
          present: true,
          name: k.slice(0, 4),
          labels: { site: 'munich', role: 'pos' }
        })
        const raw = keys.map(initial)
        const counted = keys.map(initial)
        for (const o of ops) {
          const [r, c] = [raw[o.device]!, counted[o.device]!]
          const counts = o.by === 'admin' || c.labels.site === 'berlin'
          if (o.what === 'delete') {
            // Deleting what is not there writes nothing.
            if (!r.present) continue
            r.present = false
            if (counts) c.present = false
          } else if (o.what === 'rename') {
            if (!r.present) continue
            r.name = `${r.name}'`
            if (counts && c.present) c.name = r.name
          } else if (!r.present) {
            // writeSite writes a new entry: name x, its site label only.
            Object.assign(r, { present: true, name: 'x', labels: { site: o.what } })
            if (counts) Object.assign(c, { present: true, name: 'x', labels: { site: o.what } })
          } else {
            r.labels.site = o.what
            if (counts && c.present) c.labels.site = o.what
          }
        }
        return keys.flatMap((k, i) => {
          const c = counted[i]!
          return c.present ? [entryText(k, c.name, c.labels)] : []
        })
      }
    })
  })
})
