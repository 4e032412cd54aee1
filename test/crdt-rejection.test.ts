/**
 * Rejection: nothing unsigned, wrongly signed, unauthorised, mangled or oversized is applied.
 * Each bad batch is refused with its own named error, and the document, its pending set and
 * its store are exactly as before. Plus the trust chain's refusals and key-file passphrases.
 */
import { describe, test, before } from 'node:test'
import assert from 'node:assert/strict'
import * as Automerge from '@automerge/automerge'
import fc from 'fast-check'
import { ByteWriter, toHex } from '../crdt/bytes.ts'
import { isPeerFault } from '../crdt/errors.ts'
import { decryptKeyFile, encryptKeyFile, parseKeyFile, type KeyPair } from '../crdt/keys.ts'
import {
  decodeBatch,
  encodeBatch,
  MAX_BATCH_BYTES,
  MAX_CHUNKS_PER_BATCH,
  MAX_SIGNATURES_PER_BATCH,
  type SignedBatch
} from '../crdt/signed-change.ts'
import { createGenesis, nextStatement, statementHash, TrustChain } from '../crdt/trust.ts'
import { verifyBatch, type SignedDocument } from '../crdt/document.ts'
import type { Replica } from '../crdt/replica.ts'
import type { MemoryStore } from '../crdt/store.ts'
import {
  forgeBatch,
  makeFleet,
  repair,
  testKey,
  thrown,
  type ForgeOptions,
  type TestFleet
} from './fixtures/fleet.ts'

type Doc = Record<string, unknown>

let fleet: TestFleet
let target: Replica
let targetStore: MemoryStore
let author: Replica

before(async () => {
  fleet = await makeFleet({ replicas: 2, admins: 2, operatorDocs: ['site/x'] })
  target = fleet.replicas[0]!
  targetStore = fleet.stores[0]!
  author = fleet.replicas[1]!
  // A shared history, so "unchanged" means something.
  for (const docId of ['fleet', 'site/x']) {
    const doc = await author.open<Doc>(docId)
    for (let i = 0; i < 3; i++) {
      const batch = await doc.change(fleet.signer(1, fleet.admins[0]!), d => {
        d[`k${i}`] = i
      })
      await target.accept(batch!)
    }
  }
})

/** A fresh, valid batch from the author that the target does not hold yet. */
async function validBatch(docId = 'fleet'): Promise<SignedBatch> {
  const doc = await author.open<Doc>(docId)
  const batch = await doc.change(fleet.signer(1, fleet.admins[1]!), d => {
    d.n = ((d.n as number | undefined) ?? 0) + 1
  })
  return batch!
}

async function stateOf(docId: string): Promise<unknown> {
  const doc = await target.open<Doc>(docId)
  return {
    heads: doc.heads,
    value: Automerge.toJS(doc.value),
    pending: doc.pendingCount,
    stored: (await targetStore.batchesAfter(docId, 0)).length,
    docs: target.documentIds()
  }
}

/** Offer `input` (bytes as from the wire, or a decoded batch) and expect `name`, with nothing changed. */
async function expectRejected(
  input: SignedBatch | Uint8Array,
  name: string,
  docId = 'fleet'
): Promise<void> {
  const before = await stateOf(docId)
  const err = await thrown(async () =>
    target.accept(input instanceof Uint8Array ? decodeBatch(input) : input)
  )
  assert.equal(err.name, name, `expected ${name}, got ${err.name}: ${err.message}`)
  assert.deepEqual(await stateOf(docId), before, 'the document and store are untouched')
}

/** A batch of `doc` setting `evil`, signed by `pair` (with `opts` as forgeBatch takes them). */
function forgeEvil(
  doc: SignedDocument<Doc>,
  pair: KeyPair,
  opts?: ForgeOptions
): Promise<SignedBatch> {
  return forgeBatch(doc, target.fleetId, pair, { evil: true }, fleet.ed, opts)
}

function flipBit(bytes: Uint8Array, bit: number): Uint8Array {
  const out = bytes.slice()
  out[Math.floor(bit / 8) % out.length]! ^= 1 << (bit % 8)
  return out
}

describe('signed batches', () => {
  test('an unsigned change is rejected', async () => {
    const batch = await validBatch()
    await expectRejected({ ...batch, signatures: [] }, 'UnsignedChangeError')
    // Two changes by two actors, only one of them signed.
    const other = await forgeBatch(
      await target.open<Doc>('fleet'),
      target.fleetId,
      fleet.admins[0]!,
      { z: 1 },
      fleet.ed
    )
    await expectRejected(
      { docId: 'fleet', chunks: [...batch.chunks, ...other.chunks], signatures: batch.signatures },
      'UnsignedChangeError'
    )
  })

  test('a wrongly signed change is rejected', async () => {
    const batch = await validBatch()
    const sig = batch.signatures[0]!
    for (const bit of [0, 100, 511]) {
      await expectRejected(
        { ...batch, signatures: [{ ...sig, signature: flipBit(sig.signature, bit) }] },
        'InvalidSignatureError'
      )
    }
    // A signature made for another fleet does not verify here.
    const foreign = await forgeBatch(
      await target.open<Doc>('fleet'),
      target.fleetId,
      fleet.admins[0]!,
      { f: 1 },
      fleet.ed,
      { fleetId: toHex(new Uint8Array(32)) }
    )
    await expectRejected(foreign, 'InvalidSignatureError')
    // A flipped bit in the change itself changes its hash: the signature then names a change not in the batch.
    await expectRejected(
      { ...batch, chunks: [flipBit(batch.chunks[0]!, batch.chunks[0]!.length * 8 - 3)] },
      'MalformedInputError'
    )
  })

  test('a change by a key the trust statement does not know is rejected', async () => {
    const stranger = testKey('stranger')
    await expectRejected(
      await forgeEvil(await target.open<Doc>('fleet'), stranger),
      'UnknownKeyError'
    )
  })

  test("a change outside the signer's scope is rejected", async () => {
    const doc = await target.open<Doc>('fleet')
    await expectRejected(await forgeEvil(doc, fleet.operator), 'OutOfScopeError')
    await expectRejected(await forgeEvil(doc, fleet.nodes[0]!), 'OutOfScopeError')
    const site = await target.open<Doc>('site/x')
    await expectRejected(await forgeEvil(site, fleet.nodes[0]!), 'OutOfScopeError', 'site/x')
    // The same operator, in scope, is accepted.
    const ok = await forgeBatch(site, target.fleetId, fleet.operator, { fine: true }, fleet.ed)
    assert.equal((await target.accept(ok)).status, 'applied')
  })

  test("a change whose actor is not its signer's is rejected", async () => {
    const [a, b] = fleet.admins as [(typeof fleet.admins)[0], (typeof fleet.admins)[0]]
    const doc = await target.open<Doc>('fleet')
    await expectRejected(await forgeEvil(doc, a, { signWith: b }), 'ActorMismatchError')
    // An Automerge actor id that names no key at all.
    await expectRejected(await forgeEvil(doc, a, { actor: 'ab'.repeat(16) }), 'ActorMismatchError')
  })

  test('a batch for another document is rejected by that document', async () => {
    const batch = await validBatch('site/x')
    const doc = await target.open<Doc>('fleet')
    const before = await stateOf('fleet')
    assert.equal((await thrown(() => doc.accept(batch))).name, 'WrongDocumentError')
    assert.deepEqual(await stateOf('fleet'), before)
  })

  test('truncated batches are rejected', async () => {
    const bytes = encodeBatch(await validBatch())
    for (const cut of [
      0,
      1,
      5,
      Math.floor(bytes.length / 2),
      bytes.length - 64,
      bytes.length - 1
    ]) {
      await expectRejected(bytes.subarray(0, cut), 'MalformedInputError')
    }
    // A well-formed envelope around a truncated change.
    const batch = decodeBatch(bytes)
    const chunk = batch.chunks[0]!
    await expectRejected(
      { ...batch, chunks: [chunk.subarray(0, chunk.length - 10)] },
      'MalformedInputError'
    )
    // Trailing garbage.
    await expectRejected(Uint8Array.from([...bytes, 0]), 'MalformedInputError')
  })

  test('oversized batches are rejected, claimed or real', async () => {
    const header = (): ByteWriter => new ByteWriter().u8(1).string('fleet')
    // A chunk claiming more than the batch bound, in a tiny message.
    await expectRejected(
      header()
        .varint(1)
        .varint(MAX_BATCH_BYTES + 1)
        .finish(),
      'OversizedInputError'
    )
    await expectRejected(
      header()
        .varint(MAX_CHUNKS_PER_BATCH + 1)
        .finish(),
      'OversizedInputError'
    )
    await expectRejected(
      header()
        .varint(0)
        .varint(MAX_SIGNATURES_PER_BATCH + 1)
        .finish(),
      'OversizedInputError'
    )
    await expectRejected(
      new ByteWriter().u8(1).varint(129).raw(new Uint8Array(129).fill(97)).finish(),
      'OversizedInputError'
    )
    // Really larger than the bound.
    await expectRejected(new Uint8Array(MAX_BATCH_BYTES + 1), 'OversizedInputError')
    assert.equal(
      (
        await thrown(() =>
          encodeBatch({ docId: 'fleet', chunks: [new Uint8Array(MAX_BATCH_BYTES)], signatures: [] })
        )
      ).name,
      'OversizedInputError'
    )
  })

  test('random bytes are rejected with a named error and change nothing', async () => {
    const before = await stateOf('fleet')
    const valid = encodeBatch(await validBatch())
    const offer = async (bytes: Uint8Array): Promise<void> => {
      const err = await thrown(async () => target.accept(decodeBatch(bytes))).catch(() => undefined)
      // A random input that happens to decode into an empty batch is a harmless duplicate.
      if (err !== undefined) {
        // A peer's bytes may only be refused as its fault; anything else (a TypeError, a wasm panic) is a bug.
        assert.ok(isPeerFault(err), `unexpected ${err.name}: ${err.message}`)
      }
    }
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 2048 }), offer), { numRuns: 300 })
    // Random bytes behind a plausible header, to get past the envelope into the chunk parser.
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 2048 }), async chunk => {
        await offer(
          new ByteWriter().u8(1).string('fleet').varint(1).bytes(chunk).varint(0).finish()
        )
      }),
      { numRuns: 300 }
    )
    // A valid batch with random bytes flipped.
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(fc.nat(valid.length * 8 - 1), { minLength: 1, maxLength: 4 }),
        async bits => {
          let bytes = valid
          for (const b of bits) bytes = flipBit(bytes, b)
          await offer(bytes)
        }
      ),
      { numRuns: 300 }
    )
    const after = await stateOf('fleet')
    assert.deepEqual(after, before)
  })

  test('after all that, the replica still takes valid changes and catches up', async () => {
    await validBatch()
    // The author's changes whose forgeries were refused above arrive genuine now, as sync sends them.
    assert.ok((await repair(author, target, 'fleet')) > 0)
    const mine = await target.open<Doc>('fleet')
    const theirs = await author.open<Doc>('fleet')
    assert.deepEqual(mine.heads, theirs.heads)
    assert.equal(mine.pendingCount, 0)
  })
})

describe('trust chain', () => {
  const roots = [testKey('trust/root-0'), testKey('trust/root-1'), testKey('trust/root-2')]
  const admin = testKey('trust/admin')

  async function twoOfThree(): Promise<TrustChain> {
    const genesis = await createGenesis(
      {
        fleet: 'trust-test',
        roots,
        threshold: 2,
        admins: [{ key: toHex(admin.publicKey), name: 'admin' }]
      },
      fleet.ed
    )
    return TrustChain.fromGenesis(genesis, fleet.ed)
  }

  test('a statement signed by non-roots or below the threshold is rejected', async () => {
    const chain = await twoOfThree()
    const update = { admins: [] }
    for (const signers of [[admin], [roots[0]!], [roots[0]!, admin]]) {
      const next = await nextStatement(chain.latest, update, signers, fleet.ed)
      assert.equal((await thrown(() => chain.add(next))).name, 'InvalidTrustStatementError')
    }
    // The same root signing twice is still one signature.
    const once = await nextStatement(chain.latest, update, [roots[0]!], fleet.ed)
    const twice = { ...once, signatures: [once.signatures[0]!, once.signatures[0]!] }
    assert.equal((await thrown(() => chain.add(twice))).name, 'InvalidTrustStatementError')
    assert.equal(chain.version, 1)
    assert.equal(
      await chain.add(await nextStatement(chain.latest, update, [roots[0]!, roots[2]!], fleet.ed)),
      true
    )
    assert.equal(chain.version, 2)
  })

  test('a genesis below its own threshold, or a statement that does not follow, is rejected', async () => {
    const genesis = await createGenesis({ fleet: 'trust-test', roots, threshold: 2 }, fleet.ed)
    assert.equal(
      (
        await thrown(() =>
          TrustChain.fromGenesis(
            { ...genesis, signatures: genesis.signatures.slice(0, 1) },
            fleet.ed
          )
        )
      ).name,
      'InvalidTrustStatementError'
    )
    const chain = await TrustChain.fromGenesis(genesis, fleet.ed)
    const v2 = await nextStatement(chain.latest, {}, roots, fleet.ed)
    const v3 = await nextStatement(v2.statement, {}, roots, fleet.ed)
    assert.equal(
      (await thrown(() => chain.add(v3))).name,
      'InvalidTrustStatementError',
      'skipped version'
    )
    const wrongPrev = await nextStatement(
      { ...chain.latest, issued: 'another' },
      {},
      roots,
      fleet.ed
    )
    assert.equal(
      (await thrown(() => chain.add(wrongPrev))).name,
      'InvalidTrustStatementError',
      'wrong predecessor'
    )
  })

  test('two different statements of one version are a fork that halts trust changes until one branch is extended', async () => {
    const chain = await twoOfThree()
    const a = await nextStatement(chain.latest, { admins: [] }, roots, fleet.ed)
    const b = await nextStatement(chain.latest, { threshold: 1 }, roots, fleet.ed)
    assert.equal(await chain.add(a), true)
    assert.equal(await chain.add(a), false, 'the same statement again is not a fork')
    assert.equal(await chain.add(b), true, 'the other branch is kept as evidence')
    assert.equal(chain.forked?.version, 2)
    assert.equal(chain.version, 1, 'the statement before the fork stays in force')
    const c = await nextStatement(a.statement, {}, roots, fleet.ed)
    assert.equal(await chain.add(c), true)
    assert.equal(chain.forked, undefined, 'a statement extending one branch resolves the fork')
    assert.equal(chain.version, 3)
    assert.equal(chain.forks[0]?.resolvedBy, statementHash(a.statement))
  })

  test('a replica refuses a bad statement without storing it, and applies a good one', async () => {
    const f = await makeFleet({ replicas: 1, admins: 2, label: 'trust-replica' })
    const r = f.replicas[0]!
    const bad = await nextStatement(r.trust.latest, { admins: [] }, [f.admins[0]!], f.ed)
    assert.equal((await thrown(() => r.addTrustStatement(bad))).name, 'InvalidTrustStatementError')
    assert.equal((await f.stores[0]!.listTrust()).length, 1)
    // Dropping admin-1 from trust without a cut: nothing it signs in "fleet" is valid any more.
    const doc = await r.open<Doc>('fleet')
    const good = await nextStatement(
      r.trust.latest,
      { admins: r.trust.latest.admins.slice(0, 1) },
      [f.root],
      f.ed
    )
    assert.equal(await r.addTrustStatement(good), true)
    assert.equal((await f.stores[0]!.listTrust()).length, 2)
    const batch = await forgeBatch(doc, r.fleetId, f.admins[1]!, { after: true }, f.ed)
    assert.equal((await r.accept(batch)).status, 'invalid')
    assert.equal(doc.value.after, undefined)
  })

  test('a batch verified under an older trust statement is verified again before it is applied', async () => {
    const f = await makeFleet({ replicas: 2, admins: 2, label: 'trust-verified' })
    const r = f.replicas[0]!
    const batch = (await (
      await f.replicas[1]!.open<Doc>('site/y')
    ).change(f.signer(1, f.admins[1]!), d => {
      d.late = true
    }))!
    const verified = await verifyBatch(
      { fleetId: r.fleetId, trust: r.trust, ed: f.ed },
      'site/y',
      batch
    )
    // admin-1 is dropped after the batch was judged, before it is applied.
    await r.addTrustStatement(
      await nextStatement(
        r.trust.latest,
        { admins: r.trust.latest.admins.slice(0, 1) },
        [f.root],
        f.ed
      )
    )
    const doc = await r.open<Doc>('site/y')
    assert.equal((await doc.accept(verified)).status, 'invalid')
    assert.equal(doc.value.late, undefined)
  })

  test('a key file opens with its passphrase and refuses a wrong one', async () => {
    const pair = testKey('key-file')
    const file = await encryptKeyFile(pair, 'correct horse', 'test key', { N: 1024, r: 8, p: 1 })
    const parsed = parseKeyFile(JSON.stringify(file))
    const err = await thrown(() => decryptKeyFile(parsed, 'wrong horse'))
    assert.equal(err.name, 'WrongPassphraseError')
    assert.deepEqual((await decryptKeyFile(parsed, 'correct horse')).seed, pair.seed)
    assert.equal(
      (await thrown(() => parseKeyFile('{"rhizome":"key/v1"'))).name,
      'MalformedInputError'
    )
  })
})
