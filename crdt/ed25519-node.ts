/**
 * Ed25519 through node:crypto (OpenSSL): the fastest verifier available to the daemon.
 * Node only; browser code uses `platformEd25519()` from `ed25519.ts`.
 */
import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto'
import { concatBytes } from './bytes.ts'
import { seedToPkcs8, type Ed25519 } from './ed25519.ts'
import { keyPairFromSeed, type KeyPair } from './keys.ts'

const SPKI_PREFIX = Uint8Array.from([
  0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00
])
const MAX_CACHED_KEYS = 1024
const publicKeys = new Map<string, KeyObject>()

function publicKeyObject(raw: Uint8Array): KeyObject {
  const id = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('latin1')
  let key = publicKeys.get(id)
  if (key === undefined) {
    if (publicKeys.size >= MAX_CACHED_KEYS) publicKeys.clear()
    key = createPublicKey({
      key: Buffer.from(concatBytes(SPKI_PREFIX, raw)),
      format: 'der',
      type: 'spki'
    })
    publicKeys.set(id, key)
  }
  return key
}

export const nodeCryptoEd25519: Ed25519 = {
  name: 'node:crypto',
  async sign(seed, message) {
    const key = createPrivateKey({
      key: Buffer.from(seedToPkcs8(seed)),
      format: 'der',
      type: 'pkcs8'
    })
    return new Uint8Array(sign(null, message, key))
  },
  async verify(publicKey, message, signature) {
    if (publicKey.length !== 32 || signature.length !== 64) return false
    try {
      return verify(null, message, publicKeyObject(publicKey), signature)
    } catch {
      return false
    }
  }
}

/**
 * `keyPairFromSeed` with the public key derived by OpenSSL: tweetnacl's pure JavaScript takes
 * ~20 ms the first time, at every daemon start (the device identity). The seed is checked there.
 */
export function keyPairFromSeedFast(seed: Uint8Array): KeyPair {
  if (seed.length !== 32) return keyPairFromSeed(seed)
  const secret = createPrivateKey({
    key: Buffer.from(seedToPkcs8(seed)),
    format: 'der',
    type: 'pkcs8'
  })
  const spki = createPublicKey(secret).export({ format: 'der', type: 'spki' })
  return { seed, publicKey: new Uint8Array(spki.subarray(SPKI_PREFIX.length)) }
}
