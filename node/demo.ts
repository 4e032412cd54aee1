/**
 * `npm start`: a local demonstration fleet. Makes a fresh fleet in .rhizome-demo/ (reset on
 * every run), starts three daemons on loopback as child processes, enrols them, applies a
 * sample fleet.yaml (a small HTTP service as a workload and a config file) and prints how to
 * look at it. Ctrl-C stops everything (the children by pid).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { mkdir, rm, writeFile } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'

const ROOT = resolve('.rhizome-demo')
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

async function portFrom(preferred: number): Promise<number> {
  for (let p = preferred; p < preferred + 50; p++) {
    const ok = await new Promise<boolean>(resolve => {
      const s = createServer()
      s.once('error', () => resolve(false))
      s.listen(p, '127.0.0.1', () => s.close(() => resolve(true)))
    })
    if (ok) return p
  }
  const s = createServer()
  await new Promise<void>(resolve => s.listen(0, '127.0.0.1', () => resolve()))
  const p = (s.address() as AddressInfo).port
  await new Promise<void>(resolve => s.close(() => resolve()))
  return p
}

function cli(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [CLI, ...args], {
      env: { ...process.env, RHIZOME_PASSPHRASE: PASSPHRASE },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    let stdout = ''
    let stderr = ''
    p.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d
    })
    p.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d
    })
    p.once('exit', code => {
      if (code === 0) {
        resolve(stdout)
        return
      }
      const what = `rhizome ${args.slice(0, 2).join(' ')}`
      reject(new Error(`${what} failed (${code}): ${stderr.trim()}`))
    })
  })
}

interface Started {
  name: string
  url: string
  dashboard: string
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
    let dashboard = ''
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
        if (e.event === 'dashboard') dashboard = String(e.url)
        if (e.event === 'daemon.ready') {
          clearTimeout(timer)
          resolve({ name, url: String(e.http), dashboard, proc })
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
  await Promise.all(
    [...children].map(
      p =>
        new Promise<void>(resolve => {
          if (p.exitCode !== null || p.signalCode !== null) {
            resolve()
            return
          }
          p.once('exit', () => resolve())
          p.kill('SIGTERM')
          setTimeout(() => p.kill('SIGKILL'), 10_000).unref()
        })
    )
  )
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
  await rm(ROOT, { recursive: true, force: true })
  await mkdir(ROOT, { recursive: true })
  out(`Rhizome demo: a fresh fleet in ${ROOT}`)
  await cli(['init', '--dir', join(ROOT, 'fleet'), '--fleet', 'demo'])
  const nodes: Array<{
    name: string
    key: string
    peerId: string
    config: string
    data: string
    service: number
  }> = []
  let prevMeshPort: { port: number; peerId: string } | undefined
  let nextPort = 8080
  let svcPort = 9001
  for (const name of NAMES) {
    const data = join(ROOT, name)
    const info = await cli(['node', 'init', '--data', data])
    const key = /public key\s+([0-9a-f]{64})/.exec(info)?.[1] as string
    const peerId = /peer id\s+(\S+)/.exec(info)?.[1] as string
    const http = await portFrom(nextPort)
    nextPort = http + 1
    const tcp = await portFrom(4001 + nodes.length * 2)
    const ws = await portFrom(tcp + 1)
    const service = await portFrom(svcPort)
    svcPort = service + 1
    const config = join(ROOT, `${name}.yaml`)
    await writeFile(
      config,
      stringify({
        name,
        labels: { site: name.split('-')[0] },
        dataDir: data,
        trustFile: join(ROOT, 'fleet/trust.json'),
        listen: [`/ip4/127.0.0.1/tcp/${tcp}`, `/ip4/127.0.0.1/tcp/${ws}/ws`],
        bootstrap:
          prevMeshPort === undefined
            ? []
            : [`/ip4/127.0.0.1/tcp/${prevMeshPort.port}/p2p/${prevMeshPort.peerId}`],
        mdns: false,
        http: { host: '127.0.0.1', port: http },
        filesRoot: join(ROOT, name, 'root'),
        allowedRoots: ['/etc/rhizome'],
        reconcileIntervalMs: 10_000,
        driftCheckMs: 1000,
        statusIntervalMs: 3000
      })
    )
    nodes.push({ name, key, peerId, config, data, service })
    if (prevMeshPort === undefined) prevMeshPort = { port: tcp, peerId }
  }
  // The first daemon starts alone and every device is enrolled through it before the others
  // start, so their first dial is admitted (an unenrolled device is refused and retries later).
  const start = (n: (typeof nodes)[number]): Promise<Started> =>
    startDaemon(n.name, n.config, join(n.data, 'daemon.log'))
  const first = await start(nodes[0] as (typeof nodes)[number])
  for (const n of nodes) {
    await cli([
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
  }
  const daemons = [first, ...(await Promise.all(nodes.slice(1).map(start)))]
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
  out(`  ${first.dashboard}`)
  out('\nTry (in another terminal, in this directory):')
  out(
    `  export RHIZOME_DAEMON=${first.url} RHIZOME_KEY=${join(ROOT, 'fleet/admin.key')} RHIZOME_PASSPHRASE=${PASSPHRASE}`
  )
  out('  npm run rhizome -- status')
  out(`  # edit ${fleetYaml} (e.g. version: "2" or the greeting), then:`)
  out(`  npm run rhizome -- apply -f ${fleetYaml}`)
  out('  npm run rhizome -- history --doc fleet')
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
