/**
 * crdt benchmark: how fast signed changes are verified and applied, and how fast and how small a
 * replica holding 10,000 changes starts. Prints figures beside the targets; asserts nothing.
 *
 * - Fast path: 10,000 changes as one self-covering catch-up batch (`batchFor`, as sync sends
 *   it: one signature per actor) accepted by a fresh replica.
 * - Worst case: the same 10,000 changes as 10,000 single-change batches, each with its own
 *   signature, accepted one by one (as live gossip of individual edits would arrive).
 * - Start: a LevelStore holding those changes (snapshot written), opened in a fresh process.
 *
 * Usage: node bench/crdt.bench.ts [changes, default 10000]
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { availableParallelism, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { createWebCryptoEd25519, tweetnaclEd25519, type Ed25519 } from '../crdt/ed25519.ts'
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { keyPairFromSeed, publicKeyHex } from '../crdt/keys.ts'
import { LevelStore } from '../crdt/level-store.ts'
import { Replica } from '../crdt/replica.ts'
import { MemoryStore, type Store } from '../crdt/store.ts'
import { createGenesis } from '../crdt/trust.ts'
import { readChanges, verifyCoverage, type SignedBatch } from '../crdt/signed-change.ts'
import * as Automerge from '@automerge/automerge'

const N = Number(process.argv[2] ?? 10_000)
const SIGNERS = 3
/** Changes a signer makes before the next takes over (each switch clones the document). */
const RUN = 100
/** tweetnacl verifies ~115 signatures/s: its worst case runs on this many and is extrapolated. */
const TWEETNACL_WORST_N = Math.min(N, 1_000)

const TARGET = { changesPerSecond: 10_000, openMs: 300, rssMB: 100 }

const webcrypto = createWebCryptoEd25519(globalThis.crypto.subtle)
const IMPLS: Ed25519[] = [nodeCryptoEd25519, webcrypto, tweetnaclEd25519]

const admins = Array.from({ length: SIGNERS }, (_, i) =>
  keyPairFromSeed(new Uint8Array(32).fill(i + 1))
)
const genesis = await createGenesis(
  {
    fleet: 'bench',
    roots: [admins[0]!],
    admins: admins.map((k, i) => ({ key: publicKeyHex(k.publicKey), name: `admin-${i}` }))
  },
  nodeCryptoEd25519
)

const rate = (n: number, ms: number): string =>
  `${Math.round(n / (ms / 1000)).toLocaleString('en-US')} changes/s`
const fmtMs = (ms: number): string => `${ms.toFixed(ms < 100 ? 1 : 0)} ms`
function line(what: string, figure: string, note = ''): void {
  process.stdout.write(
    `  ${what.padEnd(66)} ${figure.padStart(20)}${note === '' ? '' : `   ${note}`}\n`
  )
}

// --- Make the changes: three admins, in runs, editing a config-shaped document.
// Other work on the machine skews every figure here: say how busy it was.
const load = (): string =>
  `load average ${loadavg()
    .map(l => l.toFixed(2))
    .join(' ')} on ${availableParallelism()} cores`
process.stdout.write(
  `crdt: ${N.toLocaleString('en-US')} signed changes by ${SIGNERS} admins (node ${process.version}; ${load()})\n`
)
const author = await Replica.open({ store: new MemoryStore(), ed: nodeCryptoEd25519, genesis })
const doc = await author.open<{
  defaults?: Record<string, unknown>
  groups?: Record<string, unknown>
}>('fleet')
const signers = admins.map(k => Replica.signer(k))
const singles: SignedBatch[] = []
const t = performance.now()
for (let i = 0; i < N; i++) {
  const signer = signers[Math.floor(i / RUN) % SIGNERS]!
  const batch = await doc.change(signer, d => {
    d.defaults ??= {}
    d.groups ??= {}
    d.defaults[`key-${i % 500}`] = { value: i, by: signer.actor.slice(0, 8) }
    if (i % 7 === 0) {
      d.groups[`group-${i % 20}`] = { selector: { role: 'pos' }, config: { version: String(i) } }
    }
  })
  singles.push(batch!)
}
const makeMs = performance.now() - t
const hashes = doc.history().map(h => h.hash)
const catchUp = doc.batchFor(hashes)
const catchUpBytes = catchUp.chunks.reduce((s, c) => s + c.length, 0)
line('make, sign and store locally (node:crypto)', rate(N, makeMs))
line(
  'catch-up batch',
  `${(catchUpBytes / 2 ** 20).toFixed(2)} MiB`,
  `${catchUp.signatures.length} signatures for ${hashes.length} changes`
)

async function fresh(ed: Ed25519, store: Store = new MemoryStore()): Promise<Replica> {
  return Replica.open({ store, ed, genesis })
}

async function acceptAll(replica: Replica, batches: SignedBatch[]): Promise<number> {
  const started = performance.now()
  for (const b of batches) await replica.accept(b)
  return performance.now() - started
}

// Warm up each implementation and Automerge's loader on a small history.
for (const ed of IMPLS) await acceptAll(await fresh(ed), singles.slice(0, 50))

process.stdout.write(
  `\nverify + apply, into a fresh replica on MemoryStore (target ≥ ${TARGET.changesPerSecond.toLocaleString('en-US')} changes/s on the fast path)\n`
)
const results: Record<string, { fast: number; worst: number; worstExtrapolated: boolean }> = {}
for (const ed of IMPLS) {
  // Fast path: best of three (the figure is short; one GC pause would dominate).
  let fastMs = Infinity
  for (let i = 0; i < 3; i++) fastMs = Math.min(fastMs, await acceptAll(await fresh(ed), [catchUp]))
  const worstN = ed === tweetnaclEd25519 ? TWEETNACL_WORST_N : N
  const worstMs = await acceptAll(await fresh(ed), singles.slice(0, worstN))
  results[ed.name] = {
    fast: N / (fastMs / 1000),
    worst: worstN / (worstMs / 1000),
    worstExtrapolated: worstN < N
  }
  line(`${ed.name}: fast path, one catch-up batch of ${N}`, rate(N, fastMs), fmtMs(fastMs))
  line(
    `${ed.name}: worst case, ${worstN} single-change batches`,
    rate(worstN, worstMs),
    worstN < N
      ? `${fmtMs(worstMs)}; ${N} would take ~${((worstMs * N) / worstN / 1000).toFixed(0)} s (extrapolated)`
      : fmtMs(worstMs)
  )
}

// Where the fast path's time goes: parsing the bundle, checking signatures, applying it.
{
  const parseStarted = performance.now()
  const metas = readChanges(catchUp.chunks)
  const parseMs = performance.now() - parseStarted
  const verifyStarted = performance.now()
  await verifyCoverage(
    author.fleetId,
    'fleet',
    metas,
    catchUp.signatures,
    nodeCryptoEd25519,
    () => {}
  )
  const verifyMs = performance.now() - verifyStarted
  // Into the state a new document starts from (whatever SignedDocument starts it with), and
  // into an empty Automerge document: Automerge computes patches against a non-empty one.
  const start = Automerge.clone((await (await fresh(nodeCryptoEd25519)).open('fleet')).value)
  const applyStarted = performance.now()
  Automerge.loadIncremental(start, catchUp.chunks[0]!)
  const applyMs = performance.now() - applyStarted
  const emptyStarted = performance.now()
  Automerge.loadIncremental(Automerge.init(), catchUp.chunks[0]!)
  const emptyMs = performance.now() - emptyStarted
  line('fast path breakdown: parse changes (readChanges)', fmtMs(parseMs))
  line(
    `fast path breakdown: coverage + ${catchUp.signatures.length} signatures (node:crypto)`,
    fmtMs(verifyMs)
  )
  line(
    `fast path breakdown: apply to a new document (starts with ${Automerge.getHeads(start).length} head)`,
    fmtMs(applyMs),
    'Automerge.loadIncremental'
  )
  line(
    'fast path breakdown: apply to an empty Automerge document',
    fmtMs(emptyMs),
    'Automerge.loadIncremental'
  )
}

// --- The same into LevelStore: every accepted batch is fsynced before accept resolves.
const dir = await mkdtemp(join(tmpdir(), 'rhizome-bench-'))
try {
  process.stdout.write(
    '\nverify + apply, into a fresh replica on LevelStore (durable: synced before accept resolves)\n'
  )
  const worstDir = join(dir, 'worst')
  const worstStore = await LevelStore.open(worstDir)
  const levelWorstN = Math.min(N, 2_000)
  const levelWorstMs = await acceptAll(
    await fresh(nodeCryptoEd25519, worstStore),
    singles.slice(0, levelWorstN)
  )
  await worstStore.close()
  line(
    `node:crypto: worst case, ${levelWorstN} single-change batches`,
    rate(levelWorstN, levelWorstMs),
    fmtMs(levelWorstMs)
  )

  const storeDir = join(dir, 'fast')
  const store = await LevelStore.open(storeDir)
  const replica = await fresh(nodeCryptoEd25519, store)
  const fastMs = await acceptAll(replica, [catchUp])
  line(`node:crypto: fast path, one catch-up batch of ${N}`, rate(N, fastMs), fmtMs(fastMs))
  const snapStarted = performance.now()
  await (await replica.open('fleet')).snapshot()
  line('write the snapshot', fmtMs(performance.now() - snapStarted))
  await replica.close()
  await store.close()

  // --- Start: open that store in a fresh process, three times.
  process.stdout.write(
    `\nopen a LevelStore holding ${N.toLocaleString('en-US')} changes (from its snapshot) in a fresh process (targets: open+ready ≤ ${TARGET.openMs} ms, RSS ≤ ${TARGET.rssMB} MB)\n`
  )
  const runs: Array<{
    openMs: number
    sinceStartMs: number
    rssMB: number
    rssBeforeMB: number
    changes: number
  }> = []
  for (let i = 0; i < 3; i++) {
    const child = spawn(
      process.execPath,
      [new URL('./crdt-load-child.ts', import.meta.url).pathname, storeDir],
      { stdio: ['ignore', 'pipe', 'inherit'] }
    )
    const exited = once(child, 'exit', { signal: AbortSignal.timeout(60_000) })
    for await (const l of createInterface({ input: child.stdout })) runs.push(JSON.parse(l))
    await exited
  }
  for (const [i, r] of runs.entries()) {
    line(
      `run ${i + 1}: open + ready (store and replica, ${r.changes} changes)`,
      fmtMs(r.openMs),
      `RSS ${r.rssMB.toFixed(1)} MB after opening (${r.rssBeforeMB.toFixed(1)} MB with modules loaded, before); ${fmtMs(r.sinceStartMs)} since process start`
    )
  }
  const median = (k: 'openMs' | 'rssMB'): number =>
    runs.map(r => r[k]).sort((a, b) => a - b)[Math.floor(runs.length / 2)] ?? NaN

  process.stdout.write('\nsummary against targets\n')
  const best = results['node:crypto']!
  line(
    'fast path, node:crypto',
    `${Math.round(best.fast).toLocaleString('en-US')} changes/s`,
    `target ≥ ${TARGET.changesPerSecond.toLocaleString('en-US')}: ${best.fast >= TARGET.changesPerSecond ? 'met' : 'NOT met'}`
  )
  line(
    'open + ready (median of 3)',
    fmtMs(median('openMs')),
    `target ≤ ${TARGET.openMs} ms: ${median('openMs') <= TARGET.openMs ? 'met' : 'NOT met'}`
  )
  line(
    'RSS after opening (median of 3)',
    `${median('rssMB').toFixed(1)} MB`,
    `target ≤ ${TARGET.rssMB} MB: ${median('rssMB') <= TARGET.rssMB ? 'met' : 'NOT met'}`
  )
  process.stdout.write(`  (at the end: ${load()})\n`)
} finally {
  await rm(dir, { recursive: true, force: true })
}
