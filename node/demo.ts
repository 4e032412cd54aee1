/**
 * `npm start`: a local demonstration fleet. Makes a fresh fleet in .rhizome-demo/ (reset on
 * every run), starts three daemons on loopback as child processes, enrols them, applies a
 * sample fleet.yaml (a small HTTP service as a workload and a config file) and prints how to
 * look at it. Ctrl-C stops everything (the children by pid).
 *
 * Several demos may run at once: each claims its own directory (.rhizome-demo, then
 * .rhizome-demo-2, … while one is in use, by a pid file), and the daemons take ports the
 * system assigns (port 0), read back from their logs, so two demos never race for a port.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream, rmSync } from 'node:fs'
import { link, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { userInfo } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'
import { isAlive, outputOf, stopChildren } from './child-processes.ts'

/** Demos that may run from one directory at once, each in its own .rhizome-demo[-N]. */
const MAX_DEMOS = 9
let ROOT = ''
// The command as installed: the compiled build (`npm start` builds it first), else the source.
const CLI = fileURLToPath(new URL('../bin/rhizome.cjs', import.meta.url))
const SERVICE = fileURLToPath(new URL('./demo/hello-service.mjs', import.meta.url))
const PASSPHRASE = 'rhizome-demo-only'
const NAMES = ['berlin-1', 'berlin-2', 'lisbon-1']
const t0 = Date.now()
const children = new Set<ChildProcess>()
const out = (s = ''): void => {
  process.stdout.write(s + '\n')
}

/**
 * A port for a workload's HTTP service: one the system picks. (The daemons bind port 0
 * themselves; the service must be told its port, so it is asked of the system here.)
 */
async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>(resolve => s.listen(0, '127.0.0.1', () => resolve()))
  const p = (s.address() as AddressInfo).port
  await new Promise<void>(resolve => s.close(() => resolve()))
  return p
}

/**
 * Claim .rhizome-demo (or -2, -3, … if another demo holds it) by a pid file beside it. The pid
 * file appears whole (written aside, then hard-linked into place, which fails if it exists): a
 * demo started at the same moment never reads it empty and takes it for a stale one.
 */
async function claimDirectory(): Promise<string> {
  for (let i = 1; i <= MAX_DEMOS; i++) {
    const dir = resolve(i === 1 ? '.rhizome-demo' : `.rhizome-demo-${i}`)
    const lock = `${dir}.pid`
    if (!(await takeLock(lock))) continue
    process.once('exit', () => rmSync(lock, { force: true }))
    return dir
  }
  throw new Error(`${MAX_DEMOS} demos are running from this directory already; stop one first`)
}

async function takeLock(lock: string): Promise<boolean> {
  const mine = `${lock}.${process.pid}`
  await writeFile(mine, String(process.pid))
  try {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await link(mine, lock)
        return true
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      }
      const holder = await readFile(lock, 'utf8').catch(() => '')
      const pid = Number(holder)
      if (holder === '' || (Number.isInteger(pid) && pid > 0 && isAlive(pid))) return false
      // Left by a demo that did not stop cleanly: remove it if it still names the dead one.
      if ((await readFile(lock, 'utf8').catch(() => '')) === holder) await rm(lock, { force: true })
    }
    return false
  } finally {
    await rm(mine, { force: true })
  }
}

/** The API token file of the daemon the demo talks to (the first), once it is known. */
let tokenFile: string | undefined

async function cli(args: string[]): Promise<string> {
  const p = spawn(process.execPath, [CLI, ...args], {
    env: {
      ...process.env,
      RHIZOME_PASSPHRASE: PASSPHRASE,
      ...(tokenFile === undefined ? {} : { RHIZOME_TOKEN_FILE: tokenFile })
    },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const { code, stdout, stderr } = await outputOf(p)
  if (code === 0) return stdout
  const what = `rhizome ${args.slice(0, 2).join(' ')}`
  throw new Error(`${what} failed (${code}): ${stderr.trim()}`)
}

interface Started {
  name: string
  url: string
  /** The daemon's TCP mesh address, with its PeerId (what other daemons bootstrap from). */
  mesh: string
  proc: ChildProcess
}

function startDaemon(name: string, config: string, log: string): Promise<Started> {
  return new Promise((resolve, reject) => {
    // Own process group: a terminal's Ctrl-C reaches only the demo, which then stops each daemon once, by pid.
    const proc = spawn(process.execPath, [CLI, 'start', '--config', config], {
      stdio: ['ignore', 'ignore', 'pipe'],
      detached: true
    })
    children.add(proc)
    const file = createWriteStream(log)
    let partial = ''
    let mesh = ''
    const timer = setTimeout(
      () => reject(new Error(`${name} did not start within 30 s; see ${log}`)),
      30_000
    )
    proc.stderr.setEncoding('utf8').on('data', (d: string) => {
      file.write(d)
      const lines = (partial + d).split('\n')
      partial = lines.pop() ?? ''
      for (const l of lines) {
        let e: Record<string, unknown>
        try {
          e = JSON.parse(l) as Record<string, unknown>
        } catch {
          continue
        }
        if (e.event === 'mesh.listening' && Array.isArray(e.addresses)) {
          mesh = (e.addresses as string[]).find(a => !a.includes('/ws/')) ?? ''
        }
        if (e.event === 'daemon.ready') {
          clearTimeout(timer)
          resolve({ name, url: String(e.http), mesh, proc })
        }
      }
    })
    proc.once('exit', code => {
      children.delete(proc)
      clearTimeout(timer)
      reject(new Error(`${name} exited (${code}) while starting; see ${log}`))
    })
  })
}

async function waitFor(what: string, ms: number, fn: () => Promise<boolean>): Promise<boolean> {
  const end = Date.now() + ms
  for (let i = 0; Date.now() < end && i < 1000; i++) {
    try {
      if (await fn()) return true
    } catch {}
    await new Promise(resolve => setTimeout(resolve, 250))
  }
  out(`  (still waiting for ${what}; continuing)`)
  return false
}

let stopping = false
async function stopAll(code: number): Promise<never> {
  if (stopping) process.exit(code)
  stopping = true
  out('\nstopping the demo fleet…')
  await stopChildren(children)
  out('stopped.')
  process.exit(code)
}

async function main(): Promise<void> {
  process.on('SIGINT', () => {
    void stopAll(0)
  })
  process.on('SIGTERM', () => {
    void stopAll(0)
  })
  ROOT = await claimDirectory()
  await rm(ROOT, { recursive: true, force: true })
  await mkdir(ROOT, { recursive: true })
  out(`Rhizome demo: a fresh fleet in ${ROOT}`)
  await cli(['init', '--dir', join(ROOT, 'fleet'), '--fleet', 'demo'])
  const nodes = await Promise.all(
    NAMES.map(async name => {
      const data = join(ROOT, name)
      const info = await cli(['node', 'init', '--data', data])
      return {
        name,
        key: /public key\s+([0-9a-f]{64})/.exec(info)?.[1] as string,
        config: join(ROOT, `${name}.yaml`),
        data,
        service: await freePort()
      }
    })
  )
  const writeConfig = (n: (typeof nodes)[number], bootstrap: string[]): Promise<void> =>
    writeFile(
      n.config,
      stringify({
        name: n.name,
        labels: { site: n.name.split('-')[0] },
        dataDir: n.data,
        trustFile: join(ROOT, 'fleet/trust.json'),
        listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws'],
        bootstrap,
        mdns: false,
        http: { host: '127.0.0.1', port: 0 },
        filesRoot: join(ROOT, n.name, 'root'),
        allowedRoots: ['/etc/rhizome'],
        reconcileIntervalMs: 10_000,
        driftCheckMs: 1000,
        statusIntervalMs: 3000,
        // Run as root, a daemon starts workloads as the dedicated rhizome-workload user, which a
        // demo machine does not have; the demo's own service may run as root here. Not as root,
        // workloads can run only as the daemon's own user, which the config must then name.
        workloadUser: process.getuid?.() === 0 ? 'root' : userInfo().username
      })
    )
  // The first daemon starts alone and every device is enrolled through it before the others
  // start, so their first dial is admitted (an unenrolled device is refused and retries later).
  const start = (n: (typeof nodes)[number]): Promise<Started> =>
    startDaemon(n.name, n.config, join(n.data, 'daemon.log'))
  const [head, ...rest] = nodes as [(typeof nodes)[number], ...typeof nodes]
  await writeConfig(head, [])
  const first = await start(head)
  tokenFile = join(head.data, 'api.token')
  await Promise.all(
    nodes.map(n =>
      cli([
        'enrol',
        n.key,
        '--name',
        n.name,
        '--label',
        `site=${n.name.split('-')[0]}`,
        '--key',
        join(ROOT, 'fleet/admin.key'),
        '--daemon',
        first.url
      ])
    )
  )
  await Promise.all(rest.map(n => writeConfig(n, [first.mesh])))
  const daemons = [first, ...(await Promise.all(rest.map(start)))]
  const nodesCfg: Record<string, unknown> = {}
  for (const n of nodes) {
    nodesCfg[n.name] = {
      workloads: {
        hello: {
          env: { PORT: String(n.service) },
          health: { http: `http://127.0.0.1:${n.service}/`, intervalMs: 2000 }
        }
      }
    }
  }
  const fleetYaml = join(ROOT, 'fleet.yaml')
  await writeFile(
    fleetYaml,
    stringify({
      fleet: {
        defaults: {
          files: {
            '/etc/rhizome/demo.conf': {
              content: 'greeting = "Hello"\nlog_level = info\n',
              mode: '0644'
            }
          },
          workloads: {
            hello: {
              command: [process.execPath, SERVICE],
              version: '1',
              env: { GREETING: 'Hello' }
            }
          }
        },
        groups: {
          lisbon: {
            selector: { site: 'lisbon' },
            config: { workloads: { hello: { env: { GREETING: 'Olá' } } } }
          }
        },
        nodes: nodesCfg
      }
    })
  )
  await cli([
    'apply',
    '-f',
    fleetYaml,
    '--key',
    join(ROOT, 'fleet/admin.key'),
    '--daemon',
    first.url
  ])
  await waitFor('the hello services', 30_000, async () => {
    for (const n of nodes) {
      const res = await fetch(`http://127.0.0.1:${n.service}/`, {
        signal: AbortSignal.timeout(1000)
      })
      if (!res.ok) return false
    }
    return true
  })
  out(
    `\nThe demo fleet is up in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${daemons.length} daemons, meshed over libp2p.\n`
  )
  for (const [i, d] of daemons.entries()) {
    const n = nodes[i] as (typeof nodes)[number]
    out(
      `  ${d.name.padEnd(9)} API ${d.url}   service http://127.0.0.1:${n.service}/   files under ${join(n.data, 'root')}`
    )
  }
  out(
    '\nDashboard (one-time viewer token; build it first with the web/ instructions if it is not built):'
  )
  out(`  ${(await cli(['dashboard', '--daemon', first.url])).split('\n')[0]}`)
  out('\nTry (in another terminal, in this directory):')
  out(
    `  export RHIZOME_DAEMON=${first.url} RHIZOME_TOKEN_FILE=${tokenFile} RHIZOME_KEY=${join(ROOT, 'fleet/admin.key')} RHIZOME_PASSPHRASE=${PASSPHRASE}`
  )
  out('  npm run rhizome -- status')
  out(`  # edit ${fleetYaml} (e.g. version: "2" or the greeting), then:`)
  out(`  npm run rhizome -- apply -f ${fleetYaml}`)
  out('  npm run rhizome -- history --doc fleet')
  out('  npm run rhizome -- dashboard        # another dashboard URL (each token opens one page)')
  out(`\nLogs: ${ROOT}/<node>/daemon.log. Ctrl-C stops everything.`)
  for (const d of daemons) {
    d.proc.once('exit', code => {
      if (!stopping) {
        out(`${d.name} exited (${code}); stopping the demo`)
        void stopAll(1)
      }
    })
  }
}

main().catch(err => {
  process.stderr.write(`demo failed: ${(err as Error).message}\n`)
  void stopAll(1)
})
