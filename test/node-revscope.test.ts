/**
 * Revoking a device out of an operator's scope, through real daemons and the real CLI: an
 * operator scoped to site=berlin that may write `devices` cannot cut off the munich device.
 * `rhizome revoke-device` refuses (exit 2, unauthorised) before signing; a mark the operator's
 * key signs anyway and posts revokes nothing: the munich device stays enrolled, online, a peer,
 * and keeps syncing. The berlin device, inside the scope, the operator does revoke; and an admin
 * revokes the munich device, its entry marked already by the mark that did not count.
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

type DevicesReply = { value: { devices: Record<string, { revoked?: boolean }> } }

describe(
  'an operator revoking a device outside its scope (two daemons)',
  { timeout: 180_000 },
  () => {
    let dir: string
    let fleet: DaemonFleet
    let n1: RunningDaemon
    let n2: RunningDaemon
    const env = { RHIZOME_PASSPHRASE: PASS, RHIZOME_DAEMON: '' }
    const file = (n: string): string => join(dir, n)
    const cli = (args: string[], code = 0) => rhizomeExits(args, env, code)
    const nodesOf = async (d: RunningDaemon): Promise<FleetNode[]> =>
      (await getJson<{ nodes: FleetNode[] }>(`${d.url}/api/status`)).nodes

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'rhizome-revscope-'))
      fleet = await DaemonFleet.init(dir, 'revscope-e2e', ['n1', 'n2'], env)
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

    it('refuses, counts no mark it signs anyway, and lets it revoke the berlin device', async () => {
      const admin = file('fleet/admin.key')
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
      const k = await cli(['keygen', '--out', file('ops.key'), '--label', 'berlin-ops'])
      const op = /public key\s+([0-9a-f]{64})/.exec(k.stdout)![1]!
      const p = file('p-operator.json')
      const grant = { key: op, label: 'berlin-ops', docs: ['devices'], selector: 'site=berlin' }
      await proposeOperator(dir, env, grant, p)
      await cli(['trust', 'publish', p])

      // The CLI refuses before signing: unauthorised (exit 2), saying who may revoke it.
      const refused = await cli(['revoke-device', 'n1', '--key', file('ops.key')], 2)
      assert.match(refused.stderr, /outside your operator key's reach \{"site":"berlin"\}/)
      assert.match(refused.stderr, /An admin key, or an operator key whose selector matches/)

      // The escape, by a client of its own: the operator's key signs the mark and posts it to n2,
      // the daemon that would then have to refuse n1, its only peer.
      const pair = await decryptKeyFile(parseKeyFile(await readFile(file('ops.key'), 'utf8')), PASS)
      const client = daemonClient(n2)
      const replica = await client.localReplica([DEVICES_DOC])
      const devices = await replica.open<{ devices: Record<string, { revoked?: boolean }> }>(
        DEVICES_DOC
      )
      const batch = await devices.change(Replica.signer(pair), d => {
        d.devices[fleet.ids.n1!.key]!.revoked = true
      })
      await client.postBatch(batch!)
      await waitFor('n1 to hold the mark', async () => {
        const held = await getJson<DevicesReply>(`${n1.url}/api/docs/devices`)
        return held.value.devices[fleet.ids.n1!.key]?.revoked === true
      })

      // n1 stays a peer of n2 and keeps syncing: an admin's file applied through n2 reaches it.
      const marker = { fleet: { defaults: { files: { '/etc/rhizome/marker': { content: 'm' } } } } }
      assert.equal((await fleet.apply(marker, n2)).code, 0)
      await waitFor('n1 to write the admin’s file, through n2', () =>
        access(file('root-n1/etc/rhizome/marker')).then(
          () => true,
          () => false
        )
      )
      await waitFor('n2 to list n1 as enrolled and online', async () => {
        const me = (await nodesOf(n2)).find(n => n.key === fleet.ids.n1!.key)
        return me?.enrolled === true && me.online
      })

      // Moving n1's name to another device would revoke n1: refused too, nothing published.
      const stranger = '7'.repeat(64)
      const args = ['enrol', stranger, '--name', 'n1', '--label', 'site=berlin', '--replace']
      const moved = await cli([...args, '--key', file('ops.key')], 2)
      assert.match(moved.stderr, /refusing to revoke n1 .*outside your operator key's reach/)

      // Inside its scope, the operator revokes: n1 drops n2 from its enrolled nodes.
      await cli(['revoke-device', 'n2', '--key', file('ops.key')])
      await waitFor('n1 to drop the revoked n2', async () => {
        const n = (await nodesOf(n1)).find(x => x.key === fleet.ids.n2!.key)
        return n === undefined || !n.enrolled
      })

      // An admin revokes n1, whose entry says revoked already (the operator's mark): it counts.
      await cli(['revoke-device', 'n1', '--key', admin])
      await waitFor('n1 to count the admin’s revocation of itself', async () => {
        const n = (await nodesOf(n1)).find(x => x.key === fleet.ids.n1!.key)
        return n === undefined || !n.enrolled
      })
    })
  }
)
