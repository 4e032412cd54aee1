/**
 * Durability: a change is on disk once `accept` resolves. A child process accepts a stream of
 * signed changes into a LevelStore and prints each hash after `accept`; it is killed with
 * SIGKILL mid-stream; the store then opens cleanly and holds every change that was printed.
 */
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { decodeBatch } from '../crdt/signed-change.ts'
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { LevelStore } from '../crdt/level-store.ts'
import { Replica } from '../crdt/replica.ts'
import { MemoryStore } from '../crdt/store.ts'
import { SNAPSHOT_EVERY_BATCHES } from '../crdt/document.ts'
import { toHex } from '../crdt/bytes.ts'
import { makeFleet, testKey } from './fixtures/fleet.ts'

const FIXTURE = new URL('./fixtures/crdt-accept-stream.ts', import.meta.url).pathname
const dirs: string[] = []
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

/** Run the child until it has printed at least `killAfter` hashes, SIGKILL it, return what it printed. */
async function acceptThenKill(dir: string, seed: string, killAfter: number): Promise<string[]> {
  const child = spawn(process.execPath, [FIXTURE, dir, seed, '100000'], {
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const exited = once(child, 'exit', { signal: AbortSignal.timeout(60_000) })
  const printed: string[] = []
  try {
    for await (const line of createInterface({ input: child.stdout })) {
      // Only whole hashes count: a line cut by the kill was not printed.
      if (!/^[0-9a-f]{64}$/.test(line)) continue
      printed.push(line)
      if (printed.length === killAfter) child.kill('SIGKILL')
    }
    const [code, signal] = await exited
    assert.equal(
      signal,
      'SIGKILL',
      `the child should be killed mid-stream, but it exited with code ${code}`
    )
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
  return printed
}

for (const killAfter of [40, SNAPSHOT_EVERY_BATCHES + 37]) {
  test(
    `every change accepted before a SIGKILL is in the store (killed after ${killAfter})`,
    { timeout: 90_000 },
    async () => {
      const dir = await mkdtemp(join(tmpdir(), 'rhizome-durability-'))
      dirs.push(dir)
      const printed = await acceptThenKill(
        dir,
        toHex(testKey(`durability-${killAfter}`).seed),
        killAfter
      )
      assert.ok(printed.length >= killAfter)

      const store = await LevelStore.open(dir)
      try {
        const replica = await Replica.open({ store, ed: nodeCryptoEd25519 })
        assert.deepEqual(replica.documentIds(), ['fleet'])
        const doc = await replica.open<{ count?: number }>('fleet')
        const missing = printed.filter(h => !doc.has([h]))
        assert.deepEqual(
          missing,
          [],
          `${missing.length} of ${printed.length} acknowledged changes were lost`
        )
        assert.ok((doc.value.count ?? 0) >= printed.length)
        // Loads cleanly: every stored batch after the snapshot decodes (none was skipped as torn).
        const snapshot = await store.getSnapshot('fleet')
        for (const { bytes } of await store.batchesAfter('fleet', snapshot?.upTo ?? 0)) {
          decodeBatch(bytes)
        }
        if (killAfter > SNAPSHOT_EVERY_BATCHES) {
          assert.ok(snapshot !== undefined, 'a snapshot was written on the way')
        }
        // The history it holds is complete and self-covering: a fresh peer accepts all of it.
        const peer = await Replica.open({
          store: new MemoryStore(),
          ed: nodeCryptoEd25519,
          genesis: replica.trust.all[0]!
        })
        await peer.accept(doc.batchFor(doc.history().map(h => h.hash)))
        assert.deepEqual((await peer.open('fleet')).heads, doc.heads)
      } finally {
        await store.close()
      }
    }
  )
}

test('a reopened document names its writers from what its snapshot stored, while its heads are the same', async () => {
  const fleet = await makeFleet({ replicas: 1, operatorDocs: ['site/x'], label: 'writers' })
  const store = fleet.stores[0]!
  const first = fleet.replicas[0]!
  const doc = await first.open<{ n?: number }>('site/x')
  await doc.change(fleet.signer(0, fleet.admins[0]!), d => {
    d.n = 1
  })
  await doc.change(fleet.signer(0, fleet.operator), d => {
    d.n = 2
  })
  const writers = [fleet.admins[0]!, fleet.operator].map(k => toHex(k.publicKey)).sort()
  assert.deepEqual(doc.writerKeys(), writers)
  await first.close()

  // The stored list is what a reopened document answers with: proven by planting a different
  // list under the same heads (a store is the daemon's own; nothing else writes it).
  const stored = await store.getMeta('writers/site/x')
  assert.ok(stored !== undefined, 'the snapshot stored the writers')
  const planted = Uint8Array.from(stored)
  planted.set(fleet.admins[1]!.publicKey, planted.length - 32)
  await store.putMeta('writers/site/x', planted)
  const again = await (await fleet.openReplica(store)).open<{ n?: number }>('site/x')
  assert.deepEqual(again.writerKeys(), [writers[0]!, toHex(fleet.admins[1]!.publicKey)].sort())

  // A new change moves the heads on: the stored list no longer answers, the changes do.
  await again.change(fleet.signer(0, fleet.admins[1]!), d => {
    d.n = 3
  })
  assert.deepEqual(again.writerKeys(), [...writers, toHex(fleet.admins[1]!.publicKey)].sort())
})
