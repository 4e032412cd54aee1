/**
 * What an operator reads about nodes, through real daemon processes and the real CLI:
 * `rhizome status` shows each node's config errors and the files it put back (with when, not a
 * "drifted:" that stays until a restart), and `rhizome describe` shows another node in full
 * through this node's daemon: labels, effective config, workloads, files, errors, last seen.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  DaemonFleet,
  motdAndWebOnN2,
  tcpAddressOf,
  type RunningDaemon
} from './fixtures/daemon-fleet.ts'
import { freePort, getJson, rhizome, stopAll, WEB_SERVER } from './fixtures/node-harness.ts'
import { waitFor } from './fixtures/wait.ts'
import type { FleetStatus } from '../crdt/fleet-status.ts'
import type { NodeDescription } from '../node/cli-describe.ts'

const PASS = 'correct horse battery'

describe('status and describe (two processes)', { timeout: 120_000 }, () => {
  let dir: string
  const env = { RHIZOME_PASSPHRASE: PASS }
  let ids: DaemonFleet['ids']
  let n1: RunningDaemon
  let port: number
  const motd = (): string => join(dir, 'root-n2/etc/rhizome/motd')

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rhizome-describe-'))
    const f = await DaemonFleet.init(dir, 'describe', ['n1', 'n2'], env)
    ids = f.ids
    await f.writeConfig('n1')
    n1 = await f.start('n1')
    await f.enrol(n1)
    await f.writeConfig('n2', { driftCheckMs: 200, bootstrap: [tcpAddressOf(n1)] })
    await f.start('n2')
    port = await freePort()
    const web = {
      command: [process.execPath, WEB_SERVER],
      version: '7',
      env: { PORT: String(port) }
    }
    const r = await f.apply(motdAndWebOnN2(web), n1)
    assert.equal(r.code, 0, r.stderr)
    // n1 holds a record of n2 that shows the workload running and the error.
    await waitFor(
      "n1 to hold n2's record of the applied config",
      async () => {
        const s = await getJson<FleetStatus>(`${n1.url}/api/status`)
        const b = s.nodes.find(n => n.name === 'n2')?.status
        return b?.workloads.web?.state === 'running' && b.errors.length > 0
      },
      30_000,
      200
    )
  })

  after(async () => {
    await stopAll()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it("status shows a node's config errors, not only with --json", async () => {
    const r = await rhizome(['status', '--daemon', n1.url])
    assert.equal(r.code, 0, r.stderr)
    const lines = r.stdout.split('\n')
    const at = lines.findIndex(l => l.startsWith('n2 '))
    assert.ok(at >= 0, r.stdout)
    const under = lines.slice(at + 1).filter(l => l.startsWith(' '))
    assert.ok(
      under.some(l => /error: .*\/etc\/elsewhere\/x/.test(l)),
      `n2's error under its line:\n${r.stdout}`
    )
    const n1At = lines.findIndex(l => l.startsWith('n1 '))
    assert.doesNotMatch(lines[n1At + 1] ?? '', /error:/, 'n1 has no errors')
  })

  it('status shows a file put back with when, from the node that put it back', async () => {
    await writeFile(motd(), 'edited by hand\n')
    await waitFor(
      'n2 to put the file back',
      async () => (await readFile(motd(), 'utf8')) === 'hello\n'
    )
    const r = await waitFor(
      "n1's status to show n2 put the file back",
      async () => {
        const s = await rhizome(['status', '--daemon', n1.url])
        return /put back at \d\d:\d\d:\d\d: \/etc\/rhizome\/motd/.test(s.stdout) ? s : undefined
      },
      15_000,
      300
    )
    const line = r.stdout.split('\n').find(l => l.startsWith('n2 ')) ?? ''
    assert.match(line, /put back at \d\d:\d\d:\d\d: \/etc\/rhizome\/motd/, r.stdout)
    assert.doesNotMatch(r.stdout, /drifted:/)
    const json = JSON.parse(
      (await rhizome(['status', '--json', '--daemon', n1.url])).stdout
    ) as FleetStatus
    const files = json.nodes.find(n => n.name === 'n2')?.status?.files
    const at = files?.putBackAt?.['/etc/rhizome/motd']
    assert.ok(at !== undefined && Math.abs(Date.now() - at) < 60_000, JSON.stringify(files))
  })

  it('describe shows another node in full through this daemon', async () => {
    const r = await rhizome(['describe', 'n2', '--daemon', n1.url])
    assert.equal(r.code, 0, r.stderr)
    const out = r.stdout
    assert.match(out, /^node\s+n2\b/m)
    assert.match(out, new RegExp(`^key\\s+${ids.n2!.key}$`, 'm'))
    assert.match(out, /^labels\s+.*role=edge/m)
    assert.match(out, /^seen\s+online, last record/m)
    assert.match(out, /^sync\s+up to date/m)
    assert.match(out, /^ {2}web\s+running .*version 7/m)
    assert.match(out, /^ {2}\/etc\/rhizome\/motd {2}put back at \d\d:\d\d:\d\d/m)
    assert.match(out, /^errors\n {2}.*\/etc\/elsewhere\/x/m)
    assert.match(out, /^effective config/m)
    assert.match(out, /content: "hello\\n"|content: \|\n\s+hello/)

    const json = await rhizome(['describe', ids.n2!.key.slice(0, 10), '--json', '--daemon', n1.url])
    assert.equal(json.code, 0, json.stderr)
    const d = JSON.parse(json.stdout) as NodeDescription
    assert.equal(d.name, 'n2')
    assert.equal(d.self, false)
    assert.equal(d.via, ids.n1!.peerId)
    assert.deepEqual(d.config, {
      files: {
        '/etc/rhizome/motd': { content: 'hello\n', mode: '0644' },
        '/etc/elsewhere/x': { content: 'not allowed here\n' }
      },
      workloads: {
        web: { command: [process.execPath, WEB_SERVER], version: '7', env: { PORT: String(port) } }
      }
    })
    assert.equal(d.status?.workloads.web?.state, 'running')
    assert.ok(d.status?.errors.some(e => e.includes('/etc/elsewhere/x')))
    assert.deepEqual(
      d.putBack.map(p => p.path),
      ['/etc/rhizome/motd']
    )
    const byPeer = await rhizome(['describe', ids.n2!.peerId, '--json', '--daemon', n1.url])
    assert.equal((JSON.parse(byPeer.stdout) as NodeDescription).key, ids.n2!.key)
  })

  it('describe of a node nobody knows says so and exits 1', async () => {
    const r = await rhizome(['describe', 'n9', '--daemon', n1.url])
    assert.equal(r.code, 1, r.stderr)
    assert.match(r.stderr, /no node is called "n9".*knows n1, n2/)
    assert.doesNotMatch(r.stderr, /this is a bug/)
  })
})
