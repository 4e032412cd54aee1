/**
 * An operator writing a device entry outside its scope, through real daemons and the real CLI:
 * an operator scoped to site=berlin that may write `devices` cannot relabel, rename or unenrol
 * the munich till. `rhizome enrol --replace` and `rhizome unenrol` refuse (exit 2, unauthorised)
 * before signing; the same writes signed by the operator's key anyway and posted count for
 * nothing: the till keeps its name, its labels and the workload the munich group gives it, and
 * stays enrolled and a peer.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { access } from 'node:fs/promises'
import type { FleetNode } from '../crdt/fleet-status.ts'
import { getJson, type RunningDaemon } from './fixtures/node-harness.ts'
import { ScopeDaemons } from './fixtures/scope-daemons.ts'
import { waitFor } from './fixtures/wait.ts'

const PASS = 'correct horse battery'

type Entry = { name: string; labels: Record<string, string> }
type DevicesReply = { value: { devices: Record<string, Entry | undefined> } }

describe(
  'an operator writing a device entry outside its scope (two daemons)',
  { timeout: 180_000 },
  () => {
    let s: ScopeDaemons
    const nodeOn = async (d: RunningDaemon, key: string): Promise<FleetNode | undefined> =>
      (await getJson<{ nodes: FleetNode[] }>(`${d.url}/api/status`)).nodes.find(n => n.key === key)
    const tillState = async (): Promise<string | undefined> => {
      const me = await nodeOn(s.n1, s.fleet.ids.n1!.key)
      const workloads = me?.status?.workloads as Record<string, { state?: string }> | undefined
      return workloads?.till?.state
    }

    before(async () => {
      s = await ScopeDaemons.start('writescope-e2e', PASS)
    })

    after(() => s?.stop())

    it('refuses, and the till keeps its entry and its workload whatever the operator signs', async () => {
      const n1Key = s.fleet.ids.n1!.key
      await s.enrolWithOperator()
      // The munich group runs the till on every munich device.
      const till = { command: [process.execPath, '-e', 'setInterval(() => {}, 60_000)'] }
      const munich = { selector: { site: 'munich' }, config: { workloads: { till } } }
      assert.equal((await s.fleet.apply({ fleet: { groups: { munich } } }, s.n1)).code, 0)
      await waitFor('the till to run on n1', async () => (await tillState()) === 'running')

      // The CLI refuses before signing: unauthorised (exit 2), naming the device and the reach.
      const ops = ['--key', s.file('ops.key')]
      const relabel = [
        'enrol',
        n1Key,
        '--name',
        'n1',
        '--label',
        'site=hamburg',
        '--replace',
        ...ops
      ]
      const refused = await s.cli(relabel, 2)
      assert.match(
        refused.stderr,
        /refusing to change n1 \(.*\): n1 has labels \{"site":"munich"\}/
      )
      assert.match(refused.stderr, /outside your operator key's reach \{"site":"berlin"\}/)
      assert.match(refused.stderr, /An admin key, or an operator key whose selector matches/)
      const unenrol = await s.cli(['unenrol', 'n1', ...ops], 2)
      assert.match(unenrol.stderr, /refusing to unenrol n1 .*outside your operator key's reach/)

      // The escape, by a client of its own: the operator's key relabels the till to hamburg and
      // renames it, then deletes its entry, posted to n2, which relays them to n1.
      const { client, devices, operator } = await s.operatorDevices<{
        devices: Record<string, Entry>
      }>()
      const relabelled = await devices.change(operator, d => {
        d.devices[n1Key]!.labels.site = 'hamburg'
        d.devices[n1Key]!.name = 'stolen'
      })
      await client.postBatch(relabelled!)
      await waitFor('n1 to hold the relabelling', async () => {
        const held = await getJson<DevicesReply>(`${s.n1.url}/api/docs/devices`)
        return held.value.devices[n1Key]?.labels.site === 'hamburg'
      })
      // n1 reconciles after it: an admin's file, applied now, is written after the change is held.
      const marker = {
        fleet: { groups: { munich }, defaults: { files: { '/etc/rhizome/m1': { content: 'm' } } } }
      }
      assert.equal((await s.fleet.apply(marker, s.n2)).code, 0)
      const exists = (path: string) => () =>
        access(path).then(
          () => true,
          () => false
        )
      await waitFor('n1 to write the admin’s first file', exists(s.file('root-n1/etc/rhizome/m1')))
      assert.equal(await tillState(), 'running', 'the till still runs')
      const me = await nodeOn(s.n1, n1Key)
      assert.equal(me?.name, 'n1')
      assert.deepEqual(me?.labels, { site: 'munich' })

      const deleted = await devices.change(operator, d => {
        delete d.devices[n1Key]
      })
      await client.postBatch(deleted!)
      await waitFor('n1 to hold the deletion', async () => {
        const held = await getJson<DevicesReply>(`${s.n1.url}/api/docs/devices`)
        return held.value.devices[n1Key] === undefined
      })
      const marker2 = {
        fleet: { groups: { munich }, defaults: { files: { '/etc/rhizome/m2': { content: 'm' } } } }
      }
      assert.equal((await s.fleet.apply(marker2, s.n2)).code, 0)
      await waitFor(
        'n1 to write the admin’s second file, through n2',
        exists(s.file('root-n1/etc/rhizome/m2'))
      )
      assert.equal(await tillState(), 'running', 'the till still runs')
      await waitFor('n2 to list n1 as enrolled and online', async () => {
        const n = await nodeOn(s.n2, n1Key)
        return n?.enrolled === true && n.online && n.labels.site === 'munich'
      })
    })
  }
)
