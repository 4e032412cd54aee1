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
import { access, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DEVICES_DOC } from '../crdt/devices.ts'
import type { FleetNode } from '../crdt/fleet-status.ts'
import { decryptKeyFile, parseKeyFile } from '../crdt/keys.ts'
import { Replica } from '../crdt/replica.ts'
import {
  daemonClient,
  getJson,
  rhizomeExits,
  stopAll,
  type RunningDaemon
} from './fixtures/node-harness.ts'
import { DaemonFleet, proposeOperator, tcpAddressOf } from './fixtures/daemon-fleet.ts'
import { waitFor } from './fixtures/wait.ts'

const PASS = 'correct horse battery'

type Entry = { name: string; labels: Record<string, string> }
type DevicesReply = { value: { devices: Record<string, Entry | undefined> } }

describe(
  'an operator writing a device entry outside its scope (two daemons)',
  { timeout: 180_000 },
  () => {
    let dir: string
    let fleet: DaemonFleet
    let n1: RunningDaemon
    let n2: RunningDaemon
    const env = { RHIZOME_PASSPHRASE: PASS, RHIZOME_DAEMON: '' }
    const file = (n: string): string => join(dir, n)
    const cli = (args: string[], code = 0) => rhizomeExits(args, env, code)
    const nodeOn = async (d: RunningDaemon, key: string): Promise<FleetNode | undefined> =>
      (await getJson<{ nodes: FleetNode[] }>(`${d.url}/api/status`)).nodes.find(n => n.key === key)
    const tillState = async (): Promise<string | undefined> => {
      const me = await nodeOn(n1, fleet.ids.n1!.key)
      const workloads = me?.status?.workloads as Record<string, { state?: string }> | undefined
      return workloads?.till?.state
    }

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'rhizome-writescope-'))
      fleet = await DaemonFleet.init(dir, 'writescope-e2e', ['n1', 'n2'], env)
      await fleet.writeConfig('n1')
      n1 = await fleet.start('n1')
      env.RHIZOME_DAEMON = n1.url
      await fleet.writeConfig('n2', { bootstrap: [tcpAddressOf(n1)] })
      n2 = await fleet.start('n2')
    })

    after(async () => {
      await stopAll()
      await rm(dir, { recursive: true, force: true })
    })

    it('refuses, and the till keeps its entry and its workload whatever the operator signs', async () => {
      const admin = file('fleet/admin.key')
      const n1Key = fleet.ids.n1!.key
      for (const [node, site] of [
        ['n1', 'munich'],
        ['n2', 'berlin']
      ] as const) {
        await cli([
          'enrol',
          fleet.ids[node]!.key,
          '--name',
          node,
          '--label',
          `site=${site}`,
          '--key',
          admin
        ])
      }
      // The munich group runs the till on every munich device.
      const till = { command: [process.execPath, '-e', 'setInterval(() => {}, 60_000)'] }
      const munich = { selector: { site: 'munich' }, config: { workloads: { till } } }
      assert.equal((await fleet.apply({ fleet: { groups: { munich } } }, n1)).code, 0)
      await waitFor('the till to run on n1', async () => (await tillState()) === 'running')

      const k = await cli(['keygen', '--out', file('ops.key'), '--label', 'berlin-ops'])
      const op = /public key\s+([0-9a-f]{64})/.exec(k.stdout)![1]!
      const p = file('p-operator.json')
      await proposeOperator(
        dir,
        env,
        { key: op, label: 'berlin-ops', docs: ['devices'], selector: 'site=berlin' },
        p
      )
      await cli(['trust', 'publish', p])

      // The CLI refuses before signing: unauthorised (exit 2), naming the device and the reach.
      const ops = ['--key', file('ops.key')]
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
      const refused = await cli(relabel, 2)
      assert.match(
        refused.stderr,
        /refusing to change n1 \(.*\): n1 has labels \{"site":"munich"\}/
      )
      assert.match(refused.stderr, /outside your operator key's reach \{"site":"berlin"\}/)
      assert.match(refused.stderr, /An admin key, or an operator key whose selector matches/)
      const unenrol = await cli(['unenrol', 'n1', ...ops], 2)
      assert.match(unenrol.stderr, /refusing to unenrol n1 .*outside your operator key's reach/)

      // The escape, by a client of its own: the operator's key relabels the till to hamburg and
      // renames it, then deletes its entry, posted to n2, which relays them to n1.
      const pair = await decryptKeyFile(parseKeyFile(await readFile(file('ops.key'), 'utf8')), PASS)
      const client = daemonClient(n2)
      const replica = await client.localReplica([DEVICES_DOC])
      const devices = await replica.open<{ devices: Record<string, Entry> }>(DEVICES_DOC)
      const relabelled = await devices.change(Replica.signer(pair), d => {
        d.devices[n1Key]!.labels.site = 'hamburg'
        d.devices[n1Key]!.name = 'stolen'
      })
      await client.postBatch(relabelled!)
      await waitFor('n1 to hold the relabelling', async () => {
        const held = await getJson<DevicesReply>(`${n1.url}/api/docs/devices`)
        return held.value.devices[n1Key]?.labels.site === 'hamburg'
      })
      // n1 reconciles after it: an admin's file, applied now, is written after the change is held.
      const marker = {
        fleet: { groups: { munich }, defaults: { files: { '/etc/rhizome/m1': { content: 'm' } } } }
      }
      assert.equal((await fleet.apply(marker, n2)).code, 0)
      const exists = (path: string) => () =>
        access(path).then(
          () => true,
          () => false
        )
      await waitFor('n1 to write the admin’s first file', exists(file('root-n1/etc/rhizome/m1')))
      assert.equal(await tillState(), 'running', 'the till still runs')
      const me = await nodeOn(n1, n1Key)
      assert.equal(me?.name, 'n1')
      assert.deepEqual(me?.labels, { site: 'munich' })

      const deleted = await devices.change(Replica.signer(pair), d => {
        delete d.devices[n1Key]
      })
      await client.postBatch(deleted!)
      await waitFor('n1 to hold the deletion', async () => {
        const held = await getJson<DevicesReply>(`${n1.url}/api/docs/devices`)
        return held.value.devices[n1Key] === undefined
      })
      const marker2 = {
        fleet: { groups: { munich }, defaults: { files: { '/etc/rhizome/m2': { content: 'm' } } } }
      }
      assert.equal((await fleet.apply(marker2, n2)).code, 0)
      await waitFor(
        'n1 to write the admin’s second file, through n2',
        exists(file('root-n1/etc/rhizome/m2'))
      )
      assert.equal(await tillState(), 'running', 'the till still runs')
      await waitFor('n2 to list n1 as enrolled and online', async () => {
        const n = await nodeOn(n2, n1Key)
        return n?.enrolled === true && n.online && n.labels.site === 'munich'
      })
    })
  }
)
