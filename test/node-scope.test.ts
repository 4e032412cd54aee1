/**
 * Node scope against relabelling, through real daemons and the real CLI (issue 11): an operator
 * scoped to site=berlin that may write `devices` relabels a munich device to berlin; its file
 * reaches the berlin device but never the relabelled one, whose labels stay munich (the relabelling
 * does not count), and `rhizome describe` says why; `rhizome enrol` refuses to make that move in
 * the first place.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { access, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stringify } from 'yaml'
import { DEVICES_DOC } from '../crdt/devices.ts'
import { decryptKeyFile, parseKeyFile } from '../crdt/keys.ts'
import { Replica } from '../crdt/replica.ts'
import {
  daemonClient,
  daemonConfig,
  getJson,
  initFleet,
  rhizomeExits,
  startDaemon,
  stopAll,
  type NodeIdentity,
  type RunningDaemon
} from './fixtures/node-harness.ts'
import { proposeOperator, tcpAddressOf } from './fixtures/daemon-fleet.ts'
import { waitFor } from './fixtures/wait.ts'
import type { NodeDescription } from '../node/cli-describe.ts'

const PASS = 'correct horse battery'

describe(
  'an operator relabelling a device into its scope (two daemons)',
  { timeout: 180_000 },
  () => {
    let dir: string
    let env: Record<string, string>
    let ids: Record<string, NodeIdentity>
    let n1: RunningDaemon
    const file = (n: string): string => join(dir, n)
    const cli = (args: string[], code = 0) => rhizomeExits(args, env, code)
    const apply = async (doc: string, value: unknown, key: string): Promise<void> => {
      const f = file(`f-${Math.random().toString(36).slice(2)}.yaml`)
      await writeFile(f, stringify({ [doc]: value }))
      await cli(['apply', '-f', f, '--key', key])
    }
    const enrol = (node: string, site: string, key: string, more: string[] = []) =>
      cli([
        'enrol',
        ids[node]!.key,
        '--name',
        node,
        '--label',
        `site=${site}`,
        '--key',
        key,
        ...more
      ])
    const exists = (path: string): Promise<boolean> =>
      access(path).then(
        () => true,
        () => false
      )

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'rhizome-scope-'))
      env = { RHIZOME_PASSPHRASE: PASS, RHIZOME_DAEMON: '' }
      ids = await initFleet(dir, 'scope-e2e', ['n1', 'n2'], env)
      await writeFile(file('n1.yaml'), stringify(daemonConfig(dir, 'n1', {})))
      n1 = await startDaemon(file('n1.yaml'), env)
      env.RHIZOME_DAEMON = n1.url
      const bootstrap = [tcpAddressOf(n1)]
      await writeFile(file('n2.yaml'), stringify(daemonConfig(dir, 'n2', { bootstrap })))
      await startDaemon(file('n2.yaml'), env)
    })

    after(async () => {
      await stopAll()
      await rm(dir, { recursive: true, force: true })
    })

    it("keeps the operator's file off the device it relabelled, and describe says why", async () => {
      const admin = file('fleet/admin.key')
      await enrol('n1', 'munich', admin)
      await enrol('n2', 'berlin', admin)
      const k = await cli(['keygen', '--out', file('ops.key'), '--label', 'berlin-ops'])
      const op = /public key\s+([0-9a-f]{64})/.exec(k.stdout)![1]!
      const p = file('p-operator.json')
      const docs = ['site/berlin', 'devices']
      const grant = { key: op, label: 'berlin-ops', docs, selector: 'site=berlin' }
      await proposeOperator(dir, env, grant, p)
      await cli(['trust', 'publish', p])

      await apply(
        'site/berlin',
        { defaults: { files: { '/etc/rhizome/op': { content: 'op' } } } },
        file('ops.key')
      )
      await waitFor('the berlin device to write the operator’s file', () =>
        exists(file('root-n2/etc/rhizome/op'))
      )
      // `rhizome enrol` refuses to move n1 into the operator's scope, and publishes nothing.
      const refused = await cli(
        [
          'enrol',
          ids.n1!.key,
          '--name',
          'n1',
          '--label',
          'site=berlin',
          '--replace',
          '--key',
          file('ops.key')
        ],
        2
      )
      assert.match(
        refused.stderr,
        /refusing to change n1 .*outside your operator key's reach \{"site":"berlin"\}/
      )
      // The escape, by a client of its own: the operator's key may write `devices`, and writes
      // site=berlin on n1, signed and posted to the daemon.
      const pair = await decryptKeyFile(parseKeyFile(await readFile(file('ops.key'), 'utf8')), PASS)
      const client = daemonClient(n1)
      const replica = await client.localReplica([DEVICES_DOC])
      const devices = await replica.open<{
        devices: Record<string, { labels: Record<string, string> }>
      }>(DEVICES_DOC)
      const batch = await devices.change(Replica.signer(pair), d => {
        d.devices[ids.n1!.key]!.labels.site = 'berlin'
      })
      await client.postBatch(batch!)
      const labels = await getJson<{ value: { devices: Record<string, { labels: unknown }> } }>(
        `${n1.url}/api/docs/devices`
      )
      assert.deepEqual(labels.value.devices[ids.n1!.key]?.labels, { site: 'berlin' })
      // A later admin change, then n1's pass that applied it: it ran with the relabelling held.
      await apply(
        'fleet',
        { defaults: { files: { '/etc/rhizome/marker': { content: 'm' } } } },
        admin
      )
      await waitFor('n1 to apply the admin’s file', () =>
        exists(file('root-n1/etc/rhizome/marker'))
      )
      assert.equal(
        await exists(file('root-n1/etc/rhizome/op')),
        false,
        'n1 runs nothing of the operator'
      )
      assert.equal(await readFile(file('root-n2/etc/rhizome/op'), 'utf8'), 'op')

      const json = await cli(['describe', 'n1', '--json'])
      const d = JSON.parse(json.stdout) as NodeDescription
      assert.deepEqual(d.labels, { site: 'munich' }, 'the operator’s relabelling does not count')
      assert.deepEqual(d.outOfReach, ['site/berlin'])
      assert.deepEqual(Object.keys(d.config.files as object), ['/etc/rhizome/marker'])
      const text = await cli(['describe', 'n1'])
      assert.match(
        text.stdout,
        /scope +not reached by site\/berlin: an operator who wrote them moved/
      )
    })
  }
)
