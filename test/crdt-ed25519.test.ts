/**
 * The three Ed25519 implementations are interchangeable: byte-identical signatures for the same
 * seed and message, each verifies the others', all refuse a flipped bit, and bad lengths give
 * false rather than an exception.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import fc from 'fast-check'
import {
  createWebCryptoEd25519,
  platformEd25519,
  tweetnaclEd25519,
  type Ed25519
} from '../crdt/ed25519.ts'
import { keyPairFromSeedFast, nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { keyPairFromSeed } from '../crdt/keys.ts'

const IMPLS: Ed25519[] = [
  nodeCryptoEd25519,
  createWebCryptoEd25519(globalThis.crypto.subtle),
  tweetnaclEd25519
]

// RFC 8032, section 7.1, test 2: a known answer, so "identical" also means "correct".
const RFC_SEED = '4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb'
const RFC_PUBLIC = '3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c'
const RFC_SIG =
  '92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00'
const hex = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s, 'hex'))

function flip(bytes: Uint8Array, bit: number): Uint8Array {
  const out = bytes.slice()
  out[(bit >> 3) % out.length]! ^= 1 << (bit & 7)
  return out
}

test('every implementation gives the RFC 8032 answer', async () => {
  const pair = keyPairFromSeed(hex(RFC_SEED))
  assert.equal(Buffer.from(pair.publicKey).toString('hex'), RFC_PUBLIC)
  for (const ed of IMPLS) {
    assert.equal(
      Buffer.from(await ed.sign(pair.seed, Uint8Array.of(0x72))).toString('hex'),
      RFC_SIG,
      ed.name
    )
  }
})

test("signatures are identical across implementations and each verifies the others'", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.uint8Array({ maxLength: 256 }),
      fc.nat(),
      async (seed, message, bit) => {
        const pair = keyPairFromSeed(seed)
        const sigs = await Promise.all(IMPLS.map(ed => ed.sign(pair.seed, message)))
        for (const sig of sigs) assert.deepEqual(sig, sigs[0])
        const sig = sigs[0]!
        for (const ed of IMPLS) {
          assert.equal(await ed.verify(pair.publicKey, message, sig), true, `${ed.name} verifies`)
          assert.equal(
            await ed.verify(pair.publicKey, message, flip(sig, bit % 512)),
            false,
            `${ed.name} refuses a flipped signature bit`
          )
          if (message.length > 0) {
            assert.equal(
              await ed.verify(pair.publicKey, flip(message, bit), sig),
              false,
              `${ed.name} refuses a flipped message bit`
            )
          }
          assert.equal(
            await ed.verify(flip(pair.publicKey, bit % 256), message, sig),
            false,
            `${ed.name} refuses another key`
          )
        }
      }
    ),
    { numRuns: 25 }
  )
})

test('wrong lengths and garbage give false, never an exception', async () => {
  const pair = keyPairFromSeed(new Uint8Array(32).fill(1))
  const msg = Uint8Array.of(1, 2, 3)
  const sig = await nodeCryptoEd25519.sign(pair.seed, msg)
  const cases: Array<[Uint8Array, Uint8Array]> = [
    [pair.publicKey.subarray(0, 31), sig],
    [new Uint8Array(33), sig],
    [new Uint8Array(0), sig],
    [pair.publicKey, sig.subarray(0, 63)],
    [pair.publicKey, new Uint8Array(65)],
    [pair.publicKey, new Uint8Array(0)],
    // Right lengths, not a point on the curve / not a signature.
    [new Uint8Array(32).fill(0xff), sig],
    [pair.publicKey, new Uint8Array(64).fill(0xff)]
  ]
  for (const ed of IMPLS) {
    for (const [key, s] of cases) {
      assert.equal(
        await ed.verify(key, msg, s),
        false,
        `${ed.name} with key ${key.length} B, signature ${s.length} B`
      )
    }
  }
})

test('the platform choice in Node is WebCrypto', async () => {
  assert.equal((await platformEd25519()).name, 'webcrypto')
})

test('the device identity derives the same public key through OpenSSL as through tweetnacl', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), seed => {
      assert.deepEqual(keyPairFromSeedFast(seed).publicKey, keyPairFromSeed(seed).publicKey)
    }),
    { numRuns: 200 }
  )
  assert.throws(() => keyPairFromSeedFast(new Uint8Array(31)), /32 bytes/)
})
