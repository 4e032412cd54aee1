/**
 * Daemon figures (docs/benchmarks.md, "## daemon"):
 *  - time from spawning `rhizome start` to GET /api/health answering, with a 10,000-change
 *    history in its LevelStore: first start (no snapshot yet) and second start (snapshot);
 *  - idle resident memory (VmRSS) of the daemon process after it settled;
 *  - `npm start` demo: time until the demo fleet reports it is up.
 * Targets: serving ≤1 s, idle RSS ≤100 MB, demo ≤60 s. Prints figures; asserts nothing.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'
import { generateKeyPair, publicKeyHex } from '../crdt/keys.ts'
import { createGenesis } from '../crdt/trust.ts'
import { Replica } from '../crdt/replica.ts'
import { MemoryStore } from '../crdt/store.ts'
import { LevelStore } from '../crdt/level-store.ts'
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'

const CLI = fileURLToPath(new URL('../node/cli.ts', import.meta.url))
const ROOT = fileURLToPath(new URL('..', import.meta.url))
const CHANGES = 10_000

async function rssMB(pid: number): Promise<number> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(s)?.[1]) / 1024
}

async function until(fn: () => Promise<boolean>, ms: number, everyMs = 5): Promise<number> {
  const t0 = performance.now()
  for (let i = 0; performance.now() - t0 < ms && i < 1_000_000; i++) {
    if (await fn().catch(() => false)) return performance.now() - t0
    await new Promise(resolve => setTimeout(resolve, everyMs))
  }
  throw new Error(`not within ${ms} ms`)
}

function stop(p: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  return new Promise(resolve => {
    if (p.exitCode !== null || p.signalCode !== null) {
      resolve()
      return
    }
    p.once('exit', () => resolve())
    p.kill(signal)
    setTimeout(() => p.kill('SIGKILL'), 15_000).unref()
  })
}

const dir = await mkdtemp(join(tmpdir(), 'rhizome-bench-daemon-'))
try {
  // A fleet and a 10,000-change history, made in memory then stored as one verified batch.
  const root = generateKeyPair()
  const admin = generateKeyPair()
  const genesis = await createGenesis(
    {
      fleet: 'bench',
      roots: [root],
      admins: [{ key: publicKeyHex(admin.publicKey), name: 'admin' }]
    },
    nodeCryptoEd25519
  )
  await writeFile(join(dir, 'trust.json'), JSON.stringify(genesis))
  const t0 = performance.now()
  const mem = await Replica.open({ store: new MemoryStore(), ed: nodeCryptoEd25519, genesis })
  const doc = await mem.open('fleet')
  const signer = Replica.signer(admin)
  for (let i = 0; i < CHANGES; i++) {
    await doc.change(signer, d => {
      const dd = d as { defaults?: { settings?: Record<string, number> } }
      dd.defaults ??= {}
      dd.defaults.settings ??= {}
      dd.defaults.settings[`k${i % 100}`] = i
    })
  }
  const data = join(dir, 'data')
  const store = await LevelStore.open(join(data, 'store'))
  const level = await Replica.open({ store, ed: nodeCryptoEd25519, genesis })
  await level.accept(doc.batchFor(doc.history().map(h => h.hash)))
  await store.close()
  process.stdout.write(
    `setup: ${CHANGES} signed changes made and stored in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`
  )

  const cfg = join(dir, 'daemon.yaml')
  await writeFile(
    cfg,
    stringify({
      name: 'bench',
      dataDir: data,
      trustFile: join(dir, 'trust.json'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      mdns: false,
      http: { host: '127.0.0.1', port: 0 },
      filesRoot: join(dir, 'root'),
      allowedRoots: ['/etc/rhizome']
    })
  )

  for (const run of ['first start (no snapshot)', 'second start (snapshot)']) {
    const spawned = performance.now()
    const p = spawn(process.execPath, [CLI, 'start', '--config', cfg], {
      stdio: ['ignore', 'ignore', 'pipe']
    })
    let url = ''
    p.stderr.setEncoding('utf8').on('data', (d: string) => {
      const m = /"event":"http\.listening","url":"([^"]+)"/.exec(d)
      if (m !== null) url = m[1] as string
    })
    await until(async () => url !== '' && (await fetch(`${url}/api/health`)).ok, 20_000)
    const serveMs = performance.now() - spawned
    const health = (await (await fetch(`${url}/api/health`)).json()) as { mesh: boolean }
    const docs = (await (await fetch(`${url}/api/history?doc=fleet&limit=1`)).json()) as unknown[]
    await new Promise(resolve => setTimeout(resolve, 5000))
    const rss = await rssMB(p.pid as number)
    process.stdout.write(
      `${run}: GET /api/health answered ${serveMs.toFixed(0)} ms after spawn (mesh ${health.mesh ? 'on' : 'off'}, history served: ${docs.length > 0}); idle RSS after 5 s ${rss.toFixed(1)} MB\n`
    )
    await stop(p)
  }

  // The demo: `node node/demo.ts` until it reports the fleet is up, then Ctrl-C.
  const demoStart = performance.now()
  const demo = spawn(process.execPath, [join(ROOT, 'node/demo.ts')], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'inherit']
  })
  let outText = ''
  demo.stdout.setEncoding('utf8').on('data', (d: string) => {
    outText += d
  })
  await until(async () => /demo fleet is up/.test(outText), 90_000, 50)
  const upS = (performance.now() - demoStart) / 1000
  process.stdout.write(
    `demo: "${/The demo fleet is up[^\n]*/.exec(outText)?.[0]}" (${upS.toFixed(1)} s from spawn)\n`
  )
  await stop(demo, 'SIGINT')
} finally {
  await rm(dir, { recursive: true, force: true })
}
