/**
 * History diffs (crdt/change-history.ts) found from each change's own operations say exactly
 * what diffing whole views of the document before and after the change says, for random edits
 * and for concurrent ones merged; pages are newest first, cover every change once, and a bad
 * cursor is refused by name.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import { changeDiff, historyPage, HISTORY_VALUE_CHARS } from '../crdt/change-history.ts'
import { applyOps, diffMaps, plainValue, type DiffOp } from '../crdt/config-diff.ts'
import type { SignedDocument } from '../crdt/document.ts'
import { makeFleet, repair, thrown } from './fixtures/fleet.ts'

type Json = Record<string, unknown>

/** What the daemon answered before: two whole views per change. */
function viaViews(doc: SignedDocument, hash: string): DiffOp[] {
  const h = doc.history().find(x => x.hash === hash)!
  const before = (plainValue(doc.valueAt(h.deps)) ?? {}) as Json
  const after = (plainValue(doc.valueAt([hash])) ?? {}) as Json
  return diffMaps(before, after).sort((x, y) =>
    x.path.join('\u0000') < y.path.join('\u0000') ? -1 : 1
  )
}

const key = fc.constantFrom('a', 'b', 'c', 'files', '/etc/motd', 'x y')
const leaf = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.integer(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.oneof(fc.string({ maxLength: 4 }), fc.integer()), { maxLength: 3 })
)
const value: fc.Arbitrary<unknown> = fc.letrec(tie => ({
  v: fc.oneof({ depthSize: 'small' }, leaf, fc.dictionary(key, tie('v'), { maxKeys: 3 }))
})).v
/** An edit: set or delete at a path under one of the document's top-level maps. */
const edit = fc.record({
  top: fc.constantFrom('defaults', 'groups', 'nodes'),
  path: fc.array(key, { minLength: 1, maxLength: 3 }),
  value: fc.option(value, { nil: undefined })
})

function applyEdit(d: Json, e: { top: string; path: string[]; value: unknown }): void {
  applyOps(d, [
    e.value === undefined
      ? { op: 'delete', path: [e.top, ...e.path], old: null }
      : { op: 'set', path: [e.top, ...e.path], value: e.value, had: false }
  ])
}

describe('history diffs', () => {
  it('equal the diff of whole views before and after, for random edits', async () => {
    const fleet = await makeFleet({ replicas: 1, label: 'history-prop' })
    let n = 0
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(edit, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 6 }),
        async changes => {
          const doc = await fleet.replicas[0]!.open(`prop/${n++}`)
          for (const edits of changes) {
            await doc.change(fleet.signer(0, fleet.admins[0]!), d => {
              for (const e of edits) applyEdit(d, e)
            })
          }
          for (const hash of doc.changeHashes()) {
            assert.deepEqual(
              changeDiff(doc, hash, doc.history().find(h => h.hash === hash)!.deps),
              viaViews(doc, hash)
            )
          }
        }
      ),
      { numRuns: 60 }
    )
  })

  it('equal them for concurrent changes merged, and for a long string, cut', async () => {
    const fleet = await makeFleet({ replicas: 2, label: 'history-merge' })
    const [a, b] = [await fleet.replicas[0]!.open('fleet'), await fleet.replicas[1]!.open('fleet')]
    await a.change(fleet.signer(0, fleet.admins[0]!), d => {
      ;(d as Json).defaults = { x: 1, files: { '/etc/a': { content: 'a' } } }
    })
    await repair(fleet.replicas[0]!, fleet.replicas[1]!, 'fleet')
    await a.change(fleet.signer(0, fleet.admins[0]!), d => {
      ;((d as Json).defaults as Json).x = 2
    })
    await b.change(fleet.signer(1, fleet.admins[1]!), d => {
      ;((d as Json).defaults as Json).x = 3
      delete ((d as Json).defaults as Json).files
    })
    await repair(fleet.replicas[1]!, fleet.replicas[0]!, 'fleet')
    for (const hash of a.changeHashes()) {
      const deps = a.history().find(h => h.hash === hash)!.deps
      assert.deepEqual(changeDiff(a, hash, deps), viaViews(a, hash))
    }
    await a.change(fleet.signer(0, fleet.admins[0]!), d => {
      ;((d as Json).defaults as Json).big = 'x'.repeat(HISTORY_VALUE_CHARS + 10)
    })
    const last = a.changeHashes().at(-1)!
    const [op] = changeDiff(a, last, a.history().at(-1)!.deps)
    assert.equal(op?.op, 'set')
    assert.match(String(op?.op === 'set' ? op.value : ''), /… \(10 more characters\)$/)
  })
})

describe('history pages', () => {
  it('are newest first, cover every change once, and refuse a cursor that is not one', async () => {
    const fleet = await makeFleet({ replicas: 1, label: 'history-pages' })
    const replica = fleet.replicas[0]!
    const [d1, d2] = [await replica.open('fleet'), await replica.open('site/x')]
    for (let i = 0; i < 23; i++) {
      await (i % 3 === 0 ? d2 : d1).change(
        fleet.signer(0, fleet.admins[0]!),
        d => {
          ;((d as Json).defaults as Json)[`k${i}`] = i
        },
        `change ${i}`
      )
    }
    const lookup = (k: string) => replica.trust.lookup(k)
    const seen: string[] = []
    let before: string | undefined
    for (;;) {
      const page = await historyPage([d1, d2], { limit: 5, before, lookup })
      assert.ok(page.items.length <= 5)
      seen.push(...page.items.map(i => i.message ?? ''))
      if (page.next === null) break
      before = page.next
    }
    assert.equal(seen.length, 23)
    assert.equal(new Set(seen).size, 23)
    const all = (await historyPage([d1, d2], { limit: 100, lookup })).items
    assert.deepEqual(
      all.map(i => i.message),
      seen
    )
    const made = (m: string | null): number => Number(m?.split(' ')[1])
    for (let i = 1; i < all.length; i++) {
      const [newer, older] = [all[i - 1]!, all[i]!]
      assert.ok(newer.time >= older.time)
      // one document's changes of the same second come newest first, as they were made
      if (newer.doc === older.doc && newer.time === older.time) {
        assert.ok(made(newer.message) > made(older.message))
      }
    }
    assert.equal(all[0]?.signerName, 'admin-0')
    const err = await thrown(() => historyPage([d1], { before: 'nonsense', lookup }))
    assert.equal(err.name, 'MalformedInputError')
  })
})
