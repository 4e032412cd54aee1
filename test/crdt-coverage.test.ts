/**
 * Coverage costs time linear in the batch, and a batch from keys the fleet does not know costs
 * almost nothing: the CPU-freeze attack of issue 10 (a 20,000-change chain plus 4,095 one-change
 * leaves, each leaf signed) is refused at once when the keys are strangers', and verified in time
 * proportional to its size, with the event loop free, when they are a (stolen) admin key's.
 */
import { describe, test, before } from 'node:test'
import assert from 'node:assert/strict'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import * as Automerge from '@automerge/automerge'
import { concatBytes, toHex } from '../crdt/bytes.ts'
import type { KeyPair } from '../crdt/keys.ts'
import { genesisHash } from '../crdt/document.ts'
import { MAX_DOCUMENTS } from '../crdt/replica.ts'
import {
  changeDigest,
  newActorId,
  readChanges,
  signChange,
  verifyCoverage,
  type SignedBatch
} from '../crdt/signed-change.ts'
import { makeFleet, testKey, thrown, type TestFleet } from './fixtures/fleet.ts'

const CHAIN = 20_000
const LEAVES = 4_095

let fleet: TestFleet
let chain: Automerge.Doc<Record<string, unknown>>

/** Session bytes for leaf `i`: actor ids must differ, so every leaf needs its own signature. */
const session = (i: number): Uint8Array => {
  const s = new Uint8Array(8)
  new DataView(s.buffer).setUint32(4, i + 1)
  return s
}

/**
 * The attack batch: a chain of CHAIN changes by one admin actor (its tip signed), and LEAVES
 * one-change leaves on its tip, leaf i by an actor of `leafKeys[i % leafKeys.length]`, each
 * signed by that key. One bundle chunk, 4,096 signatures.
 */
async function attackBatch(leafKeys: KeyPair[]): Promise<SignedBatch> {
  const fleetId = fleet.replicas[0]!.fleetId
  const admin = fleet.admins[0]!
  const tip = Automerge.getHeads(chain)[0]!
  const template = Automerge.decodeChange(
    Automerge.getLastLocalChange(
      Automerge.change(Automerge.clone(chain, { actor: newActorId(admin.publicKey) }), d => {
        d.y = 1
      })
    )!
  )
  const leaves: Uint8Array[] = []
  const signatures = [await signChange(admin, fleetId, 'fleet', tip, fleet.ed)]
  for (let i = 0; i < LEAVES; i++) {
    const key = leafKeys[i % leafKeys.length]!
    const leaf = Automerge.encodeChange({
      ...template,
      actor: newActorId(key.publicKey, session(i)),
      deps: [tip]
    })
    leaves.push(leaf)
    const hash = Automerge.decodeChange(leaf).hash
    signatures.push(await signChange(key, fleetId, 'fleet', hash, fleet.ed))
  }
  const all = Automerge.load(concatBytes(Automerge.save(chain), ...leaves))
  const hashes = Automerge.getChangesMetaSince(all, [])
    .map(m => m.hash)
    .filter(h => h !== genesisHash('fleet'))
  return { docId: 'fleet', chunks: [Automerge.saveBundle(all, hashes)], signatures }
}

/** Run `fn`, returning how long it took and the event loop's longest stall meanwhile (ms). */
async function timed<R>(fn: () => Promise<R>): Promise<{ ms: number; stallMs: number; result: R }> {
  const delay = monitorEventLoopDelay({ resolution: 5 })
  delay.enable()
  const started = performance.now()
  const result = await fn()
  const ms = performance.now() - started
  delay.disable()
  return { ms, stallMs: delay.max / 1e6, result }
}

before(async () => {
  fleet = await makeFleet({ replicas: 1, admins: 1, label: 'coverage' })
  const start = (await fleet.replicas[0]!.open('fleet')).value
  chain = Automerge.clone(start, { actor: newActorId(fleet.admins[0]!.publicKey) })
  for (let i = 0; i < CHAIN; i++) {
    chain = Automerge.change(chain, d => {
      d.x = i
    })
  }
})

describe('the CPU-freeze batch (issue 10, item 1)', () => {
  test('signed by throw-away keys, it is refused in milliseconds, before any signature is checked', async () => {
    const strangers = Array.from({ length: 64 }, (_, i) => testKey(`coverage/stranger-${i}`))
    const batch = await attackBatch(strangers)
    const replica = await fleet.openReplica()
    const { ms, stallMs, result } = await timed(() => thrown(() => replica.accept(batch)))
    assert.equal(result.name, 'UnknownKeyError')
    assert.ok(ms < 1_000, `refused in ${ms.toFixed(0)} ms`)
    assert.ok(stallMs < 1_000, `event loop stalled ${stallMs.toFixed(0)} ms`)
    assert.deepEqual(replica.documentIds(), [], 'no document was created')
  })

  test('signed by an admin key, its coverage is checked in time linear in the batch, yielding to the event loop', async () => {
    const batch = await attackBatch([fleet.admins[0]!])
    const metas = readChanges(batch.chunks).filter(m => m.hash !== genesisHash('fleet'))
    assert.equal(metas.length, CHAIN + LEAVES)
    const coverage = await timed(() =>
      verifyCoverage(
        fleet.replicas[0]!.fleetId,
        'fleet',
        metas,
        batch.signatures,
        fleet.ed,
        () => {}
      )
    )
    // Baseline, measured in this run: verifying the same 4,096 signatures and nothing else.
    const fleetId = fleet.replicas[0]!.fleetId
    const started = performance.now()
    for (const sig of batch.signatures) {
      await fleet.ed.verify(sig.key, changeDigest(fleetId, 'fleet', sig.hash), sig.signature)
    }
    const baselineMs = performance.now() - started
    // The walk over 24,095 changes adds a few ms to the signatures, and the event loop is free
    // every 32 of them. The old walk (every signature's whole ancestry) held the event loop for
    // 24-39 s on this batch, ~100x the signatures' cost. The stall bound leaves room for a
    // machine shared with other test runs (a load of 24 on 2 cores gave 310 ms).
    assert.ok(
      coverage.ms < 3 * baselineMs + 500,
      `coverage took ${coverage.ms.toFixed(0)} ms; the signatures alone ${baselineMs.toFixed(0)} ms`
    )
    assert.ok(coverage.stallMs < 1_000, `event loop stalled ${coverage.stallMs.toFixed(0)} ms`)
    assert.equal(coverage.result.signatures.length, LEAVES + 1)
  })
})

describe('coverage', () => {
  test("a change is covered only through its own actor's chain, never through another actor's", async () => {
    const replica = fleet.replicas[0]!
    const [a] = fleet.admins as [KeyPair]
    const doc = await replica.open('fleet')
    // Actor 1 writes, actor 2 builds on it; only actor 2's change is signed.
    let d1 = Automerge.change(Automerge.clone(doc.value, { actor: newActorId(a.publicKey) }), d => {
      d.one = 1
    })
    const c1 = Automerge.getLastLocalChange(d1)!
    d1 = Automerge.change(Automerge.clone(d1, { actor: newActorId(a.publicKey) }), d => {
      d.two = 2
    })
    const c2 = Automerge.getLastLocalChange(d1)!
    const h2 = readChanges([c2])[0]!.hash
    const batch: SignedBatch = {
      docId: 'fleet',
      chunks: [c1, c2],
      signatures: [await signChange(a, replica.fleetId, 'fleet', h2, fleet.ed)]
    }
    assert.equal((await thrown(() => replica.accept(batch))).name, 'UnsignedChangeError')
  })

  test('a change that skips a sequence number of its actor is refused before Automerge sees it', async () => {
    // Automerge panics on such a change ("assertion `left == right` failed"), and a panic
    // terminates its WebAssembly module for the whole process.
    const replica = fleet.replicas[0]!
    const [a] = fleet.admins as [KeyPair]
    const doc = await replica.open('fleet')
    const signer = fleet.signer(0, a)
    await doc.change(signer, d => {
      d.before = 1
    })
    const next = Automerge.change(Automerge.clone(doc.value, { actor: signer.actor }), d => {
      d.gap = 1
    })
    const decoded = Automerge.decodeChange(Automerge.getLastLocalChange(next)!)
    const gap = Automerge.encodeChange({ ...decoded, seq: decoded.seq + 3 })
    const hash = readChanges([gap])[0]!.hash
    const batch: SignedBatch = {
      docId: 'fleet',
      chunks: [gap],
      signatures: [await signChange(a, replica.fleetId, 'fleet', hash, fleet.ed)]
    }
    assert.equal((await thrown(() => replica.accept(batch))).name, 'MalformedInputError')
    // Automerge still works.
    await doc.change(signer, d => {
      d.after = 1
    })
    assert.equal(doc.value.after, 1)
  })

  test("Automerge lists an actor's previous change among each change's dependencies", () => {
    // Coverage walks these links (signed-change.ts); an Automerge upgrade that dropped them
    // would make every honest batch of interleaved writers look unsigned.
    const [a, b] = [toHex(testKey('x').publicKey), toHex(testKey('y').publicKey)]
    let one = Automerge.change(
      Automerge.init<Record<string, number>>({ actor: `${a}00000001` }),
      d => {
        d.a = 1
      }
    )
    let two = Automerge.change(Automerge.clone(one, { actor: `${b}00000001` }), d => {
      d.b = 1
    })
    one = Automerge.merge(one, two)
    one = Automerge.change(one, d => {
      d.a = 2
    })
    two = one
    const metas = Automerge.getChangesMetaSince(two, [])
    const first = metas.find(m => m.actor === `${a}00000001` && m.seq === 1)!
    const last = metas.find(m => m.actor === `${a}00000001` && m.seq === 2)!
    assert.ok(last.deps.includes(first.hash), 'seq 2 names seq 1 although it was not a head')
  })
})

describe('documents come into being only through a valid change (issue 10, item 6)', () => {
  test('opening made-up document ids creates nothing a peer would see, and real documents still can be made', async () => {
    const replica = await fleet.openReplica()
    for (let i = 0; i < MAX_DOCUMENTS + 100; i++) await replica.open(`made-up/${i}`)
    assert.deepEqual(replica.documentIds(), [], 'nothing listed, so nothing announced')
    assert.deepEqual(await replica.store.listDocs(), [], 'nothing stored')
    const doc = await replica.open('site/real')
    await doc.change(fleet.signer(5, fleet.admins[0]!), d => {
      d.ok = true
    })
    assert.deepEqual(replica.documentIds(), ['site/real'])
  })
})
