/**
 * The command as an operator gets it: `npm pack` of this checkout (which builds it), installed
 * with `npm install -g` into a temporary prefix, and run from a directory outside the
 * repository with only that prefix and Node on the PATH: init, node init, start a daemon,
 * enrol, apply, status. And the deployment files: the systemd unit passes
 * `systemd-analyze verify` (where systemd-analyze exists).
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'
import { EventLog } from './fixtures/event-log.ts'
import { waitFor } from './fixtures/wait.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const PASSPHRASE = 'install-test-passphrase'

function commandExists(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0
}

describe(
  'the packed command, installed in a temporary prefix and run outside the repository',
  {
    timeout: 240_000
  },
  () => {
    let dir = ''
    let prefix = ''
    let work = ''
    let env: Record<string, string> = {}
    const daemons: Array<ReturnType<typeof spawn>> = []

    const run = (args: string[], more: Record<string, string> = {}): SpawnSyncReturns<string> =>
      spawnSync('rhizome', args, { cwd: work, env: { ...env, ...more }, encoding: 'utf8' })

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), 'rhizome-install-'))
      prefix = join(dir, 'prefix')
      work = join(dir, 'site')
      await mkdir(work)
      // No npm_* variables from an `npm test` around us: the install must stand on its own.
      const clean = Object.fromEntries(
        Object.entries(process.env).filter(
          (e): e is [string, string] => !e[0].startsWith('npm_') && e[1] !== undefined
        )
      )
      const pack = spawnSync('npm', ['pack', '--pack-destination', dir], {
        cwd: ROOT,
        env: clean,
        encoding: 'utf8'
      })
      assert.equal(pack.status, 0, pack.stderr)
      const tarball = readdirSync(dir).find(f => f.endsWith('.tgz'))
      assert.ok(tarball !== undefined, 'npm pack wrote a tarball')
      const install = spawnSync(
        'npm',
        [
          'install',
          '--global',
          '--prefix',
          prefix,
          join(dir, tarball),
          '--prefer-offline',
          '--no-audit',
          '--no-fund',
          '--allow-scripts=classic-level'
        ],
        { cwd: dir, env: clean, encoding: 'utf8' }
      )
      assert.equal(install.status, 0, install.stderr)
      // Only the installed command and this Node: nothing from the repository is reachable.
      env = {
        ...clean,
        PATH: [join(prefix, 'bin'), dirname(process.execPath), '/usr/bin', '/bin'].join(':'),
        RHIZOME_PASSPHRASE: PASSPHRASE
      }
    })

    after(async () => {
      for (const d of daemons) if (d.exitCode === null) d.kill('SIGKILL')
      if (dir !== '') await rm(dir, { recursive: true, force: true })
    })

    it('ships the compiled build, not the source, and only the dependencies it cannot bundle', () => {
      const pkg = join(prefix, 'lib/node_modules/rhizome')
      assert.ok(existsSync(join(pkg, 'dist/cli.js')))
      assert.ok(!existsSync(join(pkg, 'node/cli.ts')), 'no TypeScript source in the package')
      const deps = readdirSync(join(pkg, 'node_modules')).filter(d => !d.startsWith('.'))
      assert.ok(
        !deps.includes('libp2p') && !deps.includes('@libp2p'),
        `installed: ${deps.join(', ')}`
      )
      assert.ok(
        deps.includes('@automerge') && deps.includes('classic-level'),
        `installed: ${deps.join(', ')}`
      )
    })

    it('runs init, node init, start, enrol, apply and status with paths relative to where it is run', async () => {
      const version = run(['--version'])
      assert.equal(version.status, 0, version.stderr)
      const pkgVersion = (
        JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
          version: string
        }
      ).version
      assert.equal(version.stdout.split(' ')[0], pkgVersion)

      const init = run(['init', '--dir', 'fleet', '--fleet', 'installed'])
      assert.equal(init.status, 0, init.stderr)
      assert.ok(existsSync(join(work, 'fleet/trust.json')))
      const node = run(['node', 'init', '--data', 'data'])
      assert.equal(node.status, 0, node.stderr)
      const key = /public key\s+([0-9a-f]{64})/.exec(node.stdout)?.[1] as string
      assert.ok(existsSync(join(work, 'data/identity.key')))

      await writeFile(
        join(work, 'rhizome.yaml'),
        stringify({
          name: 'till-1',
          dataDir: 'data',
          trustFile: 'fleet/trust.json',
          listen: ['/ip4/127.0.0.1/tcp/0'],
          mdns: false,
          http: { host: '127.0.0.1', port: 0 },
          filesRoot: 'root',
          allowedRoots: ['/srv/app'],
          driftCheckMs: 500,
          statusIntervalMs: 500
        })
      )
      const daemon = spawn('rhizome', ['start', '--config', 'rhizome.yaml'], {
        cwd: work,
        env,
        stdio: ['ignore', 'ignore', 'pipe']
      })
      daemons.push(daemon)
      const log = new EventLog(daemon.stderr, daemon, 'installed daemon')
      const ready = await log.waitFor(e => e.event === 'daemon.ready', 30_000, 'daemon.ready')
      const cmdline = await readFile(`/proc/${daemon.pid}/cmdline`, 'utf8')
      assert.ok(cmdline.includes(join(prefix, 'bin/rhizome')), `the daemon runs ${cmdline}`)
      const daemonUrl = ready.http as string
      const more = {
        RHIZOME_DAEMON: daemonUrl,
        RHIZOME_KEY: 'fleet/admin.key',
        RHIZOME_TOKEN_FILE: 'data/api.token'
      }

      const enrol = run(['enrol', key, '--name', 'till-1', '--label', 'site=lab'], more)
      assert.equal(enrol.status, 0, enrol.stderr)
      await writeFile(
        join(work, 'fleet.yaml'),
        stringify({ fleet: { defaults: { files: { '/srv/app/motd': { content: 'hello\n' } } } } })
      )
      const apply = run(['apply', '-f', 'fleet.yaml'], more)
      assert.equal(apply.status, 0, apply.stderr)
      await waitFor('the managed file', async () => {
        return (await readFile(join(work, 'root/srv/app/motd'), 'utf8')) === 'hello\n'
      })
      const status = await waitFor('status to show the node up to date', () => {
        const r = run(['status'], more)
        return /till-1.*up to date/.test(r.stdout) ? r : undefined
      })
      assert.equal(status.status, 0, status.stderr)
      assert.match(status.stdout, /fleet installed/)
      assert.match(status.stdout, /till-1 .* online .* up to date/)

      daemon.kill('SIGTERM')
      await log.waitFor(e => e.event === 'daemon.stopped', 20_000, 'daemon.stopped')
    })

    it('the systemd unit passes systemd-analyze verify and keeps its exposure low', async t => {
      if (!commandExists('systemd-analyze')) {
        t.skip('systemd-analyze is not installed here')
        return
      }
      // verify insists that ExecStart exists: point it at the command just installed.
      const unit = join(dir, 'rhizome.service')
      const text = await readFile(join(ROOT, 'deploy/rhizome.service'), 'utf8')
      assert.match(text, /^ExecStart=rhizome /m)
      await writeFile(
        unit,
        text.replace(/^ExecStart=rhizome /m, `ExecStart=${join(prefix, 'bin/rhizome')} `)
      )
      const verify = spawnSync('systemd-analyze', ['verify', unit], { encoding: 'utf8' })
      assert.equal(verify.status, 0, verify.stderr)
      assert.equal(verify.stderr.trim(), '', 'no warnings')
      const security = spawnSync('systemd-analyze', ['security', '--offline=yes', unit], {
        encoding: 'utf8'
      })
      const level = /Overall exposure level for rhizome\.service: ([\d.]+)/.exec(security.stdout)
      if (level === null) {
        t.diagnostic(`this systemd-analyze cannot rate a unit file offline: ${security.stderr}`)
        return
      }
      assert.ok(Number(level[1]) <= 2, `exposure ${level[1]}`)
    })
  }
)
