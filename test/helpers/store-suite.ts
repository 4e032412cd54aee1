/**
 * The shared suite every `Store` implementation must pass (as automerge-repo's
 * `runStorageAdapterTests`): batch order, snapshot compaction, trust, metadata, closing; a
 * replica reopened on the store comes back as it was; batches waiting for dependencies are
 * applied once those arrive. `test/crdt-store.test.ts` runs it against MemoryStore and LevelStore;
 * a new store (IndexedDB, say) adds one `runStoreTests` call.
 */
import { describe, test } from 'node:test'
import assert from 'node:assert/strict'
import * as Automerge from '@automerge/automerge'
import { utf8 } from '../../crdt/bytes.ts'
import type { Store } from '../../crdt/store.ts'
import { Replica } from '../../crdt/replica.ts'
import { documentSchema, genesisHash, SNAPSHOT_EVERY_BATCHES } from '../../crdt/document.ts'
import { makeFleet, thrown } from './fleet.ts'

type Doc = Record<string, unknown>

export interface StoreFixture {
  store: Store
  /** The same data, as a process restart would see it. */
  reopen: () => Promise<Store>
  teardown: () => Promise<void>
}

const bytes = (...xs: number[]): Uint8Array => Uint8Array.from(xs)
/** Plain Uint8Array copy: LevelStore hands out Buffers (a Uint8Array subclass), which is fine. */
const plain = (b: Uint8Array | undefined): Uint8Array | undefined =>
  b === undefined ? undefined : Uint8Array.from(b)

export function runStoreTests(name: string, setup: () => Promise<StoreFixture>): void {
  describe(`${name} store`, () => {
    test('batches come back in append order, per document', async () => {
      const { store, teardown } = await setup()
      try {
        const seqs: number[] = []
        for (let i = 1; i <= 5; i++) seqs.push(await store.appendBatch('fleet', bytes(i)))
        assert.deepEqual(seqs, [1, 2, 3, 4, 5])
        assert.equal(
          await store.appendBatch('site/x', bytes(42)),
          1,
          'sequence numbers are per document'
        )
        // Concurrent appends still get dense, ordered sequence numbers.
        const more = await Promise.all([6, 7, 8].map(i => store.appendBatch('fleet', bytes(i))))
        assert.deepEqual(more, [6, 7, 8])
        assert.deepEqual(
          (await store.batchesAfter('fleet', 0)).map(b => [b.seq, b.bytes[0]]),
          [
            [1, 1],
            [2, 2],
            [3, 3],
            [4, 4],
            [5, 5],
            [6, 6],
            [7, 7],
            [8, 8]
          ]
        )
        assert.deepEqual(
          (await store.batchesAfter('fleet', 6)).map(b => b.seq),
          [7, 8]
        )
        assert.deepEqual(await store.batchesAfter('fleet', 8), [])
        assert.deepEqual(await store.batchesAfter('nothing', 0), [])
        assert.deepEqual(await store.listDocs(), ['fleet', 'site/x'])
      } finally {
        await teardown()
      }
    })

    test('a snapshot compacts the batches it includes', async () => {
      const { store, teardown } = await setup()
      try {
        for (let i = 1; i <= 5; i++) await store.appendBatch('fleet', bytes(i))
        const snap = { upTo: 3, doc: bytes(9, 9), signatures: bytes(7) }
        await store.putSnapshot('fleet', snap)
        const got = await store.getSnapshot('fleet')
        assert.deepEqual(
          { upTo: got?.upTo, doc: plain(got?.doc), signatures: plain(got?.signatures) },
          snap
        )
        assert.deepEqual(
          (await store.batchesAfter('fleet', 0)).map(b => b.seq),
          [4, 5]
        )
        assert.equal(
          await store.appendBatch('fleet', bytes(6)),
          6,
          'numbering continues after compaction'
        )
        await store.putSnapshot('fleet', { upTo: 6, doc: bytes(1), signatures: bytes() })
        assert.deepEqual(await store.batchesAfter('fleet', 0), [])
        assert.deepEqual(plain((await store.getSnapshot('fleet'))?.doc), bytes(1))
        assert.equal(await store.getSnapshot('site/x'), undefined)
        assert.deepEqual(
          await store.listDocs(),
          ['fleet'],
          'a document with only a snapshot is still listed'
        )
      } finally {
        await teardown()
      }
    })

    test('trust statements come back by version', async () => {
      const { store, teardown } = await setup()
      try {
        assert.deepEqual(await store.listTrust(), [])
        await store.putTrust(2, utf8('two'))
        await store.putTrust(1, utf8('one'))
        await store.putTrust(10, utf8('ten'))
        assert.deepEqual(
          (await store.listTrust()).map(b => new TextDecoder().decode(b)),
          ['one', 'two', 'ten']
        )
      } finally {
        await teardown()
      }
    })

    test('metadata is kept, listed by prefix and deleted', async () => {
      const { store, teardown } = await setup()
      try {
        assert.equal(await store.getMeta('status/a'), undefined)
        await store.putMeta('status/b', bytes(2))
        await store.putMeta('status/a', bytes(1))
        await store.putMeta('identity', bytes(3))
        assert.deepEqual(plain(await store.getMeta('status/a')), bytes(1))
        assert.deepEqual(
          (await store.listMeta('status/')).map(([k, v]) => [k, plain(v)]),
          [
            ['status/a', bytes(1)],
            ['status/b', bytes(2)]
          ]
        )
        await store.deleteMeta('status/a')
        assert.deepEqual(
          (await store.listMeta('status/')).map(([k]) => k),
          ['status/b']
        )
        assert.equal(await store.getMeta('status/a'), undefined)
      } finally {
        await teardown()
      }
    })

    test('a closed store refuses every operation with ClosedError', async () => {
      const { store, teardown } = await setup()
      try {
        await store.close()
        const ops: Array<() => Promise<unknown>> = [
          () => store.appendBatch('fleet', bytes(1)),
          () => store.batchesAfter('fleet', 0),
          () => store.putSnapshot('fleet', { upTo: 0, doc: bytes(), signatures: bytes() }),
          () => store.getSnapshot('fleet'),
          () => store.listDocs(),
          () => store.putTrust(1, bytes()),
          () => store.listTrust(),
          () => store.getMeta('a'),
          () => store.putMeta('a', bytes()),
          () => store.deleteMeta('a'),
          () => store.listMeta('')
        ]
        for (const op of ops) assert.equal((await thrown(op)).name, 'ClosedError')
      } finally {
        await teardown()
      }
    })

    test('a replica reopened on the store has the same heads and values', async () => {
      const { store, reopen, teardown } = await setup()
      try {
        const fleet = await makeFleet({ replicas: 0, label: 'store-reopen' })
        const replica = await fleet.openReplica(store)
        const signer = Replica.signer(fleet.admins[0]!)
        const doc = await replica.open<Doc>('fleet')
        // Past one automatic snapshot, so reopening reads a snapshot and the batches after it.
        const n = SNAPSHOT_EVERY_BATCHES + 15
        for (let i = 0; i < n; i++) {
          await doc.change(signer, d => {
            d[`k${i % 20}`] = i
          })
        }
        const site = await replica.open<Doc>('site/x')
        await site.change(Replica.signer(fleet.operator), d => {
          d.ntp = 'pool.ntp.org'
        })
        assert.ok((await store.getSnapshot('fleet')) !== undefined)
        assert.equal((await store.batchesAfter('fleet', 0)).length, 15)
        const heads = { fleet: doc.heads, site: site.heads }
        const values = { fleet: Automerge.toJS(doc.value), site: Automerge.toJS(site.value) }

        const again = await Replica.open({ store: await reopen(), ed: fleet.ed })
        assert.equal(again.fleetId, replica.fleetId)
        assert.deepEqual(again.documentIds(), ['fleet', 'site/x'])
        const doc2 = await again.open<Doc>('fleet')
        const site2 = await again.open<Doc>('site/x')
        assert.deepEqual({ fleet: doc2.heads, site: site2.heads }, heads)
        assert.deepEqual(
          { fleet: Automerge.toJS(doc2.value), site: Automerge.toJS(site2.value) },
          values
        )
        // The reopened replica can still serve its history to a peer, signatures included.
        const peer = await fleet.openReplica()
        await peer.accept(doc2.batchFor(doc2.history().map(h => h.hash)))
        assert.deepEqual((await peer.open('fleet')).heads, heads.fleet)
        // And it can keep writing as the same key.
        await doc2.change(signer, d => {
          d.after = true
        })
        assert.equal(doc2.value.after, true)
      } finally {
        await teardown()
      }
    })

    test('a batch waiting for its dependencies is applied once they arrive', async () => {
      const { store, teardown } = await setup()
      try {
        const fleet = await makeFleet({ replicas: 1, label: 'store-pending' })
        const author = await fleet.replicas[0]!.open<Doc>('fleet')
        const signer = Replica.signer(fleet.admins[0]!)
        const batches = []
        for (let i = 0; i < 4; i++) {
          batches.push(
            (await author.change(signer, d => {
              d[`k${i}`] = i
            }))!
          )
        }
        const replica = await fleet.openReplica(store)
        const changes: string[][] = []
        replica.addEventListener('change', e =>
          changes.push((e as CustomEvent<{ heads: string[] }>).detail.heads)
        )
        // Newest first: each waits for the one before it.
        for (const b of batches.slice(1).reverse()) {
          assert.equal((await replica.accept(b)).status, 'pending')
        }
        const doc = await replica.open<Doc>('fleet')
        assert.equal(doc.pendingCount, 3)
        assert.deepEqual(
          doc.heads,
          [genesisHash('fleet')],
          'nothing past the genesis change is applied yet'
        )
        assert.deepEqual(await store.batchesAfter('fleet', 0), [], 'pending batches are not stored')
        const result = await replica.accept(batches[0]!)
        assert.equal(result.status, 'applied')
        assert.equal(result.applied, 4)
        assert.deepEqual(doc.heads, author.heads)
        assert.deepEqual(Automerge.toJS(doc.value), {
          ...documentSchema('fleet'),
          k0: 0,
          k1: 1,
          k2: 2,
          k3: 3
        })
        assert.equal(doc.pendingCount, 0)
        assert.equal((await store.batchesAfter('fleet', 0)).length, 4)
        assert.deepEqual(changes.at(-1), author.heads)
        assert.equal((await replica.accept(batches[2]!)).status, 'duplicate')
      } finally {
        await teardown()
      }
    })
  })
}
