/**
 * Staged rollouts benchmark. Prints figures beside the targets; asserts nothing.
 *
 * N full daemon processes (default 30: store, mesh, reconciler, workloads, rollout agent) on
 * loopback in a sparse random topology (each bootstraps to two random earlier ones), all enrolled
 * in one site. Their workload is `sleep` with no probe (healthy once running), so the figures are
 * the rollout machinery's, not a workload's start-up. All times come from the nodes' own signed
 * reports (one machine, one clock).
 *
 * 1. Wave hand-over: a rollout with waves canary (one node), 10 %, 50 %, 100 %, threshold 100 %,
 *    soak S (default 2 s). For each wave k → k+1: H = when the last node of wave k turned healthy
 *    (its `healthySince`), T = when the first node of wave k+1 switched (`switchedAt`). Target:
 *    T − H < S + 1 s. Printed: T − H − S (the machinery's part), and T − that node's `soakedAt`
 *    (from its soak ending to the next wave going: its record crossing the mesh and the gate).
 * 2. Abort: a rollout whose new version crashes (restarts 0: its first exit fails it), canary
 *    first. F = the canary's `failedAt`; each node records when it learned of the abort
 *    (`abortedAt`). Target: max(abortedAt) − F < 1 s. Run twice:
 *    - a version that crashes `ROLLOUT_CRASH_AFTER_MS` (3000) after it starts, by which time every
 *      node holds the rollout (each report's `seenAt` says when it did; printed): the abort's own
 *      spread, what the target is about;
 *    - a version that exits at once (`false`), the canary failing while the rollout itself is
 *      still reaching the fleet: a node cannot know a rollout aborted before it holds it, so
 *      this figure is the later of the two spreads, the config's and the abort's.
 *    The spread of `abortedAt` (first to last) is printed beside each: the gossip's own share.
 *
 * Usage: node bench/rollout.bench.ts. Env: ROLLOUT_NODES (30), ROLLOUT_SOAK_MS (2000),
 *   ROLLOUT_CRASH_AFTER_MS (3000),
 *   ROLLOUT_SEED (topology; random unless set), BENCH_VERBOSE=1, ROLLOUT_TRACE=DIR (each daemon's
 *   trace lines, `rhizome:trace:*`, to DIR/<name>.log, and DIR/nodes.json naming their keys: read
 *   them with bench/rollout-trace.ts).
 */
import { createWriteStream } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import type { RolloutDetail } from '../node/rollout-routes.ts'
import { DaemonFleet, type RunningDaemon } from '../test/fixtures/daemon-fleet.ts'
import { freePort, getJson, stopAll } from '../test/fixtures/node-harness.ts'
import { waitFor } from '../test/fixtures/wait.ts'

const N = Number(process.env.ROLLOUT_NODES ?? 30)
const SOAK_MS = Number(process.env.ROLLOUT_SOAK_MS ?? 2000)
const CRASH_AFTER_MS = Number(process.env.ROLLOUT_CRASH_AFTER_MS ?? 3000)
const VERBOSE = process.env.BENCH_VERBOSE === '1'
const TRACE = process.env.ROLLOUT_TRACE
const PASS = 'bench passphrase'
const env = { RHIZOME_PASSPHRASE: PASS }

let seed = Number(process.env.ROLLOUT_SEED ?? Math.floor(Math.random() * 2 ** 31))
const random = (): number => {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff
  return seed / 0x80000000
}
const say = (s: string): void => {
  process.stdout.write(s + '\n')
}
const ms = (x: number): string => `${Math.round(x)} ms`

const dir = await mkdtemp(join(tmpdir(), 'rhizome-rollout-bench-'))
const names = Array.from({ length: N }, (_, i) => `n${String(i).padStart(2, '0')}`)
const daemons: RunningDaemon[] = []
try {
  say(
    `rollout bench: ${N} daemons, soak ${SOAK_MS} ms, seed ${seed}, ${cpus().length} cores, load ${loadavg()
      .map(l => l.toFixed(1))
      .join(' ')}, node ${process.version}, ${new Date().toISOString()}`
  )
  const f = await DaemonFleet.init(dir, 'bench', names, env, { identitiesInProcess: true })
  const ids = names.map(n => f.ids[n]!)
  const daemonEnv: Record<string, string> = TRACE === undefined ? {} : { DEBUG: 'rhizome:trace:*' }
  /** Start one daemon; with ROLLOUT_TRACE, its stderr from then on goes to DIR/<name>.log too. */
  const start = async (n: string, timeoutMs: number): Promise<RunningDaemon> => {
    const d = await f.start(n, timeoutMs, daemonEnv)
    if (TRACE !== undefined) d.proc.stderr?.pipe(createWriteStream(join(TRACE, `${n}.log`)))
    return d
  }
  if (TRACE !== undefined) {
    await mkdir(TRACE, { recursive: true })
    const keys = Object.fromEntries(names.map((n, i) => [n, ids[i]!.key]))
    const peers = Object.fromEntries(names.map((n, i) => [n, ids[i]!.peerId]))
    await writeFile(join(TRACE, 'nodes.json'), JSON.stringify({ keys, peers }))
  }
  const ports = await Promise.all(names.map(() => freePort()))
  for (const [i, n] of names.entries()) {
    const peers = new Set<number>()
    if (i > 0) for (let k = 0; k < 2; k++) peers.add(Math.floor(random() * i))
    await f.writeConfig(n, {
      labels: { site: 'bench' },
      listen: [`/ip4/127.0.0.1/tcp/${ports[i]}`],
      bootstrap: [...peers].map(p => `/ip4/127.0.0.1/tcp/${ports[p]}/p2p/${ids[p]!.peerId}`),
      statusIntervalMs: 5000,
      tryModeMs: 0
    })
  }
  const t0 = performance.now()
  daemons.push(await start(names[0]!, 60_000))
  // Enrol everyone in one signed batch, then start the rest a few at a time.
  await f.enrolInOneBatch(daemons[0]!, n => ({
    site: 'bench',
    lab: n === names[0] ? 'yes' : 'no'
  }))
  for (let i = 1; i < N; i += 5) {
    const group = names.slice(i, i + 5)
    daemons.push(...(await Promise.all(group.map(n => start(n, 120_000)))))
  }
  say(`  ${N} daemons up in ${ms(performance.now() - t0)}`)

  const apply = async (fleet: unknown): Promise<void> => {
    const r = await f.apply(fleet, daemons[0]!)
    if (r.code !== 0) throw new Error(r.stderr)
  }
  const base = (version: string, rollouts?: Record<string, unknown>) => ({
    fleet: {
      defaults: { workloads: { app: { command: ['sleep', '100000'], version } } },
      ...(rollouts === undefined ? {} : { rollouts })
    }
  })
  await apply(base('1'))
  await waitFor(
    'every daemon to run version 1 and hear from every other',
    async () => {
      const s = await getJson<{ nodes: Array<{ online: boolean; status: unknown }> }>(
        `${daemons[0]!.url}/api/status`
      )
      return s.nodes.length === N && s.nodes.every(x => x.online && x.status !== null)
    },
    120_000,
    500
  )
  const detail = (d: RunningDaemon, id: string): Promise<RolloutDetail> =>
    getJson<RolloutDetail>(`${d.url}/api/rollouts/${encodeURIComponent(id)}`)

  // 1. Wave hand-over.
  const waves = [{ canary: { lab: 'yes' } }, { percent: 10 }, { percent: 50 }, { percent: 100 }]
  const tGood = performance.now()
  await apply(
    base('1', {
      good: {
        change: { workloads: { app: { version: '2' } } },
        waves,
        threshold: 100,
        soak: `${SOAK_MS}ms`
      }
    })
  )
  const good = await waitFor(
    'the good rollout to complete with every node soaked',
    async () => {
      const d = await detail(daemons[0]!, 'good')
      return d.state === 'completed' && d.nodes.every(x => x.report?.soakedAt !== undefined)
        ? d
        : undefined
    },
    600_000,
    500
  )
  say(
    `  good rollout: ${waves.length} waves, ${N} nodes, completed in ${ms(performance.now() - tGood)}`
  )
  say(`  wave hand-over (target: T − H < soak + 1 s, i.e. machinery < 1 s):`)
  // Consecutive non-empty waves (10 % of a small fleet can be the canary already).
  const filled = good.waves.map(w => w.index).filter(i => good.nodes.some(x => x.wave === i))
  for (const [j, k] of filled.slice(0, -1).entries()) {
    const these = good.nodes.filter(x => x.wave === k)
    const next = good.nodes.filter(x => x.wave === filled[j + 1])
    const last = these.reduce((a, b) =>
      (a.report!.healthySince ?? 0) >= (b.report!.healthySince ?? 0) ? a : b
    )
    const firstSwitch = Math.min(...next.map(x => x.report!.switchedAt!))
    const H = last.report!.healthySince!
    const soaked = last.report!.soakedAt!
    say(
      `    wave ${k} (${these.length}) → ${filled[j + 1]} (${next.length}): T − H = ${ms(firstSwitch - H)}, machinery T − H − soak = ${ms(firstSwitch - H - SOAK_MS)}, from the soak ending (soakedAt) ${ms(firstSwitch - soaked)}`
    )
  }

  // 2. Abort, twice: a version that crashes after a while (the rollout held everywhere by then),
  // and one that exits at once (the canary fails while the rollout is still spreading).
  const aborts: Array<{ id: string; title: string; command: string[]; version: string }> = [
    {
      id: 'broken',
      title: `crashes ${CRASH_AFTER_MS} ms after it starts`,
      command: ['sh', '-c', `sleep ${CRASH_AFTER_MS / 1000}; exit 1`],
      version: '3-broken'
    },
    { id: 'broken-at-once', title: 'exits at once', command: ['false'], version: '4-broken' }
  ]
  const brokenDetails: Record<string, RolloutDetail> = {}
  say(`  abort (target: every node knows < 1 s after the canary failed):`)
  for (const a of aborts) {
    await apply(
      base('2', {
        [a.id]: {
          change: { workloads: { app: { command: a.command, version: a.version } } },
          waves,
          soak: '1m',
          health: { restarts: 0, startTimeout: '30s' }
        }
      })
    )
    const broken = await waitFor(
      `every node to record the abort of ${a.id}`,
      async () => {
        const d = await detail(daemons[0]!, a.id)
        return d.nodes.every(x => x.report?.abortedAt !== undefined) ? d : undefined
      },
      120_000,
      200
    )
    brokenDetails[a.id] = broken
    const canary = broken.nodes.find(x => x.report?.failedAt !== undefined)!
    const F = canary.report!.failedAt!
    const known = broken.nodes.map(x => x.report!.abortedAt!)
    const sorted = [...known].sort((x, y) => x - y)
    const seenAts = broken.nodes.map(x => x.report!.seenAt)
    const lastSeen = Math.max(...seenAts)
    const seen = lastSeen <= F ? `${ms(F - lastSeen)} before` : `${ms(lastSeen - F)} after`
    say(
      `    version that ${a.title}: the canary failed ${ms(F - canary.report!.switchedAt!)} after it switched (${canary.report!.reason}); the last node took the rollout in ${seen} the failure (the rollout reached all ${N} in ${ms(lastSeen - Math.min(...seenAts))})`
    )
    say(
      `      the whole fleet knew ${ms(Math.max(...known) - F)} after the failure (median node ${ms(sorted[Math.floor(N / 2)]! - F)}; first ${ms(sorted[0]! - F)}, spread ${ms(sorted.at(-1)! - sorted[0]!)}); switched outside the canary: ${broken.nodes.filter(x => x.report?.switchedAt !== undefined).length - 1}`
    )
    if (VERBOSE) {
      for (const x of broken.nodes) say(`      ${x.name} abortedAt +${x.report!.abortedAt! - F} ms`)
    }
  }
  if (TRACE !== undefined) {
    const facts = (d: RolloutDetail) =>
      d.nodes.map(x => ({ name: x.name, wave: x.wave, ...x.report }))
    await writeFile(
      join(TRACE, 'reports.json'),
      JSON.stringify({ good: facts(good), broken: facts(brokenDetails.broken!) })
    )
  }
} finally {
  await stopAll()
  await rm(dir, { recursive: true, force: true })
}
