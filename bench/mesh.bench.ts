/**
 * mesh benchmark. Prints figures beside the targets; asserts nothing.
 *
 * - Propagation: N daemon processes (test/fixtures/mesh-daemon.ts, LevelStore + createMesh) on
 *   loopback in a sparse random topology (each node dials two random earlier ones: mean degree
 *   ~4). One signed change at a time on a random node; time until every node has applied it
 *   (wall clock, same machine). p50 and p99 over the changes. Targets at 30 processes: p50 ≤100 ms,
 *   p99 ≤250 ms.
 * - Catch-up: two replicas share a base, then diverge by K changes each (two admin sessions);
 *   their meshes connect over loopback TCP; time to identical heads, bytes on the wire, and
 *   messages; beside plain Automerge sync of the same two documents, messages passed in memory.
 *   Targets: ≤1.25× plain bytes, ≤2× plain time, ≤3 round trips.
 *
 * Usage: node bench/mesh.bench.ts [propagation|catchup|all] (default all)
 */
import * as Automerge from '@automerge/automerge'
import { mkdtemp, rm } from 'node:fs/promises'
import { cpus, tmpdir } from 'node:os'
import path from 'node:path'
import { Replica } from '../crdt/replica.ts'
import { MemoryStore } from '../crdt/store.ts'
import { createMesh } from '../mesh/index.ts'
import { makeFleet, ed } from '../test/fixtures/mesh-fleet.ts'
import { spawnDaemon, type DaemonProcess } from '../test/fixtures/mesh-process.ts'

const which = process.argv[2] ?? 'all'
const pct = (xs: number[], p: number): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.ceil(p / 100 * s.length) - 1)] as number }

async function propagation (n: number, changes: number): Promise<void> {
  const fleet = await makeFleet(n, 200)
  const root = await mkdtemp(path.join(tmpdir(), 'rhizome-mesh-bench-'))
  const procs: DaemonProcess[] = []
  let edges = 0
  try {
    for (let i = 0; i < n; i++) {
      const earlier = procs.map(p => p.addresses[0] as string)
      const boot: string[] = []
      while (boot.length < Math.min(i, 2)) {
        const pick = earlier[Math.floor(Math.random() * earlier.length)] as string
        if (!boot.includes(pick)) boot.push(pick)
      }
      edges += boot.length
      procs.push(await spawnDaemon(fleet, { dir: path.join(root, `n${i}`), identity: fleet.nodes[i]!, listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: boot }))
    }
    const times: number[] = []
    for (let k = -1; k < changes; k++) {
      const origin = procs[Math.floor(Math.random() * n)] as DaemonProcess
      const marks = procs.map(p => p.events.length)
      const done = await origin.request({ cmd: 'change', docId: 'fleet', key: `k${k + 1}`, value: k })
      const hash = (done.heads as string[])[0] as string
      const arrivals = await Promise.all(procs.map((p, i) => p === origin
        ? Promise.resolve(done.t as number)
        : p.next(e => e.event === 'heads' && (e.heads as string[]).includes(hash), 30_000, marks[i]).then(e => e.t as number)))
      if (k >= 0) times.push(Math.max(...arrivals) - (done.t as number))
    }
    console.log(`propagation, ${n} processes, ${edges} links (mean degree ${(2 * edges / n).toFixed(1)}), ${changes} changes: p50 ${pct(times, 50).toFixed(1)} ms, p99 ${pct(times, 99).toFixed(1)} ms, max ${Math.max(...times).toFixed(1)} ms  (target at 30: p50 ≤100, p99 ≤250)`)
  } finally {
    await Promise.all(procs.map(p => p.kill()))
    await rm(root, { recursive: true, force: true })
  }
}

async function catchUp (k: number): Promise<void> {
  const fleet = await makeFleet(2, 250)
  const a = await Replica.open({ store: new MemoryStore(), ed, genesis: fleet.genesis })
  const b = await Replica.open({ store: new MemoryStore(), ed, genesis: fleet.genesis })
  const base = (await (await a.open('fleet')).change(Replica.signer(fleet.admin), d => { d.items = {} }))!
  await b.accept(base)
  const sa = Replica.signer(fleet.admin)
  const sb = Replica.signer(fleet.admin)
  const da = await a.open('fleet')
  const db = await b.open('fleet')
  const t0 = performance.now()
  for (let i = 0; i < k; i++) {
    await da.change(sa, d => { (d.items as Record<string, number>)[`a${i}`] = i })
    await db.change(sb, d => { (d.items as Record<string, number>)[`b${i}`] = i })
  }
  console.log(`catch-up setup: ${k} + ${k} signed changes made in ${((performance.now() - t0) / 1000).toFixed(1)} s`)

  // Plain Automerge: the same two documents (no signatures), messages passed in memory.
  let pa = Automerge.clone(da.automerge)
  let pb = Automerge.clone(db.automerge)
  let stA = Automerge.initSyncState()
  let stB = Automerge.initSyncState()
  let plainBytes = 0
  let plainMsgs = 0
  const p0 = performance.now()
  for (let round = 0; round < 50; round++) {
    const [nA, mA] = Automerge.generateSyncMessage(pa, stA); stA = nA
    if (mA !== null) { plainBytes += mA.length; plainMsgs++; [pb, stB] = Automerge.receiveSyncMessage(pb, stB, mA) }
    const [nB, mB] = Automerge.generateSyncMessage(pb, stB); stB = nB
    if (mB !== null) { plainBytes += mB.length; plainMsgs++; [pa, stA] = Automerge.receiveSyncMessage(pa, stA, mB) }
    if (mA === null && mB === null) break
  }
  const plainMs = performance.now() - p0
  const plainOk = Automerge.getHeads(pa).sort().join() === Automerge.getHeads(pb).sort().join()

  // Rhizome: two meshes over loopback TCP.
  const limits = { inboundConnectionsPerSecond: 1000 }
  const ma = await createMesh({ replica: a, identity: fleet.nodes[0]!, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, limits, antiEntropyMs: 60_000 })
  await ma.start()
  const mb = await createMesh({ replica: b, identity: fleet.nodes[1]!, listen: ['/ip4/127.0.0.1/tcp/0'], mdns: false, limits, antiEntropyMs: 60_000, bootstrap: ma.addresses() })
  const r0 = performance.now()
  await mb.start()
  const deadline = Date.now() + 120_000
  while (da.heads.join() !== db.heads.join() && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5))
  const meshMs = performance.now() - r0
  const ok = da.heads.join() === db.heads.join()
  const m1 = ma.metrics()
  const m2 = mb.metrics()
  const bytes = m1.syncBytesOut + m2.syncBytesOut
  const msgs = m1.syncMessagesOut + m2.syncMessagesOut
  await mb.stop(); await ma.stop()
  console.log(`catch-up ${k} + ${k} changes:`)
  console.log(`  plain Automerge (in memory): ${plainMs.toFixed(0)} ms, ${plainBytes} bytes, ${plainMsgs} messages (${Math.ceil(plainMsgs / 2)} round trips), converged ${plainOk}`)
  console.log(`  rhizome mesh (TCP, signed):  ${meshMs.toFixed(0)} ms incl. connect, ${bytes} bytes, ${msgs} messages incl. 2 hellos (${Math.ceil((msgs - 2) / 2)} round trips), converged ${ok}`)
  console.log(`  ratios: bytes ${(bytes / plainBytes).toFixed(2)}× (target ≤1.25), time ${(meshMs / plainMs).toFixed(2)}× (target ≤2)`)
}

console.log(`machine: ${cpus().length}× ${cpus()[0]?.model ?? '?'}, Node ${process.version}, ${new Date().toISOString()}`)
if (which === 'all' || which === 'catchup') await catchUp(Number(process.env.CATCHUP_CHANGES ?? 5000))
if (which === 'all' || which === 'propagation') {
  await propagation(10, 20)
  await propagation(30, 20)
}
