/**
 * Artifact figures (docs/benchmarks.md, "## artifacts"), all in one run on loopback:
 *
 *  1. Baseline: the same bytes copied over one plain TCP connection into a file (another
 *     process reads the socket, writes, fsyncs at the end).
 *  2. One transfer: a daemon fetches the artifact from one other daemon (an artifact link, TLS
 *     beside the mesh connection; and with links off, over Noise and Yamux; the artifact
 *     protocol, chunk verification, per-chunk durability). Time from the config's
 *     arrival on the fetcher to `artifact.complete`; ratio of throughputs against 1. The
 *     fetcher's RSS is sampled every 100 ms: peak minus idle (just before the config arrives).
 *  3. Ten fetchers, one source: the same artifact to 10 daemons at once, each connected to the
 *     source and to two other fetchers (a ring), so they can serve each other. Time from the
 *     first config arrival to the last completion, as a ratio of the one transfer.
 *  4. Items 2 and 3 again with every daemon's upload limited (`artifactServeRate`), a thin
 *     link at each node, and an artifact small enough that the machine's CPU is not what limits
 *     ten transfers at once: here serving each other is what keeps ten close to one.
 *
 * ARTIFACT_BENCH_MIB (default 256) sizes the artifact; ARTIFACT_BENCH_FETCHERS (10) the swarm (0: the single transfer only);
 * ARTIFACT_BENCH_SERVE_MIBPS (4) the thin-link limit (0 skips item 4), ARTIFACT_BENCH_THIN_MIB
 * (64) its artifact. Prints; asserts nothing. Item 4's ten fetchers run twice, A/B: the previous
 * scheduling (RHIZOME_ARTIFACT_SCHEDULING=partial: a chunk a fetcher holds is taken from a
 * fetcher, learnt by a 1 s poll) and the deployed one (have-announcements pushed as chunks land,
 * and a saturated source super-seeding: each chunk once, "busy" for the rest); each prints how
 * many bytes the source served (ideally 1x the artifact) and how many the fetchers served each
 * other. ARTIFACT_BENCH_SCHEDULINGS (comma-separated, e.g. rarest,partial,swarm) changes the set.
 * ARTIFACT_BENCH_CPU_PROF=DIR: the one transfer's two daemons write CPU profiles (--cpu-prof) there.
 * ARTIFACT_BENCH_CHUNK_KIB: the artifact is added in chunks of that many KiB (default 1024, as
 * `rhizome artifact add`). ARTIFACT_BENCH_ONLY_DEPLOYED=1: the one transfer as deployed, with
 * artifact links off and on, not also with Node's defaults (a shorter run for A/B series).
 *
 * Every figure comes with the CPU time the sending and the receiving process used (user + system,
 * from /proc), which a loaded machine disturbs far less than the wall time: the ratio to the
 * plain copy's says how much more work a path does per byte, whatever else runs. The fetching
 * daemon's also counts answering the bench's own /metrics scrapes (every 0.5 s), so it grows with
 * the transfer's duration; the source's does not.
 */
import { spawn } from 'node:child_process'
import { createReadStream } from 'node:fs'
import { mkdtemp, open, readFile, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { DaemonFleet, type RunningDaemon } from '../test/fixtures/daemon-fleet.ts'
import { transport } from './artifacts-transport.ts'
import { freePort, rhizome, stopAll } from '../test/fixtures/node-harness.ts'

const MIB = 1024 * 1024
const SIZE = Number(process.env.ARTIFACT_BENCH_MIB ?? 256) * MIB
const FETCHERS = Number(process.env.ARTIFACT_BENCH_FETCHERS ?? 10)
const THIN = Number(process.env.ARTIFACT_BENCH_SERVE_MIBPS ?? 4) * MIB
const THIN_SIZE = Number(process.env.ARTIFACT_BENCH_THIN_MIB ?? 64) * MIB
const PASS = 'bench passphrase'
const env = { RHIZOME_PASSPHRASE: PASS }

const RECEIVER = `
import { createServer } from 'node:net'
import { openSync, writeSync, fsyncSync, closeSync } from 'node:fs'
const s = createServer(sock => {
  const fd = openSync(process.argv.at(-1), 'w')
  let n = 0
  sock.on('data', b => { writeSync(fd, b); n += b.length })
  sock.on('end', () => { fsyncSync(fd); closeSync(fd); const u = process.cpuUsage(); process.stdout.write(JSON.stringify({ bytes: n, cpuMs: (u.user + u.system) / 1000 }) + '\\n'); process.exit(0) })
})
s.listen(0, '127.0.0.1', () => process.stdout.write(JSON.stringify({ port: s.address().port }) + '\\n'))
`

/**
 * libp2p itself: one Noise + Yamux stream between two processes, the same bytes from memory.
 * `asDaemon`: with the daemons' transport settings (mesh.ts: Noise's ciphers from
 * noise-crypto.ts, the Yamux options of `meshMuxer`), else libp2p's defaults.
 */
const LIBP2P_SERVER = `
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
const [size, asDaemon] = process.argv.slice(-2).map(Number)
const { transport } = await import(new URL('bench/artifacts-transport.ts', 'file://' + process.cwd() + '/').href)
const n = await createLibp2p({ addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] }, transports: [tcp()], ...transport(asDaemon === 1) })
const chunk = new Uint8Array(1 << 20)
await n.handle('/bench/1', async stream => {
  for (let o = 0; o < size; o += chunk.length) {
    if (!stream.send(chunk)) await stream.onDrain()
    // send() answers true while an earlier send is still being processed: hold at most 8 MiB
    // queued (the daemons' Yamux refuses a write buffer over 32 MiB), as a server would.
    if (stream.writeBufferLength > 8 * chunk.length) await new Promise(r => stream.addEventListener('idle', r, { once: true }))
  }
  await stream.close()
})
process.stdout.write(n.getMultiaddrs()[0].toString() + '\\n')
`

/** Wall time, and CPU time of the sending and the receiving process, ms. */
interface Timed {
  ms: number
  sendCpuMs: number
  recvCpuMs: number
}

async function libp2pStream(asDaemon: boolean): Promise<Timed> {
  const { createLibp2p } = await import('libp2p')
  const { tcp } = await import('@libp2p/tcp')
  const { multiaddr } = await import('@multiformats/multiaddr')
  const child = spawn(
    process.execPath,
    ['--input-type=module', '-e', LIBP2P_SERVER, String(SIZE), asDaemon ? '1' : '0'],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
      cwd: new URL('..', import.meta.url).pathname
    }
  )
  const addr = await new Promise<string>(resolve =>
    child.stdout.once('data', (d: Buffer) => resolve(d.toString().trim()))
  )
  const node = await createLibp2p({
    transports: [tcp()],
    ...transport(asDaemon)
  })
  try {
    const cpu0 = await cpuOf(child.pid!)
    const own0 = process.cpuUsage()
    const t0 = performance.now()
    const stream = await node.dialProtocol(multiaddr(addr), '/bench/1')
    let n = 0
    for await (const c of stream) n += c.byteLength
    if (n !== SIZE) throw new Error(`libp2p stream moved ${n} bytes`)
    const ms = performance.now() - t0
    return { ms, sendCpuMs: (await cpuOf(child.pid!)) - cpu0, recvCpuMs: ownCpu(own0) }
  } finally {
    await node.stop()
    child.kill()
  }
}

async function plainCopy(file: string, dir: string): Promise<Timed> {
  const child = spawn(
    process.execPath,
    ['--input-type=module', '-e', RECEIVER, join(dir, 'copy.bin')],
    {
      stdio: ['ignore', 'pipe', 'inherit']
    }
  )
  const lines: string[] = []
  const next = (): Promise<Record<string, number>> =>
    new Promise(resolve => {
      const check = (): void => {
        const l = lines.shift()
        if (l !== undefined) resolve(JSON.parse(l) as Record<string, number>)
        else child.stdout.once('data', () => check())
      }
      check()
    })
  let buf = ''
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    buf += d
    const parts = buf.split('\n')
    buf = parts.pop() ?? ''
    lines.push(...parts)
  })
  const { port } = await next()
  const cpu0 = await cpuOf(child.pid!)
  const own0 = process.cpuUsage()
  const t0 = performance.now()
  const sock = connect(port!, '127.0.0.1')
  await new Promise<void>((resolve, reject) => {
    createReadStream(file, { highWaterMark: MIB })
      .pipe(sock)
      .on('finish', resolve)
      .on('error', reject)
  })
  const done = await next()
  const ms = performance.now() - t0
  if (done.bytes !== SIZE) throw new Error(`plain copy moved ${done.bytes} bytes`)
  return { ms, sendCpuMs: ownCpu(own0), recvCpuMs: done.cpuMs! - cpu0 }
}

/** A daemon's V8 heap (committed) and external memory, from its /metrics. */
async function memoryOf(url: string): Promise<{ heap: number; external: number }> {
  try {
    const text = await (await fetch(`${url}/metrics`)).text()
    const v = (name: string): number =>
      Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? 0)
    return { heap: v('nodejs_heap_size_total_bytes'), external: v('nodejs_external_memory_bytes') }
  } catch {
    return { heap: 0, external: 0 }
  }
}

/** CPU time (user + system, ms) a process has used so far, from /proc (Linux). */
async function cpuOf(pid: number): Promise<number> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // utime and stime are fields 14 and 15 (1-based) of stat, in clock ticks (100 per second).
    return (Number(f[11]) + Number(f[12])) * 10
  } catch {
    return 0
  }
}

/** CPU ms the main process used since `since` (process.cpuUsage()). */
const ownCpu = (since: NodeJS.CpuUsage): number => {
  const u = process.cpuUsage(since)
  return (u.user + u.system) / 1000
}

function rssOf(pid: number): Promise<number> {
  return readFile(`/proc/${pid}/status`, 'utf8').then(
    t => Number(/VmRSS:\s+(\d+)/.exec(t)?.[1] ?? 0) * 1024,
    () => 0
  )
}

const at = (e: Record<string, unknown>): number => Date.parse(String(e.t))

/**
 * The environment the systemd unit gives the daemon (deploy/rhizome.service `Environment=`: V8's
 * young generation bound, malloc arenas), but for its compile cache directory.
 */
async function deployedEnv(): Promise<Record<string, string>> {
  const unit = await readFile(new URL('../deploy/rhizome.service', import.meta.url), 'utf8')
  const out: Record<string, string> = {}
  for (const m of unit.matchAll(/^Environment=([A-Z_]+)=(.*)$/gm)) {
    if (m[1] !== 'NODE_COMPILE_CACHE') out[m[1]!] = m[2]!
  }
  return out
}

interface Fleet {
  daemonFleet: DaemonFleet
  dir: string
  daemons: Record<string, RunningDaemon>
  digest: string
}

/** A source and `n` fetchers (a ring among themselves, each also bootstrapping to the source). */
async function fleetOf(
  n: number,
  file: string,
  serveRate: number,
  daemonEnv: Record<string, string> = {}
): Promise<Fleet> {
  const dir = await mkdtemp(join(tmpdir(), 'rhizome-art-bench-'))
  const names = ['src', ...Array.from({ length: n }, (_, i) => `f${i + 1}`)]
  const daemonFleet = await DaemonFleet.init(dir, 'bench', names, env)
  const ids = daemonFleet.ids
  const ports: Record<string, number> = {}
  for (const x of names) ports[x] = await freePort()
  const addr = (x: string): string => `/ip4/127.0.0.1/tcp/${ports[x]}/p2p/${ids[x]!.peerId}`
  for (const [i, x] of names.entries()) {
    const ring =
      x === 'src' ? [] : [names[1 + (i % n)]!, names[1 + ((i + 1) % n)]!].filter(y => y !== x)
    await daemonFleet.writeConfig(x, {
      listen: [`/ip4/127.0.0.1/tcp/${ports[x]}`],
      bootstrap: x === 'src' ? [] : [addr('src'), ...[...new Set(ring)].map(addr)],
      allowedRoots: ['/opt/rhizome'],
      statusIntervalMs: 5000,
      artifactServeRate: serveRate
    })
  }
  const daemons: Record<string, RunningDaemon> = {}
  // The source too: super-seeding is the source's half of the scheduling.
  daemons.src = await daemonFleet.start('src', 60_000, daemonEnv)
  await daemonFleet.enrol(daemons.src)
  for (const x of names.slice(1)) daemons[x] = await daemonFleet.start(x, 60_000, daemonEnv)
  const add = await rhizome(
    [
      'artifact',
      'add',
      file,
      '--name',
      'bench',
      '--daemon',
      daemons.src.url,
      ...(process.env.ARTIFACT_BENCH_CHUNK_KIB === undefined
        ? []
        : ['--chunk-size', String(Number(process.env.ARTIFACT_BENCH_CHUNK_KIB) * 1024)])
    ],
    env
  )
  if (add.code !== 0) throw new Error(add.stderr)
  const digest = /^(sha256:[0-9a-f]{64})$/m.exec(add.stdout)![1]!
  // Every fetcher holds the devices document (connected and admitted) before the clock starts.
  for (const x of names.slice(1)) {
    await daemons[x]!.waitFor(
      e => e.event === 'revision' && e.doc === 'devices',
      60_000,
      `${x} enrolled`
    )
  }
  await new Promise(resolve => setTimeout(resolve, 3000))
  return { daemonFleet, dir, daemons, digest }
}

/** Apply the config naming the artifact; resolve with per-fetcher [config arrived, complete] times. */
async function transfer(
  f: Fleet,
  sampleRss?: string
): Promise<{
  starts: number[]
  ends: number[]
  rssIdle: number
  rssPeak: number
  heapIdle: number
  heapPeak: number
  externalIdle: number
  externalPeak: number
  /**
   * CPU ms the source and the sampled fetcher used from the config's apply to completion (the
   * fetcher's includes answering the bench's /metrics scrapes, every 0.5 s).
   */
  sendCpuMs: number
  recvCpuMs: number
}> {
  const fleet = {
    fleet: { defaults: { files: { '/opt/rhizome/bench.bin': { artifact: f.digest } } } }
  }
  const fetchers = Object.keys(f.daemons).filter(x => x !== 'src')
  let rssIdle = 0
  let rssPeak = 0
  let heapIdle = 0
  let heapPeak = 0
  let externalIdle = 0
  let externalPeak = 0
  const sampling = { on: false }
  let sampler: Promise<void> = Promise.resolve()
  if (sampleRss !== undefined) {
    const pid = f.daemons[sampleRss]!.proc.pid!
    rssIdle = await rssOf(pid)
    const idle = await memoryOf(f.daemons[sampleRss]!.url)
    heapIdle = idle.heap
    externalIdle = idle.external
    sampling.on = true
    const url = f.daemons[sampleRss]!.url
    sampler = (async () => {
      for (let k = 0; sampling.on; k++) {
        rssPeak = Math.max(rssPeak, await rssOf(pid))
        // Where it goes (every 0.5 s, the scrape costs the fetcher some CPU): V8 heap and
        // external memory (Buffers, ArrayBuffers) from its /metrics.
        if (k % 5 === 0) {
          const m = await memoryOf(url)
          heapPeak = Math.max(heapPeak, m.heap)
          externalPeak = Math.max(externalPeak, m.external)
        }
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    })()
  }
  const pids =
    sampleRss === undefined ? [] : [f.daemons.src!.proc.pid!, f.daemons[sampleRss]!.proc.pid!]
  const cpu0 = await Promise.all(pids.map(cpuOf))
  const apply = await f.daemonFleet.apply(fleet, f.daemons.src!)
  if (apply.code !== 0) throw new Error(apply.stderr)
  const starts: number[] = []
  const ends: number[] = []
  for (const x of fetchers) {
    const d = f.daemons[x]!
    const end = await d.waitFor(e => e.event === 'artifact.complete', 600_000, `${x} complete`)
    const start = d.events.find(e => e.event === 'revision' && e.doc === 'fleet')!
    starts.push(at(start))
    ends.push(at(end))
  }
  const cpu1 = await Promise.all(pids.map(cpuOf))
  const [sendCpuMs, recvCpuMs] = cpu1.map((c, i) => c - cpu0[i]!)
  sampling.on = false
  await sampler
  if (process.env.ARTIFACT_BENCH_DEBUG !== undefined) {
    for (const x of fetchers) {
      process.stdout.write(
        f.daemons[x]!.stderr.filter(l => l.includes(':artifacts')).join('\n') + '\n'
      )
    }
  }
  return {
    starts,
    ends,
    rssIdle,
    rssPeak,
    heapIdle,
    heapPeak,
    externalIdle,
    externalPeak,
    sendCpuMs: sendCpuMs ?? 0,
    recvCpuMs: recvCpuMs ?? 0
  }
}

/** Artifact bytes each daemon served to its peers (its /metrics counter). */
async function served(f: Fleet): Promise<Record<string, number>> {
  const out: Record<string, number> = {}
  for (const [x, d] of Object.entries(f.daemons)) {
    const text = await (await fetch(`${d.url}/metrics`)).text()
    out[x] = Number(/^rhizome_artifact_bytes_served_total\S* (\d+)/m.exec(text)?.[1] ?? 0)
  }
  return out
}

async function close(f: Fleet): Promise<void> {
  await Promise.all(Object.values(f.daemons).map(d => d.stop()))
  await rm(f.dir, { recursive: true, force: true })
}

const mbps = (ms: number, size = SIZE): string => `${(size / MIB / (ms / 1000)).toFixed(1)} MiB/s`

async function randomFile(file: string, size: number): Promise<void> {
  const fh = await open(file, 'w')
  for (let o = 0; o < size; o += 16 * MIB) await fh.write(randomBytes(Math.min(16 * MIB, size - o)))
  await fh.close()
}

const work = await mkdtemp(join(tmpdir(), 'rhizome-art-bench-file-'))
try {
  const file = join(work, 'artifact.bin')
  await randomFile(file, SIZE)
  process.stdout.write(`artifact: ${SIZE / MIB} MiB of random bytes, 1 MiB chunks\n`)

  const plain = await plainCopy(file, work)
  const cpu = (t: Timed): string =>
    `CPU: sender ${t.sendCpuMs.toFixed(0)} ms (${(t.sendCpuMs / plain.sendCpuMs).toFixed(1)}x the plain copy's), receiver ${t.recvCpuMs.toFixed(0)} ms (${(t.recvCpuMs / plain.recvCpuMs).toFixed(1)}x)`
  process.stdout.write(
    `plain TCP copy (other process, fsync at the end): ${plain.ms.toFixed(0)} ms, ${mbps(plain.ms)}, CPU: sender ${plain.sendCpuMs.toFixed(0)} ms, receiver ${plain.recvCpuMs.toFixed(0)} ms\n`
  )
  // libp2p alone twice: its defaults, and the daemons' transport settings (the ceiling shown).
  const raws: Timed[] = []
  for (const [how, asDaemon] of [
    ["libp2p's defaults", false],
    ["the daemons' settings", true]
  ] as const) {
    const r = await libp2pStream(asDaemon)
    raws.push(r)
    process.stdout.write(
      `libp2p alone, ${how} (one Noise + Yamux stream, other process, from memory, no disk): ${r.ms.toFixed(0)} ms, ${mbps(r.ms)}, ${(plain.ms / r.ms).toFixed(2)}x the plain copy's throughput, ${cpu(r)}\n`
    )
  }
  const raw = Math.min(...raws.map(r => r.ms))

  const deployed = await deployedEnv()
  process.stdout.write(
    `daemons as deployed: ${Object.entries(deployed)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}\n`
  )
  const variants = [{ serve: 0, size: SIZE, file }]
  if (THIN > 0) {
    const thinFile = join(work, 'thin.bin')
    await randomFile(thinFile, THIN_SIZE)
    variants.push({ serve: THIN, size: THIN_SIZE, file: thinFile })
  }
  for (const { serve, size, file: f } of variants) {
    const label =
      serve === 0
        ? `${size / MIB} MiB, no rate limit`
        : `${size / MIB} MiB, upload limited to ${serve / MIB} MiB/s per daemon`
    process.stdout.write(`\n[${label}]\n`)
    // Unlimited: the one transfer with Node's defaults, as deployed but with artifact links off
    // (RHIZOME_ARTIFACT_PORT=off: every chunk over the mesh connection, Noise and Yamux, the A/B
    // of mesh/artifact-link.ts), then as deployed (last: the ten fetchers' ratios are to it); the
    // rest as deployed.
    const envs: Array<[string, Record<string, string>]> =
      serve === 0
        ? [
            ["Node's defaults", {}],
            [
              'as deployed, artifact links off: chunks over the mesh connection',
              { ...deployed, RHIZOME_ARTIFACT_PORT: 'off' }
            ],
            ['as deployed', deployed]
          ]
        : [['as deployed', deployed]]
    let single = 0
    const only = process.env.ARTIFACT_BENCH_ONLY_DEPLOYED === '1'
    for (const [how, daemonEnv] of only ? envs.slice(-2) : envs) {
      // ARTIFACT_BENCH_CPU_PROF=DIR: both daemons of the one transfer write a CPU profile there.
      const prof = process.env.ARTIFACT_BENCH_CPU_PROF
      const one = await fleetOf(
        1,
        f,
        serve,
        prof === undefined
          ? daemonEnv
          : {
              ...daemonEnv,
              NODE_OPTIONS: `${daemonEnv.NODE_OPTIONS ?? ''} --cpu-prof --cpu-prof-dir=${prof}`
            }
      )
      const r1 = await transfer(one, 'f1')
      await close(one)
      single = r1.ends[0]! - r1.starts[0]!
      process.stdout.write(
        `one transfer between two daemons (${how}): ${single} ms, ${mbps(single, size)}` +
          (serve === 0
            ? `, ${(plain.ms / single).toFixed(2)}x the plain copy's throughput (target >= 0.5x), ${(raw / single).toFixed(2)}x libp2p alone (its faster run); ${cpu({ ms: single, ...r1 })}`
            : '') +
          `\n  fetcher RSS: idle ${(r1.rssIdle / MIB).toFixed(0)} MB, peak ${(r1.rssPeak / MIB).toFixed(0)} MB, +${((r1.rssPeak - r1.rssIdle) / MIB).toFixed(0)} MB (target < 50 MB); ` +
          `V8 heap ${(r1.heapIdle / MIB).toFixed(0)} -> ${(r1.heapPeak / MIB).toFixed(0)} MB, ` +
          `external (buffers) ${(r1.externalIdle / MIB).toFixed(0)} -> ${(r1.externalPeak / MIB).toFixed(0)} MB (idle -> peak)\n`
      )
    }
    // A/B in the same run: the scheduling before announcements and super-seeding, then as deployed.
    const schedulings =
      FETCHERS === 0
        ? []
        : serve === 0
          ? ['swarm']
          : (process.env.ARTIFACT_BENCH_SCHEDULINGS ?? 'partial,swarm').split(',')
    for (const scheduling of schedulings) {
      const many = await fleetOf(FETCHERS, f, serve, {
        ...deployed,
        RHIZOME_ARTIFACT_SCHEDULING: scheduling
      })
      const rN = await transfer(many)
      const bytes = await served(many)
      await close(many)
      const total = Math.max(...rN.ends) - Math.min(...rN.starts)
      const each = rN.ends.map((e, i) => e - rN.starts[i]!).sort((a, b) => a - b)
      const fromSrc = bytes.src ?? 0
      const fromPeers = Object.entries(bytes).reduce((n, [x, b]) => (x === 'src' ? n : n + b), 0)
      process.stdout.write(
        `${FETCHERS} fetchers from one source (${scheduling}): last done after ${total} ms, ${(total / single).toFixed(2)}x the one transfer (target < 2x); ` +
          `per fetcher ${each[0]}..${each[each.length - 1]} ms; ` +
          `source served ${(fromSrc / MIB).toFixed(0)} MiB (${(fromSrc / size).toFixed(2)}x the artifact), fetchers each other ${(fromPeers / MIB).toFixed(0)} MiB\n`
      )
    }
  }
} finally {
  await stopAll()
  await rm(work, { recursive: true, force: true })
}
