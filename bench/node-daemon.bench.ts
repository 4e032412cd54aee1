/**
 * Daemon figures (docs/benchmarks.md, "## daemon"), the ways a daemon can be started side by
 * side in one run, each with a 10,000-change history in its LevelStore:
 *  - `node node/cli.ts start` (Node strips the types at every start),
 *  - `node dist/cli.js start` (the compiled build, `npm run build:cli`, what the installed
 *    `rhizome` command runs),
 *  - the compiled build with `--max-semi-space-size=4` (a smaller young generation), with
 *    `MALLOC_ARENA_MAX=2` (fewer glibc malloc arenas for Node's threads), and as the systemd
 *    unit and the Containerfile run it (both, and `NODE_COMPILE_CACHE`, filled by its first start);
 * and for each: the time (and CPU time) from spawn to GET /api/health answering, the idle resident memory
 * 5 s later split into anonymous memory (the daemon's own) and file pages (mostly the node
 * binary's code, shared with every other Node process and dropped by the kernel under
 * pressure), where the anonymous memory goes (V8's heap, buffers, and the rest: Automerge's
 * WASM heap, LevelDB, libp2p's native parts), and the garbage-collection pauses while it takes
 * 100 signed changes one after another over HTTP (from `--trace-gc`).
 * Before that, the memory floor: a daemon with an empty store, source and compiled.
 * Then `npm start`'s demo: time until the demo fleet reports it is up.
 * Targets: serving ≤500 ms, idle RSS ≤100 MB, demo ≤60 s. Prints figures; asserts nothing.
 *
 * BENCH_DAEMON_ROUNDS (default 3) starts of each kind, interleaved; medians are printed.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
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
import { encodeBatch } from '../crdt/signed-change.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const CLI_TS = join(ROOT, 'node/cli.ts')
const CLI_JS = join(ROOT, 'dist/cli.js')
const CHANGES = 10_000
const LOAD_CHANGES = 100
const ROUNDS = Number(process.env.BENCH_DAEMON_ROUNDS ?? 3)
/** The systemd unit's and the Containerfile's compile cache (filled by the first start). */
const COMPILE_CACHE = join(tmpdir(), `rhizome-bench-compile-cache-${process.pid}`)

interface Kind {
  name: string
  args: string[]
  env?: Record<string, string>
}
const KINDS: Kind[] = [
  { name: 'type stripping (node/cli.ts)', args: [CLI_TS] },
  { name: 'compiled (dist/cli.js)', args: [CLI_JS] },
  { name: 'compiled, --max-semi-space-size=4', args: ['--max-semi-space-size=4', CLI_JS] },
  { name: 'compiled, MALLOC_ARENA_MAX=2', args: [CLI_JS], env: { MALLOC_ARENA_MAX: '2' } },
  {
    name: "as deployed (the unit's environment)",
    args: [CLI_JS],
    env: {
      MALLOC_ARENA_MAX: '2',
      NODE_OPTIONS: '--max-semi-space-size=4',
      NODE_COMPILE_CACHE: COMPILE_CACHE
    }
  }
]

interface Memory {
  rss: number
  anon: number
  file: number
  heap: number
  external: number
}

interface Gc {
  count: number
  totalMs: number
  maxMs: number
  p99Ms: number
}

interface Run {
  serveMs: number
  /** CPU time (all threads) the process used until it served: less sensitive to a busy machine. */
  serveCpuMs: number
  idle: Memory
  busy: Memory
  loadMs: number
  gc: Gc
}

const MB = 1024 * 1024

async function procMemory(pid: number): Promise<Pick<Memory, 'rss' | 'anon' | 'file'>> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8')
  const kb = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(s)?.[1]) / 1024
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') + kb('RssShmem') }
}

async function cpuMs(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]?.split(' ') ?? []
  // utime and stime, in clock ticks of 10 ms (fields 14 and 15 of the whole line).
  return (Number(fields[11]) + Number(fields[12])) * 10
}

async function memory(pid: number, url: string): Promise<Memory> {
  const m = await procMemory(pid)
  const text = await (await fetch(`${url}/metrics`)).text()
  const metric = (name: string): number =>
    Number(new RegExp(`^${name} ([\\d.e+]+)`, 'm').exec(text)?.[1] ?? NaN) / MB
  return {
    ...m,
    heap: metric('nodejs_heap_size_total_bytes'),
    external: metric('nodejs_external_memory_bytes')
  }
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

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor((s.length - 1) / 2)] as number
}

function gcStats(pauses: number[]): Gc {
  const s = [...pauses].sort((a, b) => a - b)
  return {
    count: s.length,
    totalMs: s.reduce((a, b) => a + b, 0),
    maxMs: s.at(-1) ?? 0,
    p99Ms: s[Math.min(s.length - 1, Math.floor(s.length * 0.99))] ?? 0
  }
}

const dir = await mkdtemp(join(tmpdir(), 'rhizome-bench-daemon-'))
try {
  // The compiled build from the current source, so the figures describe this checkout.
  const build = spawnSync(join(ROOT, 'node_modules/.bin/rolldown'), ['-c', 'rolldown.config.ts'], {
    cwd: ROOT,
    encoding: 'utf8'
  })
  if (build.status !== 0) throw new Error(`the build failed:\n${build.stderr}`)

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
  const setting = (i: number) => (d: unknown) => {
    const dd = d as { defaults?: { settings?: Record<string, number> } }
    dd.defaults ??= {}
    dd.defaults.settings ??= {}
    dd.defaults.settings[`k${i % 100}`] = i
  }
  for (let i = 0; i < CHANGES; i++) await doc.change(signer, setting(i))
  const data = join(dir, 'data')
  const store = await LevelStore.open(join(data, 'store'))
  const level = await Replica.open({ store, ed: nodeCryptoEd25519, genesis })
  await level.accept(doc.batchFor(doc.history().map(h => h.hash)))
  await store.close()
  // The load: further changes, each posted as its own signed batch. Every start gets the same
  // ones; after the first they are duplicates, which cost the daemon the same parse and verify.
  const load: Uint8Array[] = []
  for (let i = 0; i < LOAD_CHANGES; i++) {
    const b = await doc.change(signer, setting(CHANGES + i))
    if (b !== undefined) load.push(encodeBatch(b))
  }
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

  const startOnce = async (kind: Kind, withLoad: boolean, config = cfg): Promise<Run> => {
    const spawned = performance.now()
    const p = spawn(process.execPath, ['--trace-gc', ...kind.args, 'start', '--config', config], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...kind.env }
    })
    let url = ''
    p.stderr.setEncoding('utf8').on('data', (d: string) => {
      const m = /"event":"http\.listening","url":"([^"]+)"/.exec(d)
      if (m !== null) url = m[1] as string
    })
    let gcFrom = Infinity
    const pauses: number[] = []
    let partial = ''
    p.stdout.setEncoding('utf8').on('data', (d: string) => {
      const lines = (partial + d).split('\n')
      partial = lines.pop() ?? ''
      for (const l of lines) {
        const m = /MB, (?:pooled: [\d.]+ MB, )?([\d.]+) \/ [\d.]+ ms/.exec(l)
        if (m !== null && performance.now() >= gcFrom) pauses.push(Number(m[1]))
      }
    })
    await until(async () => url !== '' && (await fetch(`${url}/api/health`)).ok, 20_000)
    const serveMs = performance.now() - spawned
    const serveCpuMs = await cpuMs(p.pid as number)
    await new Promise(resolve => setTimeout(resolve, 5000))
    const idle = await memory(p.pid as number, url)
    let loadMs = 0
    if (withLoad) {
      const auth = {
        authorization: `Bearer ${(await readFile(join(data, 'api.token'), 'utf8')).trim()}`
      }
      gcFrom = performance.now()
      for (const body of load) {
        const res = await fetch(`${url}/api/batches`, {
          method: 'POST',
          headers: { 'content-type': 'application/octet-stream', ...auth },
          body: body as Uint8Array<ArrayBuffer>
        })
        await res.arrayBuffer()
        await (await fetch(`${url}/api/status`, { headers: auth })).arrayBuffer()
      }
      loadMs = performance.now() - gcFrom
      // Let the trace lines of the last collections arrive.
      await new Promise(resolve => setTimeout(resolve, 200))
      gcFrom = Infinity
    }
    const busy = await memory(p.pid as number, url)
    await stop(p)
    return { serveMs, serveCpuMs, idle, busy, loadMs, gc: gcStats(pauses) }
  }
  const [typeStripping, compiled] = KINDS as [Kind, Kind]

  // A daemon with a store of its own making (genesis only): the memory floor.
  const small = join(dir, 'small.yaml')
  await writeFile(small, (await readFile(cfg, 'utf8')).replace(data, join(dir, 'small')))
  for (const k of [typeStripping, compiled]) {
    const r = await startOnce(k, false, small)
    process.stdout.write(
      `empty store, ${k.name}: idle RSS ${r.idle.rss.toFixed(0)} MB (anon ${r.idle.anon.toFixed(0)} + file ${r.idle.file.toFixed(0)}; V8 heap ${r.idle.heap.toFixed(0)}, external ${r.idle.external.toFixed(0)})\n`
    )
  }

  const first = await startOnce(typeStripping, false)
  process.stdout.write(
    `10,000 changes, first start (no snapshot yet), type stripping: serving ${first.serveMs.toFixed(0)} ms after spawn (${first.serveCpuMs} ms CPU); idle RSS ${first.idle.rss.toFixed(0)} MB\n\n`
  )

  const runs = new Map<string, Run[]>(KINDS.map(k => [k.name, []]))
  for (let r = 0; r < ROUNDS; r++) {
    for (const k of KINDS) runs.get(k.name)?.push(await startOnce(k, true))
  }

  const f = (x: number): string => x.toFixed(0).padStart(5)
  process.stdout.write(
    `later starts (snapshot), median of ${ROUNDS} each; memory in MB; GC pauses while ${LOAD_CHANGES} changes are posted one by one\n`
  )
  process.stdout.write(
    `${'start'.padEnd(36)} serve ms (CPU)  idle RSS (anon + file) heap ext | busy RSS anon | load ms  GCs total ms  p99 ms  max ms\n`
  )
  const base = runs.get(typeStripping.name) as Run[]
  for (const k of KINDS) {
    const rs = runs.get(k.name) as Run[]
    const m = (pick: (r: Run) => number): number => median(rs.map(pick))
    process.stdout.write(
      `${k.name.padEnd(36)} ${f(m(r => r.serveMs))} (${f(m(r => r.serveCpuMs))})    ${f(m(r => r.idle.rss))} (${f(m(r => r.idle.anon))} + ${f(m(r => r.idle.file))}) ${f(m(r => r.idle.heap))} ${f(m(r => r.idle.external))} | ${f(m(r => r.busy.rss))} ${f(m(r => r.busy.anon))} | ${f(m(r => r.loadMs))} ${f(m(r => r.gc.count))} ${m(
        r => r.gc.totalMs
      )
        .toFixed(1)
        .padStart(9)} ${m(r => r.gc.p99Ms)
        .toFixed(1)
        .padStart(7)} ${m(r => r.gc.maxMs)
        .toFixed(1)
        .padStart(7)}\n`
    )
  }
  const ratio = (pick: (r: Run) => number, name: string): string =>
    (median((runs.get(name) as Run[]).map(pick)) / median(base.map(pick))).toFixed(2)
  for (const k of KINDS.slice(1)) {
    process.stdout.write(
      `${k.name} / type stripping: serve ${ratio(r => r.serveMs, k.name)}× (CPU ${ratio(r => r.serveCpuMs, k.name)}×), idle RSS ${ratio(r => r.idle.rss, k.name)}×, idle anon ${ratio(r => r.idle.anon, k.name)}×, GC total ${ratio(r => r.gc.totalMs, k.name)}×\n`
    )
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
    `\ndemo: "${/The demo fleet is up[^\n]*/.exec(outText)?.[0]}" (${upS.toFixed(1)} s from spawn)\n`
  )
  await stop(demo, 'SIGINT')
} finally {
  await rm(dir, { recursive: true, force: true })
  await rm(COMPILE_CACHE, { recursive: true, force: true })
}
