/**
 * Child process for bench/crdt.bench.ts: opens the LevelStore at argv[2] and a replica on it,
 * in a fresh process, and prints one JSON line: time to open-and-ready and resident memory.
 */
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { LevelStore } from '../crdt/level-store.ts'
import { Replica } from '../crdt/replica.ts'

const dir = process.argv[2]
if (dir === undefined) throw new Error('usage: crdt-load-child.ts <store dir>')
const rssBeforeMB = process.memoryUsage().rss / 2 ** 20
const t0 = performance.now()
const store = await LevelStore.open(dir)
const replica = await Replica.open({ store, ed: nodeCryptoEd25519 })
const doc = await replica.open('fleet')
const openMs = performance.now() - t0
const sinceStartMs = process.uptime() * 1000
const rssMB = process.memoryUsage().rss / 2 ** 20
process.stdout.write(
  JSON.stringify({
    openMs,
    sinceStartMs,
    rssMB,
    rssBeforeMB,
    changes: doc.history().length,
    heads: doc.heads.length
  }) + '\n'
)
await store.close()
