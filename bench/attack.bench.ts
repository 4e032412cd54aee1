/**
 * Honest propagation under attack (issue 10). Prints figures; asserts nothing.
 *
 * N mesh daemon processes (test/fixtures/mesh-daemon.ts: LevelStore + createMesh) on loopback,
 * each bootstrapping to two random earlier ones; n0 is the victim. One signed change at a time on
 * a random node, once the mesh is quiet; time until every node has applied it. The same run
 * measures a quiet phase, then the same number of changes while this process attacks n0 at full
 * speed with what a stranger can send without any key:
 *
 * - idle sockets: SOCKETS TCP connections that never start Noise, each reopened as soon as the
 *   victim drops it (handshake-slot exhaustion, item 3);
 * - handshakes: DIALERS loops, each a libp2p node with a fresh identity completing Noise with the
 *   victim over and over (admission refuses it after; CPU for every X25519 and signature).
 *
 * Also the victim's own responsiveness: the round trip of a request on its control channel (what
 * `/api/health` shows for a full daemon), sampled every 50 ms, quiet against attacked.
 * Target: p99 propagation under attack within 2x the quiet p99 of the same run.
 *
 * Usage: node bench/attack.bench.ts. Env: ATTACK_NODES (6), ATTACK_CHANGES (40),
 *   ATTACK_SOCKETS (64), ATTACK_DIALERS (4), ATTACK_SEED (topology; random unless set).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import { cpus, loadavg, tmpdir } from 'node:os'
import path from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { generateKeyPair } from '../crdt/keys.ts'
import { makeFleet } from '../test/fixtures/fleet.ts'
import { changeEverywhere, spawnDaemon, type DaemonProcess } from '../test/fixtures/mesh-process.ts'
import { rawPeer } from '../test/fixtures/mesh-raw-peer.ts'
import { prng } from '../test/fixtures/fuzz.ts'

const N = Number(process.env.ATTACK_NODES ?? 6)
const CHANGES = Number(process.env.ATTACK_CHANGES ?? 40)
const SOCKETS = Number(process.env.ATTACK_SOCKETS ?? 64)
const DIALERS = Number(process.env.ATTACK_DIALERS ?? 4)
const SEED = Number(process.env.ATTACK_SEED ?? Math.floor(Math.random() * 2 ** 31))

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] ?? NaN
}
const summary = (xs: number[]): string =>
  `p50 ${pct(xs, 50).toFixed(0)} ms, p99 ${pct(xs, 99).toFixed(0)} ms, max ${Math.max(...xs).toFixed(0)} ms`

/** Idle sockets to `port`, each reopened when dropped, until `signal` aborts. Counts opens. */
function idleSockets(port: number, count: number, signal: AbortSignal): { opened: number } {
  const stats = { opened: 0 }
  const open = (): void => {
    if (signal.aborted) return
    stats.opened++
    const s = net.connect({ host: '127.0.0.1', port })
    s.on('error', () => {})
    s.on('close', () => setImmediate(open))
    signal.addEventListener('abort', () => s.destroy(), { once: true })
  }
  for (let i = 0; i < count; i++) open()
  return stats
}

/** Strangers completing Noise with `addr` in `count` loops until `signal` aborts. */
async function strangerDials(addr: string, count: number, signal: AbortSignal) {
  const stats = { dials: 0, connected: 0 }
  const loop = async (): Promise<void> => {
    while (!signal.aborted) {
      const peer = await rawPeer(generateKeyPair())
      try {
        stats.dials++
        await peer.dial(multiaddr(addr), { signal: AbortSignal.timeout(5000) })
        stats.connected++
      } catch {
        /* refused or timed out: either is the point */
      } finally {
        await peer.stop()
      }
    }
  }
  return { stats, done: Promise.all(Array.from({ length: count }, loop)) }
}

const fleet = await makeFleet({ nodes: N, replicas: 0, label: 'bench-attack' })
const root = await mkdtemp(path.join(tmpdir(), 'rhizome-attack-bench-'))
const random = prng(SEED)
const procs: DaemonProcess[] = []
console.log(
  `attack bench: ${N} daemons, ${CHANGES} changes per phase, ${SOCKETS} idle sockets + ${DIALERS} stranger dialers against n0, seed ${SEED}, ${cpus().length} cores, load ${loadavg()
    .map(l => l.toFixed(1))
    .join(' ')}, node ${process.version}, ${new Date().toISOString()}`
)
try {
  for (let i = 0; i < N; i++) {
    const boot = new Set<number>()
    while (boot.size < Math.min(i, 2)) boot.add(Math.floor(random() * i))
    procs.push(
      await spawnDaemon(fleet, {
        dir: path.join(root, `n${i}`),
        identity: fleet.nodes[i]!,
        listen: ['/ip4/127.0.0.1/tcp/0'],
        bootstrap: [...boot].map(j => procs[j]!.addresses[0] as string)
      })
    )
  }
  const victim = procs[0]!
  const victimAddr = victim.addresses[0] as string
  const victimPort = Number(victimAddr.split('/')[4])
  let seq = 0
  const syncOut = async (): Promise<number> =>
    (await Promise.all(procs.map(p => p.request({ cmd: 'metrics' })))).reduce(
      (a, st) => a + (st.metrics as { syncMessagesOut: number }).syncMessagesOut,
      0
    )
  const quiet = async (): Promise<void> => {
    let last = -1
    for (let i = 0; i < 200; i++) {
      const now = await syncOut()
      if (now === last) return
      last = now
      await new Promise(resolve => setTimeout(resolve, 25))
    }
  }
  /** One change on a random node; the time until the last node applied it. */
  const oneChange = async (): Promise<number> => {
    await quiet()
    const c = seq++
    const origin = procs[Math.floor(random() * N)]!
    const { t, arrivals } = await changeEverywhere(procs, origin, `k${c}`, c)
    return Math.max(...arrivals) - t
  }
  /** Run `CHANGES` changes while sampling the victim's control round trip every 50 ms. */
  const phase = async (): Promise<{ times: number[]; rtts: number[] }> => {
    const rtts: number[] = []
    const sampling = new AbortController()
    const sampler = (async () => {
      while (!sampling.signal.aborted) {
        const t0 = performance.now()
        await victim.request({ cmd: 'state' }, 30_000).catch(() => undefined)
        rtts.push(performance.now() - t0)
        await new Promise(resolve => setTimeout(resolve, 50))
      }
    })()
    const times: number[] = []
    for (let i = 0; i < CHANGES; i++) times.push(await oneChange())
    sampling.abort()
    await sampler
    return { times, rtts }
  }
  for (let i = 0; i < 10; i++) await oneChange() // warm-up, not counted
  const calm = await phase()
  const stop = new AbortController()
  const sockets = idleSockets(victimPort, SOCKETS, stop.signal)
  const dialers = await strangerDials(victimAddr, DIALERS, stop.signal)
  await new Promise(resolve => setTimeout(resolve, 1000)) // let the flood reach full speed
  const t0 = performance.now()
  const attacked = await phase()
  const attackS = (performance.now() - t0) / 1000
  stop.abort()
  await dialers.done
  const lost = attacked.times.filter(t => t === Infinity).length
  const st = (await victim.request({ cmd: 'metrics' })).metrics as Record<string, number>
  console.log(
    `  quiet:        propagation ${summary(calm.times)}; victim round trip ${summary(calm.rtts)}`
  )
  console.log(
    `  under attack: propagation ${summary(attacked.times)}; victim round trip ${summary(attacked.rtts)}${lost > 0 ? `; ${lost} changes never arrived` : ''}`
  )
  console.log(
    `  attack: ${(sockets.opened / attackS).toFixed(0)} idle sockets opened/s, ${(dialers.stats.dials / attackS).toFixed(1)} stranger dials/s (${dialers.stats.connected} got a connection); victim inboundRefused ${st.inboundRefused ?? '?'}, peersBanned ${st.peersBanned ?? '?'}`
  )
  console.log(
    `  p99 under attack / quiet p99: ${(pct(attacked.times, 99) / pct(calm.times, 99)).toFixed(2)}x (target ≤ 2x); victim round trip p99 ratio ${(pct(attacked.rtts, 99) / pct(calm.rtts, 99)).toFixed(2)}x`
  )
} finally {
  await Promise.all(procs.map(p => p.kill()))
  await rm(root, { recursive: true, force: true })
}
