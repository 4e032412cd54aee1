/**
 * The daemon end to end, as a user drives it: `rhizome init`, three daemons as child processes
 * (loopback, mDNS off), enrolment, `rhizome apply` of a fleet file with a workload and a file,
 * a version change rolled to every node, a hand-edited file put back, a node cut off (through a
 * TCP proxy the test controls), changed behind its back, restarted while still cut off, healed.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stringify } from 'yaml'
import { DaemonFleet, type RunningDaemon } from './fixtures/daemon-fleet.ts'
import { freePort, getJson, rhizome, stopAll, WEB_SERVER, webOn } from './fixtures/node-harness.ts'
import { startProxy, type TcpProxy } from './fixtures/tcp-proxy.ts'
import { waitFor } from './fixtures/wait.ts'

const PASS = 'correct horse battery'
const NAMES = ['n1', 'n2', 'n3'] as const

describe('daemon end to end (three processes)', { timeout: 180_000 }, () => {
  let dir: string
  let env: Record<string, string>
  let daemonFleet: DaemonFleet
  const ids: Record<string, { key: string; peerId: string }> = {}
  const ports: Record<string, number> = {}
  const daemons: Record<string, RunningDaemon> = {}
  let proxy: TcpProxy
  let meshPort: number

  const motd = (n: string): string => join(dir, `root-${n}`, 'etc/rhizome/motd')
  const served = async (n: string): Promise<{ node: string; version: string } | undefined> => {
    try {
      return await getJson(`http://127.0.0.1:${ports[n]}/`)
    } catch {
      return undefined
    }
  }
  const servesVersion = (n: string, v: string, ms = 20_000): Promise<true> =>
    waitFor(`${n} to serve version ${v}`, async () => (await served(n))?.version === v, ms, 200)
  const fileIs = (n: string, content: string, ms = 20_000): Promise<true> =>
    waitFor(
      `${motd(n)} to hold ${JSON.stringify(content)}`,
      async () => (await readFile(motd(n), 'utf8').catch(() => '')) === content,
      ms,
      200
    )

  function fleet(version: string, text: string, message = 'hello'): string {
    const nodes: Record<string, unknown> = {}
    for (const n of NAMES) {
      nodes[n] = { workloads: { web: webOn(ports[n]!, 500) } }
    }
    return stringify({
      fleet: {
        defaults: {
          files: { '/etc/rhizome/motd': { content: text, mode: '0644' } },
          workloads: {
            web: { command: [process.execPath, WEB_SERVER], version, env: { MESSAGE: message } }
          }
        },
        nodes
      }
    })
  }

  async function apply(yamlText: string, via = 'n1'): Promise<void> {
    const r = await daemonFleet.apply(yamlText, daemons[via]!)
    assert.equal(r.code, 0, `apply failed: ${r.stderr}`)
  }

  async function start(n: string): Promise<RunningDaemon> {
    daemons[n] = await daemonFleet.start(n)
    return daemons[n]
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rhizome-e2e-'))
    env = { RHIZOME_PASSPHRASE: PASS }
    daemonFleet = await DaemonFleet.init(dir, 'e2e', NAMES, env)
    Object.assign(ids, daemonFleet.ids)
    for (const n of NAMES) ports[n] = await freePort()
    meshPort = await freePort()
    proxy = await startProxy(meshPort)
    const n1Addr = (port: number): string => `/ip4/127.0.0.1/tcp/${port}/p2p/${ids.n1!.peerId}`
    const base = { driftCheckMs: 300 }
    await daemonFleet.writeConfig('n1', { ...base, listen: [`/ip4/127.0.0.1/tcp/${meshPort}`] })
    await daemonFleet.writeConfig('n2', {
      ...base,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: [n1Addr(meshPort)]
    })
    // n3 listens nowhere and reaches n1 only through the proxy, so cutting the proxy cuts n3 off
    // (it makes no connections beyond its bootstrap peer: it would route around the cut).
    await daemonFleet.writeConfig('n3', {
      ...base,
      listen: [],
      bootstrap: [n1Addr(proxy.port)],
      extraPeers: 0
    })
  })

  after(async () => {
    await stopAll()
    await proxy?.close()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('enrols three daemons and they converge on the devices document', async () => {
    const d1 = await start('n1')
    assert.equal(d1.events.find(e => e.event === 'daemon.identity')?.peerId, ids.n1!.peerId)
    const dash = await rhizome(['dashboard', '--daemon', d1.url])
    assert.equal(dash.code, 0, dash.stderr)
    const token = /#token=([0-9a-f]+)/.exec(dash.stdout)?.[1]
    assert.ok(
      token !== undefined,
      `rhizome dashboard prints a URL with a viewer token: ${dash.stdout}`
    )
    await d1.waitFor(e => e.event === 'dashboard.issued', 5000, 'the issue logged')
    assert.ok(!d1.stderr.some(l => l.includes(token)), 'the token is never logged in full')
    await daemonFleet.enrol(d1)
    await Promise.all([start('n2'), start('n3')])
    const want = (await getJson<{ heads: string[] }>(`${d1.url}/api/docs/devices`)).heads
    for (const n of ['n2', 'n3']) {
      await waitFor(
        `${n} to hold the devices document`,
        async () => {
          const d = await getJson<{ heads: string[] }>(`${daemons[n]!.url}/api/docs/devices`).catch(
            () => undefined
          )
          return JSON.stringify(d?.heads) === JSON.stringify(want)
        },
        20_000,
        200
      )
    }
  })

  it('applies a workload and a file on every node', async () => {
    await apply(fleet('1', 'v1\n'))
    for (const n of NAMES) {
      await servesVersion(n, '1')
      assert.equal((await served(n))?.node, n)
      await fileIs(n, 'v1\n')
    }
    const status = await waitFor(
      'rhizome status to show three healthy, up-to-date nodes',
      async () => {
        const r = await rhizome(['status', '--json', '--daemon', daemons.n1!.url])
        const s = JSON.parse(r.stdout) as {
          nodes: Array<{
            name: string
            online: boolean
            upToDate: boolean
            status: { workloads: { web?: { state: string; healthy: boolean } } } | null
          }>
        }
        return s.nodes.length === 3 &&
          s.nodes.every(x => x.online && x.upToDate && x.status?.workloads.web?.healthy === true)
          ? s
          : undefined
      },
      20_000,
      200
    )
    assert.deepEqual(
      status.nodes.map(x => x.name),
      ['n1', 'n2', 'n3']
    )
  })

  it('restarts the workload everywhere when its version changes', async () => {
    await apply(fleet('2', 'v1\n'))
    for (const n of NAMES) await servesVersion(n, '2')
    const logs = await rhizome(['logs', 'web', '--daemon', daemons.n2!.url])
    assert.match(logs.stdout, /started web version 2/)
  })

  it("reads another node's workload output through the mesh (logs --node)", async () => {
    // Each node's web workload prints the port it listens on: n2's lines, asked of n1.
    const remote = await rhizome(['logs', 'web', '--node', 'n2', '--daemon', daemons.n1!.url])
    assert.equal(remote.code, 0, remote.stderr)
    assert.match(remote.stdout, new RegExp(`listening on 127\\.0\\.0\\.1:${ports.n2}\\b`))
    assert.doesNotMatch(remote.stdout, new RegExp(`:${ports.n1}\\b`))
    const unknown = await rhizome(['logs', 'web', '--node', 'n9', '--daemon', daemons.n1!.url])
    assert.equal(unknown.code, 1, unknown.stderr)
    assert.match(unknown.stderr, /no enrolled node is called "n9"/)
    const none = await rhizome(['logs', 'db', '--node', 'n2', '--daemon', daemons.n1!.url])
    assert.notEqual(none.code, 0)
    assert.match(none.stderr, /no workload "db" runs on node "n2"/)
  })

  it('puts back a hand-edited managed file and reports the drift', async () => {
    await writeFile(motd('n2'), 'edited by hand\n')
    await fileIs('n2', 'v1\n', 10_000)
    await waitFor(
      'n2 to report the drifted file',
      async () => {
        const s = await getJson<{
          nodes: Array<{ self: boolean; status: { files: { drifted: string[] } } | null }>
        }>(`${daemons.n2!.url}/api/status`)
        return (
          s.nodes.find(x => x.self)?.status?.files.drifted.includes('/etc/rhizome/motd') === true
        )
      },
      10_000,
      200
    )
  })

  it('a node cut off keeps its last config through a restart, then converges when healed', async () => {
    proxy.cut()
    await daemons.n3!.waitFor(e => e.event === 'peer.disconnect', 15_000, 'n3 to lose its peer')
    await apply(fleet('3', 'v3\n'))
    await servesVersion('n1', '3')
    await servesVersion('n2', '3')
    assert.equal((await served('n3'))?.version, '2', 'n3 is cut off and still runs version 2')
    // Restarted while cut off: it comes back from its own store to the same state.
    assert.equal(await daemons.n3!.stop(), 0, 'n3 stops cleanly')
    await start('n3')
    await servesVersion('n3', '2')
    assert.equal(await readFile(motd('n3'), 'utf8'), 'v1\n')
    proxy.heal()
    await servesVersion('n3', '3', 45_000)
    await fileIs('n3', 'v3\n')
  })

  it('rolls back to an earlier revision and carries the history in a bundle', async () => {
    const history = await rhizome(['history', '--doc', 'fleet', '--daemon', daemons.n1!.url])
    assert.equal(history.code, 0, history.stderr)
    assert.match(history.stdout, /\+ defaults\.workloads\.web\.version = "3"/)
    const first = /\S+\s+fleet\s+([0-9a-f]{12})/.exec(history.stdout)![1]!
    const r = await rhizome(
      [
        'rollback',
        '--to',
        first,
        '--doc',
        'fleet',
        '--key',
        join(dir, 'fleet/admin.key'),
        '--daemon',
        daemons.n1!.url
      ],
      env
    )
    assert.equal(r.code, 0, r.stderr)
    for (const n of NAMES) await servesVersion(n, '1')
    await apply(fleet('3', 'v3\n'))
    for (const n of NAMES) await servesVersion(n, '3')

    const bundle = join(dir, 'fleet.rhzb')
    assert.equal(
      (await rhizome(['bundle', 'export', '--out', bundle, '--daemon', daemons.n1!.url])).code,
      0
    )
    const imported = await rhizome([
      'bundle',
      'import',
      bundle,
      '--data',
      join(dir, 'data-offline')
    ])
    assert.equal(imported.code, 0, imported.stderr)
    assert.match(imported.stdout, /fleet: applied/)
  })

  it('rejects a broken YAML, an unknown key and a wrong passphrase, changing nothing', async () => {
    const before = await getJson<Array<{ id: string; heads: string[] }>>(
      `${daemons.n1!.url}/api/docs`
    )
    const f = join(dir, 'bad.yaml')
    const args = [
      'apply',
      '-f',
      f,
      '--key',
      join(dir, 'fleet/admin.key'),
      '--daemon',
      daemons.n1!.url
    ]

    await writeFile(f, 'fleet:\n  defaults: [unclosed\n')
    let r = await rhizome(args, env)
    assert.equal(r.code, 1)
    assert.match(r.stderr, /not valid YAML/)

    await writeFile(
      f,
      'fleet:\n  defaults:\n    workloads:\n      web: { command: [x], bogus: 1 }\n'
    )
    r = await rhizome(args, env)
    assert.equal(r.code, 1)
    assert.match(r.stderr, /unknown key "bogus"/)

    await writeFile(f, fleet('4', 'v4\n'))
    r = await rhizome(args, { RHIZOME_PASSPHRASE: 'not the passphrase' })
    assert.equal(r.code, 2)
    assert.match(r.stderr, /wrong passphrase/)

    const badCfg = join(dir, 'bad-daemon.yaml')
    await writeFile(badCfg, stringify({ dataDir: join(dir, 'data-bad'), htpp: { port: 1 } }))
    r = await rhizome(['start', '--config', badCfg])
    assert.equal(r.code, 1)
    assert.match(r.stderr, /unknown key "htpp"; valid keys are/)

    r = await rhizome(['status', '--daemon', 'http://127.0.0.1:1'])
    assert.equal(r.code, 3)
    assert.match(r.stderr, /cannot reach the daemon/)

    assert.deepEqual(await getJson(`${daemons.n1!.url}/api/docs`), before)
    assert.equal((await served('n1'))?.version, '3')
  })
})
