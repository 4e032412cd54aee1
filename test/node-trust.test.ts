/**
 * The trust lifecycle through the `rhizome` CLI and a real daemon (issue 11): an admin key is
 * rotated and every command keeps working (get, apply, enrol, a bundle into a wiped device);
 * statements are signed by several root holders offline and published only at their threshold;
 * a stolen key is revoked at an earlier cut and the honest change built on its theft is signed
 * again; an unsigned statement posted to the daemon halts nothing; enrolment refuses a device or
 * name already enrolled unless told to replace it; a device is revoked and unenrolled.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stringify } from 'yaml'
import { DaemonFleet, proposeOperator, type RunningDaemon } from './fixtures/daemon-fleet.ts'
import { authHeaders, getJson, rhizomeExits, stopAll } from './fixtures/node-harness.ts'
import type { TrustState } from '../node/trust-daemon.ts'

const PASS = 'correct horse battery'

describe('trust lifecycle through the CLI (one daemon)', { timeout: 180_000 }, () => {
  let dir: string
  let env: Record<string, string>
  let ids: DaemonFleet['ids']
  let daemon: RunningDaemon
  const file = (n: string): string => join(dir, n)
  const cli = (args: string[], code = 0) => rhizomeExits(args, env, code)
  const keygen = async (name: string): Promise<string> => {
    const r = await cli(['keygen', '--out', file(`${name}.key`), '--label', name])
    return /public key\s+([0-9a-f]{64})/.exec(r.stdout)![1]!
  }
  /** propose + sign with each root + publish; returns the publish result. */
  const statement = async (args: string[], roots: string[], publishCode = 0) => {
    const out = file(`p-${Math.random().toString(36).slice(2)}.json`)
    await cli(['trust', 'propose', ...args, '--out', out])
    for (const k of roots) await cli(['trust', 'sign', out, '--key', k])
    return cli(['trust', 'publish', out], publishCode)
  }
  const applyYaml = async (value: unknown, key: string, code = 0) => {
    const f = file(`f-${Math.random().toString(36).slice(2)}.yaml`)
    await writeFile(f, stringify({ fleet: value }))
    return cli(['apply', '-f', f, '--key', key], code)
  }
  const fleetDoc = () =>
    getJson<{ value: { defaults?: Record<string, unknown> } }>(`${daemon.url}/api/docs/fleet`)
  const state = () => getJson<TrustState>(`${daemon.url}/api/trust/state`)

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rhizome-trust-'))
    env = { RHIZOME_PASSPHRASE: PASS, RHIZOME_DAEMON: '' }
    const f = await DaemonFleet.init(dir, 'trust-e2e', ['n1', 'n2', 'n3'], env)
    ids = f.ids
    // The mesh on a port of its own: the default one may be another test's.
    await f.writeConfig('n1', { listen: ['/ip4/127.0.0.1/tcp/0'] })
    daemon = await f.start('n1', 30_000, env)
    env.RHIZOME_DAEMON = daemon.url
  })

  after(async () => {
    await stopAll()
    await rm(dir, { recursive: true, force: true })
  })

  it('rotates the admin key; get, apply, enrol and a bundle into a wiped device keep working', async () => {
    await cli([
      'enrol',
      ids.n1!.key,
      '--name',
      'n1',
      '--label',
      'site=lab',
      '--key',
      file('fleet/admin.key')
    ])
    await applyYaml(
      { defaults: { files: { '/etc/rhizome/motd': { content: 'v1' } } } },
      file('fleet/admin.key')
    )
    const admin2 = await keygen('admin2')
    const pub = await statement(
      ['--add-admin', `${admin2}:admin2`, '--remove', 'admin'],
      [file('fleet/root.key')]
    )
    assert.match(pub.stdout, /version 2 is in force/)
    const got = await cli(['get'])
    assert.match(got.stdout, /content: v1/, 'the rotated-out admin’s history stays valid')
    const old = await applyYaml(
      { defaults: { files: { '/etc/rhizome/motd': { content: 'old' } } } },
      file('fleet/admin.key'),
      2
    )
    assert.match(old.stderr, /was removed from the fleet's trust/)
    await applyYaml(
      { defaults: { files: { '/etc/rhizome/motd': { content: 'v2' } } } },
      file('admin2.key')
    )
    await cli([
      'enrol',
      ids.n2!.key,
      '--name',
      'n2',
      '--label',
      'site=lab',
      '--key',
      file('admin2.key')
    ])
    // A wiped device catches up from a bundle made after the rotation.
    await cli(['bundle', 'export', '--out', file('b.bundle')])
    const imp = await cli(['bundle', 'import', file('b.bundle'), '--data', join(dir, 'data-n3')])
    assert.doesNotMatch(imp.stdout, /invalid/)
    assert.match(imp.stdout, /fleet: applied/)
  })

  it('publishes a statement only once a threshold of root holders signed it, each on their own', async () => {
    const root2 = await keygen('root2')
    await statement(['--add-root', root2, '--threshold', '2'], [file('fleet/root.key')])
    const op = await keygen('berlin-ops')
    const out = file('p-operator.json')
    const grant = { key: op, label: 'berlin-ops', docs: ['site/berlin'], selector: 'site=berlin' }
    await proposeOperator(dir, env, grant, out)
    const short = await cli(['trust', 'publish', out], 1)
    assert.match(short.stderr, /1 valid root signature\(s\); version 3 requires 2/)
    await cli(['trust', 'sign', out, '--key', file('root2.key')])
    await cli(['trust', 'publish', out])
    const s = await state()
    assert.equal(s.version, 4)
    assert.deepEqual(s.latest.operators.find(o => o.name === 'berlin-ops')?.selector, {
      site: 'berlin'
    })
    const shown = await cli(['trust', 'show'])
    assert.match(shown.stdout, /berlin-ops .* docs site\/berlin {2}nodes \{"site":"berlin"\}/)
  })

  it('revokes a stolen key at an earlier cut; the honest change built on the theft is signed again', async () => {
    const admin3 = await keygen('admin3')
    const roots = [file('fleet/root.key'), file('root2.key')]
    await statement(['--add-admin', `${admin3}:admin3`], roots)
    const good = (await getJson<{ heads: string[] }>(`${daemon.url}/api/docs/fleet`)).heads
    // The thief writes with admin2; admin3, not knowing, builds on it.
    await applyYaml(
      { defaults: { files: { '/etc/rhizome/motd': { content: 'stolen' } } } },
      file('admin2.key')
    )
    await applyYaml(
      {
        defaults: {
          files: {
            '/etc/rhizome/motd': { content: 'stolen' },
            '/etc/rhizome/honest': { content: 'yes' }
          }
        }
      },
      file('admin3.key')
    )
    await statement(
      ['--revoke', 'admin2', '--cut', `fleet=${good.join(',')}`, '--reason', 'stolen'],
      roots
    )
    const files = (await fleetDoc()).value.defaults?.files as Record<string, unknown>
    assert.deepEqual(files, { '/etc/rhizome/motd': { content: 'v2' } })
    const dropped = await cli(['trust', 'invalidated'])
    assert.match(dropped.stdout, /admin2\s+cut/)
    assert.match(dropped.stdout, /admin3\s+dependency/)
    await cli(['resign', '--key', file('admin3.key')])
    const after = (await fleetDoc()).value.defaults?.files as Record<string, unknown>
    assert.deepEqual(after, {
      '/etc/rhizome/motd': { content: 'v2' },
      '/etc/rhizome/honest': { content: 'yes' }
    })
    await daemon.waitFor(e => e.event === 'trust.invalidated', 5000, 'trust.invalidated event')
  })

  it('an unsigned copy of the genesis posted to the daemon halts nothing', async () => {
    const genesis = JSON.parse(await readFile(file('fleet/trust.json'), 'utf8')) as {
      statement: Record<string, unknown>
    }
    const forged = { statement: { ...genesis.statement, threshold: 1, admins: [] }, signatures: [] }
    const res = await fetch(`${daemon.url}/api/trust`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...authHeaders(daemon.url) },
      body: JSON.stringify(forged)
    })
    assert.equal(res.status, 400)
    const s = await state()
    assert.equal(s.forked, null)
    assert.equal(s.version, 6)
  })

  it('enrolment refuses a device or name already enrolled unless --replace; revoke and unenrol', async () => {
    const admin3 = file('admin3.key')
    const again = await cli(['enrol', ids.n2!.key, '--name', 'n2b', '--key', admin3], 1)
    assert.match(again.stderr, /enrolled already as "n2"/)
    const taken = await cli(['enrol', ids.n3!.key, '--name', 'n1', '--key', admin3], 1)
    assert.match(taken.stderr, /the name "n1" belongs to device/)
    const replaced = await cli([
      'enrol',
      ids.n2!.key,
      '--name',
      'n2',
      '--label',
      'role=till',
      '--replace',
      '--key',
      admin3
    ])
    assert.match(replaced.stdout, /labels dropped from its previous entry: site/)
    type Devices = { heads: string[]; value: { devices: Record<string, { revoked?: boolean }> } }
    const beforeRevoke = await getJson<Devices>(`${daemon.url}/api/docs/devices`)
    await cli(['revoke-device', 'n2', '--reason', 'stolen', '--key', admin3])
    const devices = await getJson<Devices>(`${daemon.url}/api/docs/devices`)
    assert.equal(devices.value.devices[ids.n2!.key]?.revoked, true)
    const back = await cli(['enrol', ids.n2!.key, '--name', 'n2', '--replace', '--key', admin3], 1)
    assert.match(back.stderr, /never readmitted/)
    // A signed rollback of the devices document to before the revocation readmits nothing: the
    // entry says not revoked, but enrolment still refuses the key.
    await cli(['rollback', '--doc', 'devices', '--to', beforeRevoke.heads[0]!, '--key', admin3])
    const rolledBack = await getJson<Devices>(`${daemon.url}/api/docs/devices`)
    assert.notEqual(rolledBack.value.devices[ids.n2!.key]?.revoked, true)
    const again2 = await cli(
      ['enrol', ids.n2!.key, '--name', 'n2', '--replace', '--key', admin3],
      1
    )
    assert.match(again2.stderr, /never readmitted/)
    await cli(['unenrol', 'n1', '--key', admin3])
    const after = await getJson<{ value: { devices: Record<string, unknown> } }>(
      `${daemon.url}/api/docs/devices`
    )
    assert.equal(after.value.devices[ids.n1!.key], undefined)
  })
})
