/**
 * Noise's ChaCha20-Poly1305 for daemons (Node), cheaper per message than the library's default.
 *
 * Every transport message (up to 65,519 bytes of plaintext) is sealed with a new cipher object.
 * @chainsafe/libp2p-noise's Node implementation passes the raw 32-byte key to
 * `createCipheriv`, which imports it into a new key object each time (~10 µs of a ~40 µs
 * message), and joins ciphertext and tag into a new buffer (a copy of the whole message) only
 * for the socket to write them out again. Here the key is imported once per session key (a
 * `KeyObject` kept beside the key bytes the Noise cipher state holds) and the sealed message is
 * handed on as its pieces, which the TCP transport writes without joining. Messages under
 * SMALL_MESSAGE_BYTES keep the library's default (its WebAssembly cipher is faster there, and
 * the handshake's messages are all small). Same algorithm, same bytes on the wire.
 */
import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject } from 'node:crypto'
import type { ICryptoInterface } from '@chainsafe/libp2p-noise'
import { defaultCrypto } from '@chainsafe/libp2p-noise/crypto'
import { Uint8ArrayList } from 'uint8arraylist'

/** Below this many bytes the library's default (WebAssembly) cipher is faster (its own threshold). */
export const SMALL_MESSAGE_BYTES = 1200
const TAG_BYTES = 16
const ALGORITHM = 'chacha20-poly1305'

/**
 * One imported key per key array the Noise cipher states hold (two per connection, gone with it).
 * The bytes are kept too: a key array changed in place must not be sealed with the old key.
 */
const imported = new WeakMap<Uint8Array, { bytes: Buffer; key: KeyObject }>()

function keyOf(k: Uint8Array): KeyObject {
  const held = imported.get(k)
  if (held !== undefined && held.bytes.equals(k)) return held.key
  const bytes = Buffer.from(k)
  const key = createSecretKey(bytes)
  imported.set(k, { bytes, key })
  return key
}

export const noiseCrypto: ICryptoInterface = {
  ...defaultCrypto,

  chaCha20Poly1305Encrypt(plaintext, nonce, ad, k) {
    if (plaintext.byteLength < SMALL_MESSAGE_BYTES) {
      return defaultCrypto.chaCha20Poly1305Encrypt(plaintext, nonce, ad, k)
    }
    const cipher = createCipheriv(ALGORITHM, keyOf(k), nonce, { authTagLength: TAG_BYTES })
    cipher.setAAD(ad, { plaintextLength: plaintext.byteLength })
    const out = new Uint8ArrayList()
    if (plaintext instanceof Uint8Array) out.append(cipher.update(plaintext))
    else for (const piece of plaintext) out.append(cipher.update(piece))
    // A stream cipher: final() yields nothing, it only computes the tag.
    cipher.final()
    out.append(cipher.getAuthTag())
    return out
  },

  chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst) {
    if (ciphertext.byteLength < SMALL_MESSAGE_BYTES) {
      return defaultCrypto.chaCha20Poly1305Decrypt(ciphertext, nonce, ad, k, dst)
    }
    const length = ciphertext.byteLength - TAG_BYTES
    const decipher = createDecipheriv(ALGORITHM, keyOf(k), nonce, { authTagLength: TAG_BYTES })
    decipher.setAAD(ad, { plaintextLength: length })
    decipher.setAuthTag(ciphertext.subarray(length))
    let out: Uint8Array | Uint8ArrayList
    if (ciphertext instanceof Uint8Array) {
      out = decipher.update(ciphertext.subarray(0, length))
    } else {
      out = new Uint8ArrayList()
      for (const piece of ciphertext.sublist(0, length)) out.append(decipher.update(piece))
    }
    // Throws when the tag does not match: nothing decrypted is handed on before this check.
    decipher.final()
    return out
  }
}
