/**
 * Convergence, property-based: several signers edit two documents on 3-4 replicas; the signed
 * batches travel in random order, some twice, some lost and repaired later by a sync-like
 * exchange. Whatever the schedule, every replica ends with the same heads, the same value and
 * the same effective config for every node.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Automerge from '@automerge/automerge'
import fc from 'fast-check'
import { createWebCryptoEd25519 } from '../crdt/ed25519.ts'
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { effectiveConfig, type NodeIdentity } from '../crdt/effective-config.ts'
import type { SignedBatch } from '../crdt/signed-change.ts'
import type { Replica } from '../crdt/replica.ts'
import { allHashes, makeFleet, repair, thrown } from './fixtures/fleet.ts'

const DOCS = ['fleet', 'site/x'] as const
const webcrypto = createWebCryptoEd25519(globalThis.crypto.subtle)

const NODES: NodeIdentity[] = [
  { name: 'n1', labels: { role: 'pos', site: 'x' } },
  { name: 'n2', labels: { role: 'kiosk', site: 'y' } },
  { name: 'n3', labels: {} }
]

type Value = string | number | string[] | null | undefined

interface Edit {
  kind: 'edit'
  replica: number
  signer: number
  doc: number
  path: string[]
  value: Value
}
interface Deliver {
  kind: 'deliver'
  pick: number
  mode: 'once' | 'dup' | 'drop'
}
interface Sync {
  kind: 'sync'
  from: number
  to: number
  doc: number
  pick: number
}
type Step = Edit | Deliver | Sync

const key = fc.constantFrom('a', 'b', 'c')
const path: fc.Arbitrary<string[]> = fc.oneof(
  fc.tuple(fc.constant('defaults'), key).map(p => [...p]),
  fc.tuple(fc.constant('defaults'), key, key).map(p => [...p]),
  fc
    .tuple(fc.constant('groups'), fc.constantFrom('g1', 'g2'), fc.constant('config'), key)
    .map(p => [...p]),
  fc
    .tuple(
      fc.constant('groups'),
      fc.constantFrom('g1', 'g2'),
      fc.constant('selector'),
      fc.constant('role')
    )
    .map(p => [...p]),
  fc.tuple(fc.constant('nodes'), fc.constantFrom('n1', 'n2'), key).map(p => [...p]),
  fc.constant(['selector', 'site'] as string[])
)
// undefined deletes the key; null is a value (effectiveConfig reads it as "remove").
const value: fc.Arbitrary<Value> = fc.oneof(
  fc.constantFrom('pos', 'kiosk', 'x', 'y'),
  fc.integer({ min: 0, max: 9 }),
  fc.constant(['x', 'y'] as string[]),
  fc.constant(null),
  fc.constant(undefined)
)
const step: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('edit' as const),
      replica: fc.nat(),
      signer: fc.nat(),
      doc: fc.nat(1),
      path,
      value
    })
  },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('deliver' as const),
      pick: fc.nat(),
      mode: fc.constantFrom('once' as const, 'once' as const, 'dup' as const, 'drop' as const)
    })
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('sync' as const),
      from: fc.nat(),
      to: fc.nat(),
      doc: fc.nat(1),
      pick: fc.nat()
    })
  }
)

type Obj = Record<string, unknown>

function applyEdit(d: Obj, p: string[], v: Value): void {
  let o = d
  for (const seg of p.slice(0, -1)) {
    const next = o[seg]
    if (typeof next !== 'object' || next === null || Array.isArray(next)) o[seg] = {}
    o = o[seg] as Obj
  }
  const last = p.at(-1) as string
  if (v === undefined) delete o[last]
  else o[last] = Array.isArray(v) ? [...v] : v
}

async function configsOf(r: Replica): Promise<unknown[]> {
  const docs = await Promise.all(
    DOCS.map(async id => ({ id, value: (await r.open(id)).value as unknown }))
  )
  return NODES.map(n => effectiveConfig(docs, n))
}

test('replicas converge whatever the delivery order, duplicates and losses', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 3, max: 4 }),
      fc.integer({ min: 2, max: 4 }),
      fc.array(step, { minLength: 5, maxLength: 60 }),
      async (nReplicas, nAdmins, steps) => {
        const fleet = await makeFleet({ replicas: 0, admins: nAdmins, operatorDocs: ['site/x'] })
        // Half the replicas verify with WebCrypto: verifiers must not disagree.
        for (let i = 0; i < nReplicas; i++) {
          fleet.replicas.push(
            await fleet.openReplica(undefined, i % 2 === 0 ? nodeCryptoEd25519 : webcrypto)
          )
        }
        const keys = [...fleet.admins, fleet.operator]
        const inFlight: Array<{ to: number; batch: SignedBatch }> = []
        const made: string[] = []

        for (const s of steps) {
          if (s.kind === 'edit') {
            const r = s.replica % nReplicas
            const pair = keys[s.signer % keys.length]!
            const docId = DOCS[s.doc]!
            const doc = await fleet.replicas[r]!.open(docId)
            if (pair === fleet.operator && docId === 'fleet') {
              // The operator is scoped to site/x: its edit to fleet is refused locally, nothing changes.
              const before = doc.heads
              const err = await thrown(() =>
                doc.change(fleet.signer(r, pair), d => applyEdit(d, s.path, s.value))
              )
              assert.equal(err.name, 'OutOfScopeError')
              assert.deepEqual(doc.heads, before)
              continue
            }
            const batch = await doc.change(fleet.signer(r, pair), d =>
              applyEdit(d, s.path, s.value)
            )
            if (batch === undefined) continue
            made.push(batch.signatures[0]!.hash)
            for (let t = 0; t < nReplicas; t++) if (t !== r) inFlight.push({ to: t, batch })
          } else if (s.kind === 'deliver') {
            if (inFlight.length === 0) continue
            const i = s.pick % inFlight.length
            const m = inFlight[i]!
            if (s.mode !== 'dup') inFlight.splice(i, 1)
            if (s.mode !== 'drop') await fleet.replicas[m.to]!.accept(m.batch)
          } else {
            const from = s.from % nReplicas
            const to = s.to % nReplicas
            if (from === to) continue
            const hashes = allHashes(await fleet.replicas[from]!.open(DOCS[s.doc]!))
            if (hashes.length === 0) continue
            // A sync answer from somewhere in the middle of history: that change and all it led to.
            inFlight.push({
              to,
              batch: (await fleet.replicas[from]!.open(DOCS[s.doc]!)).batchFor([
                hashes[s.pick % hashes.length]!
              ])
            })
          }
        }
        // What is still in flight arrives (late); then repair what was dropped, pair by pair.
        for (const m of inFlight) await fleet.replicas[m.to]!.accept(m.batch)
        for (let round = 0; round < 3; round++) {
          let sent = 0
          for (let a = 0; a < nReplicas; a++) {
            for (let b = 0; b < nReplicas; b++) {
              if (a !== b) {
                for (const id of DOCS) {
                  sent += await repair(fleet.replicas[a]!, fleet.replicas[b]!, id)
                }
              }
            }
          }
          if (sent === 0) break
        }

        const first = fleet.replicas[0]!
        for (const id of DOCS) {
          const d0 = await first.open(id)
          for (const r of fleet.replicas.slice(1)) {
            const d = await r.open(id)
            assert.deepEqual(d.heads, d0.heads, `heads of ${id}`)
            assert.deepEqual(Automerge.toJS(d.value), Automerge.toJS(d0.value), `value of ${id}`)
            assert.equal(d.pendingCount, 0)
          }
        }
        // Every change anyone made reached every replica.
        for (const r of fleet.replicas) {
          const held = new Set<string>()
          for (const id of DOCS) for (const h of allHashes(await r.open(id))) held.add(h)
          assert.deepEqual(
            made.filter(h => !held.has(h)),
            []
          )
        }
        const expected = await configsOf(first)
        for (const r of fleet.replicas.slice(1)) assert.deepEqual(await configsOf(r), expected)
      }
    ),
    { numRuns: 100 }
  )
})
