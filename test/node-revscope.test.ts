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
import { access } from 'node:fs/promises'
import type { FleetNode } from '../crdt/fleet-status.ts'
import { getJson, type RunningDaemon } from './fixtures/node-harness.ts'
import { ScopeDaemons } from './fixtures/scope-daemons.ts'
import { waitFor } from './fixtures/wait.ts'

const PASS = 'correct horse battery'

type DevicesReply = { value: { devices: Record<string, { revoked?: boolean }> } }

describe(
  'an operator revoking a device outside its scope (two daemons)',
  { timeout: 180_000 },
  () => {
    let s: ScopeDaemons
    const nodesOf = async (d: RunningDaemon): Promise<FleetNode[]> =>
      (await getJson<{ nodes: FleetNode[] }>(`${d.url}/api/status`)).nodes

    before(async () => {
      s = await ScopeDaemons.start('revscope-e2e', PASS)
    })

    after(() => s?.stop())

    it('refuses, counts no mark it signs anyway, and lets it revoke the berlin device', async () => {
      const admin = s.admin
      await s.enrolWithOperator()

      // The CLI refuses before signing: unauthorised (exit 2), saying who may revoke it.
      const refused = await s.cli(['revoke-device', 'n1', '--key', s.file('ops.key')], 2)
      assert.match(refused.stderr, /outside your operator key's reach \{"site":"berlin"\}/)
      assert.match(refused.stderr, /An admin key, or an operator key whose selector matches/)

      // The escape, by a client of its own: the operator's key signs the mark and posts it to n2,
      // the daemon that would then have to refuse n1, its only peer.
      const { client, devices, operator } = await s.operatorDevices<{
        devices: Record<string, { revoked?: boolean }>
      }>()
      const batch = await devices.change(operator, d => {
        d.devices[s.fleet.ids.n1!.key]!.revoked = true
      })
      await client.postBatch(batch!)
      await waitFor('n1 to hold the mark', async () => {
        const held = await getJson<DevicesReply>(`${s.n1.url}/api/docs/devices`)
        return held.value.devices[s.fleet.ids.n1!.key]?.revoked === true
      })

      // n1 stays a peer of n2 and keeps syncing: an admin's file applied through n2 reaches it.
      const marker = { fleet: { defaults: { files: { '/etc/rhizome/marker': { content: 'm' } } } } }
      assert.equal((await s.fleet.apply(marker, s.n2)).code, 0)
      await waitFor('n1 to write the admin’s file, through n2', () =>
        access(s.file('root-n1/etc/rhizome/marker')).then(
          () => true,
          () => false
        )
      )
      await waitFor('n2 to list n1 as enrolled and online', async () => {
        const me = (await nodesOf(s.n2)).find(n => n.key === s.fleet.ids.n1!.key)
        return me?.enrolled === true && me.online
      })

      // Moving n1's name to another device would revoke n1: refused too, nothing published.
      const stranger = '7'.repeat(64)
      const args = ['enrol', stranger, '--name', 'n1', '--label', 'site=berlin', '--replace']
      const moved = await s.cli([...args, '--key', s.file('ops.key')], 2)
      assert.match(moved.stderr, /refusing to revoke n1 .*outside your operator key's reach/)

      // Inside its scope, the operator revokes: n1 drops n2 from its enrolled nodes.
      await s.cli(['revoke-device', 'n2', '--key', s.file('ops.key')])
      await waitFor('n1 to drop the revoked n2', async () => {
        const n = (await nodesOf(s.n1)).find(x => x.key === s.fleet.ids.n2!.key)
        return n === undefined || !n.enrolled
      })

      // An admin revokes n1, whose entry says revoked already (the operator's mark): it counts.
      await s.cli(['revoke-device', 'n1', '--key', admin])
      await waitFor('n1 to count the admin’s revocation of itself', async () => {
        const n = (await nodesOf(s.n1)).find(x => x.key === s.fleet.ids.n1!.key)
        return n === undefined || !n.enrolled
      })
    })
  }
)
