/**
 * What a new operator hits when something is in the way, through real daemon and CLI
 * processes: a data directory or a port already taken (a clear error and exit 1, never "this is
 * a bug", and a daemon that cannot serve its API exits), a document that does not exist (the
 * same answer from every command), arguments and fleet files refused before anything is sent,
 * damaged bundles and bundles of another fleet refused before anything is applied, a bootstrap
 * address without its peer id refused at start, `node init` twice naming the key to enrol, and error
 * messages that name only commands that exist.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, readdir, writeFile } from 'node:fs/promises'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse, stringify } from 'yaml'
import { DaemonFleet, type RunningDaemon } from './fixtures/daemon-fleet.ts'
import {
  daemonConfig,
  rhizome,
  rhizomeExits,
  startDaemon,
  stopAll,
  type CliResult
} from './fixtures/node-harness.ts'
import { program } from '../node/cli.ts'

const PASS = 'cli errors passphrase'
const ROOT = fileURLToPath(new URL('..', import.meta.url))

/** A refusal a person can act on: the exit code, and no stack trace or "this is a bug". */
function refused(r: CliResult, code: number, message: RegExp): void {
  assert.equal(r.code, code, `exit ${r.code}\n${r.stderr}`)
  assert.match(r.stderr, message)
  assert.doesNotMatch(r.stderr, /this is a bug|\n\s+at /)
}

describe('clear errors, through real processes', { timeout: 180_000 }, () => {
  let dir: string
  let env: Record<string, string>
  let daemon: RunningDaemon
  let meshPort: number
  const cfg = (): string => join(dir, 'n1.yaml')

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rhizome-cli-errors-'))
    env = { RHIZOME_PASSPHRASE: PASS }
    const f = await DaemonFleet.init(dir, 'errors', ['n1', 'n2'], env)
    for (const n of ['n1', 'n2']) await f.writeConfig(n, { listen: ['/ip4/127.0.0.1/tcp/0'] })
    daemon = await f.start('n1')
    const addr = daemon.events.find(e => e.event === 'mesh.listening')?.addresses as string[]
    meshPort = Number(/\/tcp\/(\d+)\//.exec(addr[0] as string)?.[1])
    await f.enrol(daemon, ['n1'])
    env = { ...env, RHIZOME_DAEMON: daemon.url, RHIZOME_KEY: join(dir, 'fleet/admin.key') }
  })

  after(async () => {
    await stopAll()
    await rm(dir, { recursive: true, force: true })
  })

  it('a second daemon on a data directory in use is refused, naming the running daemon', async () => {
    const r = await rhizome(['start', '--config', cfg()], {}, 30_000)
    refused(r, 1, /is in use by another process, most likely a rhizome daemon/)
    // The running daemon is untouched.
    assert.equal((await fetch(`${daemon.url}/api/health`)).ok, true)
  })

  it('a mesh port in use is refused, naming the address and the setting to change', async () => {
    const n2 = {
      ...daemonConfig(dir, 'n2', { listen: [`/ip4/127.0.0.1/tcp/${meshPort}`] })
    }
    await writeFile(join(dir, 'n2-mesh.yaml'), stringify(n2))
    const r = await rhizome(['start', '--config', join(dir, 'n2-mesh.yaml')], {}, 30_000)
    refused(r, 1, new RegExp(`/ip4/127.0.0.1/tcp/${meshPort}: the port is in use.*"listen"`))
  })

  it('an HTTP port in use is refused, and the daemon exits instead of running without its API', async () => {
    const port = Number(new URL(daemon.url).port)
    const n2 = daemonConfig(dir, 'n2', {
      listen: ['/ip4/127.0.0.1/tcp/0'],
      http: { host: '127.0.0.1', port }
    })
    await writeFile(join(dir, 'n2-http.yaml'), stringify(n2))
    // Without the fix this process runs on (mesh up, no API) until the harness's timeout kills it.
    const r = await rhizome(['start', '--config', join(dir, 'n2-http.yaml')], {}, 30_000)
    refused(r, 1, new RegExp(`http://127.0.0.1:${port} for the HTTP API: the port is in use`))
  })

  it('a bootstrap address without the peer id is refused at start, naming the entry', async () => {
    // What a new operator writes first. It used to fail in the mesh's start: stack trace,
    // "this is a bug", exit 4.
    const n2 = daemonConfig(dir, 'n2', { bootstrap: [`/ip4/127.0.0.1/tcp/${meshPort}`] })
    await writeFile(join(dir, 'n2-bootstrap.yaml'), stringify(n2))
    const r = await rhizome(['start', '--config', join(dir, 'n2-bootstrap.yaml')], {}, 30_000)
    refused(r, 1, /bootstrap\[0\]: "\/ip4\/127\.0\.0\.1\/tcp\/\d+" has no \/p2p\/<PeerId>/)
  })

  it('node init on a directory that holds an identity prints the key to enrol', async () => {
    const data = join(dir, 'data-twice')
    const first = await rhizomeExits(['node', 'init', '--data', data], {})
    const key = /public key\s+([0-9a-f]{64})/.exec(first.stdout)?.[1]
    assert.ok(key !== undefined, first.stdout)
    const again = await rhizome(['node', 'init', '--data', data], {})
    refused(
      again,
      1,
      new RegExp(`already holds a device identity \\(public key ${key}, .*enrol that key`)
    )
  })

  it('a document that does not exist gets the same answer from get, history and rollback', async () => {
    const results = await Promise.all([
      rhizome(['get', '--doc', 'nope'], env),
      rhizome(['history', '--doc', 'nope'], env),
      rhizome(['rollback', '--doc', 'nope', '--to', 'abcdef'], env)
    ])
    for (const r of results) refused(r, 1, /holds no document "nope"; it holds "devices"/)
    assert.equal(new Set(results.map(r => r.stderr)).size, 1, 'one message')
    refused(await rhizome(['logs', 'nope'], env), 1, /no workload "nope"/)
  })

  it('get on a fleet with no desired config says how to write one', async () => {
    const get = await rhizome(['get'], env)
    assert.equal(get.code, 0, get.stderr)
    assert.match(get.stdout, /^# no desired config yet: .*rhizome apply -f fleet\.yaml/)
    assert.deepEqual(parse(get.stdout), {}, 'still a file apply reads')
  })

  it('get --doc devices shows the document that history lists', async () => {
    const history = await rhizome(['history', '--doc', 'devices'], env)
    assert.equal(history.code, 0, history.stderr)
    assert.match(history.stdout, /devices .* enrol n1/)
    const get = await rhizome(['get', '--doc', 'devices'], env)
    assert.equal(get.code, 0, get.stderr)
    assert.match(get.stdout, /written by `rhizome enrol`/)
    assert.match(get.stdout, /name: n1/)
  })

  it('history --limit takes only a whole number from 1 to 1000', async () => {
    for (const bad of ['0', 'abc', '1001', '2.5']) {
      refused(await rhizome(['history', '--limit', bad], env), 1, /from 1 to 1000/)
    }
    assert.equal((await rhizome(['history', '--limit', '1'], env)).code, 0)
  })

  it('apply refuses a file mode that is not one, before signing anything', async () => {
    const before = await rhizome(['history', '--limit', '1000'], env)
    const file = join(dir, 'bad-mode.yaml')
    await writeFile(
      file,
      stringify({
        fleet: { defaults: { files: { '/etc/rhizome/x': { content: 'x', mode: '999' } } } }
      })
    )
    refused(await rhizome(['apply', '-f', file], env), 1, /mode "999" is not a file mode/)
    assert.equal((await rhizome(['history', '--limit', '1000'], env)).stdout, before.stdout)
  })

  it('a damaged bundle is reported as damaged and changes nothing, even when its batches are held', async () => {
    const file = join(dir, 'site.bundle')
    assert.equal((await rhizome(['bundle', 'export', '--out', file], env)).code, 0)
    const whole = await readFile(file)
    const again = await rhizome(['bundle', 'import', file], env)
    assert.equal(again.code, 0, again.stderr)
    assert.match(again.stdout, /devices: duplicate/)
    // Flips in the trust statement, in the batch, and in the checksum itself.
    for (const at of [12, Math.floor(whole.length / 2), whole.length - 3]) {
      const damaged = Buffer.from(whole)
      damaged[at] = (damaged[at] as number) ^ 0x10
      await writeFile(join(dir, 'damaged.bundle'), damaged)
      const r = await rhizome(['bundle', 'import', join(dir, 'damaged.bundle')], env)
      refused(r, 2, /the bundle is damaged .*nothing was imported/)
      assert.equal(r.stdout, '', `nothing applied (flip at byte ${at})`)
    }
  })

  it('a bundle of another fleet is refused with advice, through a daemon or into a data directory', async () => {
    const other = join(dir, 'other')
    assert.equal((await rhizome(['init', '--dir', other, '--fleet', 'other'], env)).code, 0)
    await writeFile(
      join(dir, 'other.yaml'),
      stringify({
        ...daemonConfig(dir, 'other', { listen: ['/ip4/127.0.0.1/tcp/0'] }),
        trustFile: join(other, 'trust.json')
      })
    )
    const o = await startDaemon(join(dir, 'other.yaml'))
    const file = join(dir, 'other.bundle')
    const exp = await rhizome(['bundle', 'export', '--out', file, '--daemon', o.url], env)
    assert.equal(exp.code, 0, exp.stderr)
    await o.stop()
    refused(
      await rhizome(['bundle', 'import', file], env),
      2,
      /is a bundle of fleet "other" .* but the daemon at .* holds fleet "errors" .*nothing was imported. Carry it to a device of fleet "other"/
    )
    // Into the stopped data directory of a fleet-"errors" node (n2 never started: give it a store).
    const mine = join(dir, 'site.bundle')
    assert.equal(
      (await rhizome(['bundle', 'import', mine, '--data', join(dir, 'data-n2')])).code,
      0
    )
    refused(
      await rhizome(['bundle', 'import', file, '--data', join(dir, 'data-n2')]),
      2,
      /holds fleet "errors" .*nothing was imported/
    )
  })
})

it('every `rhizome …` command that a message or page names exists', async () => {
  const commands = new Set<string>()
  const walk = (c: ReturnType<typeof program>, prefix: string): void => {
    for (const sub of c.commands) {
      commands.add(`${prefix}${sub.name()}`)
      walk(sub, `${prefix}${sub.name()} `)
    }
  }
  walk(program(), '')
  const named = new Map<string, string>()
  const scan = async (d: string): Promise<void> => {
    for (const e of await readdir(join(ROOT, d), { withFileTypes: true })) {
      const rel = join(d, e.name)
      if (e.isDirectory()) await scan(rel)
      else if (/\.(ts|tsx)$/.test(e.name)) {
        for (const m of (await readFile(join(ROOT, rel), 'utf8')).matchAll(
          /`rhizome ([a-z][a-z-]*)/g
        )) {
          named.set(m[1] as string, rel)
        }
      }
    }
  }
  for (const d of ['crdt', 'mesh', 'node', 'web/src']) await scan(d)
  assert.ok(named.size >= 5, `found ${named.size} commands named`)
  for (const [cmd, where] of named) {
    assert.ok(commands.has(cmd), `${where} names \`rhizome ${cmd}\`, which does not exist`)
  }
})
