/**
 * Ed25519 behind one interface with interchangeable implementations.
 *
 * - `webCryptoEd25519`: the platform's Ed25519 through `crypto.subtle` (Node and current
 *   browsers). Fast; verification is asynchronous.
 * - `tweetnaclEd25519`: pure JavaScript, works everywhere, about 115 verifications a second here.
 * - `nodeCryptoEd25519` (in `ed25519-node.ts`, Node only): OpenSSL through node:crypto, the fastest.
 *
 * All produce byte-identical signatures (Ed25519 is deterministic) and accept each other's;
 * `test/crdt-ed25519.test.ts` checks it. Secret keys are 32-byte seeds everywhere in Rhizome.
 */
import nacl from 'tweetnacl'
import { concatBytes } from './bytes.ts'

export interface Ed25519 {
  readonly name: string
  /** Sign `message` with a 32-byte seed. */
  sign(seed: Uint8Array, message: Uint8Array): Promise<Uint8Array>
  /** Verify a 64-byte signature by a 32-byte public key. Never throws for bad input: returns false. */
  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): Promise<boolean>
}

export const tweetnaclEd25519: Ed25519 = {
  name: 'tweetnacl',
  async sign(seed, message) {
    return nacl.sign.detached(message, nacl.sign.keyPair.fromSeed(seed).secretKey)
  },
  async verify(publicKey, message, signature) {
    if (publicKey.length !== 32 || signature.length !== 64) return false
    return nacl.sign.detached.verify(message, signature, publicKey)
  }
}

/** PKCS#8 wrapping of a raw 32-byte Ed25519 seed (RFC 8410). */
const PKCS8_PREFIX = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20
])

export function seedToPkcs8(seed: Uint8Array): Uint8Array {
  return concatBytes(PKCS8_PREFIX, seed)
}

/** A bounded cache of imported verification keys: importKey costs more than a verify. */
const MAX_CACHED_KEYS = 1024

export function createWebCryptoEd25519(subtle: SubtleCrypto): Ed25519 {
  const publicKeys = new Map<string, Promise<CryptoKey>>()
  const importPublic = (raw: Uint8Array): Promise<CryptoKey> => {
    const id = String.fromCharCode(...raw)
    let key = publicKeys.get(id)
    if (key === undefined) {
      if (publicKeys.size >= MAX_CACHED_KEYS) publicKeys.clear()
      key = subtle.importKey('raw', raw as Uint8Array<ArrayBuffer>, { name: 'Ed25519' }, false, [
        'verify'
      ])
      publicKeys.set(id, key)
    }
    return key
  }
  return {
    name: 'webcrypto',
    async sign(seed, message) {
      const key = await subtle.importKey(
        'pkcs8',
        seedToPkcs8(seed) as Uint8Array<ArrayBuffer>,
        { name: 'Ed25519' },
        false,
        ['sign']
      )
      return new Uint8Array(
        await subtle.sign({ name: 'Ed25519' }, key, message as Uint8Array<ArrayBuffer>)
      )
    },
    async verify(publicKey, message, signature) {
      if (publicKey.length !== 32 || signature.length !== 64) return false
      try {
        const key = await importPublic(publicKey)
        return await subtle.verify(
          { name: 'Ed25519' },
          key,
          signature as Uint8Array<ArrayBuffer>,
          message as Uint8Array<ArrayBuffer>
        )
      } catch {
        return false
      }
    }
  }
}

let detected: Promise<Ed25519> | undefined

/**
 * The fastest portable implementation this runtime has: WebCrypto when it supports Ed25519
 * (checked by signing and verifying once), tweetnacl otherwise.
 */
export function platformEd25519(): Promise<Ed25519> {
  detected ??= (async () => {
    const subtle = globalThis.crypto?.subtle
    if (subtle === undefined) return tweetnaclEd25519
    const web = createWebCryptoEd25519(subtle)
    try {
      const seed = new Uint8Array(32).fill(7)
      const msg = Uint8Array.of(1, 2, 3)
      const sig = await web.sign(seed, msg)
      const pub = nacl.sign.keyPair.fromSeed(seed).publicKey
      if (await web.verify(pub, msg, sig)) return web
    } catch {}
    return tweetnaclEd25519
  })()
  return detected
}
