/**
 * The daemons' Noise ciphers (mesh/noise-crypto.ts) seal and open exactly what the library's
 * default does, so a daemon talks to any libp2p peer (an older daemon, the dashboard): same
 * bytes on the wire, same refusals of a tampered message, whatever pieces a message comes in.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { noise } from '@chainsafe/libp2p-noise'
import { defaultCrypto } from '@chainsafe/libp2p-noise/crypto'
import { tcp } from '@libp2p/tcp'
import { createLibp2p } from 'libp2p'
import { Uint8ArrayList } from 'uint8arraylist'
import { DEFAULT_LIMITS } from '../mesh/limits.ts'
import { meshMuxer } from '../mesh/mesh.ts'
import { noiseCrypto, SMALL_MESSAGE_BYTES } from '../mesh/noise-crypto.ts'

const SIZES = [0, 100, SMALL_MESSAGE_BYTES - 1, SMALL_MESSAGE_BYTES, 4096, 65_519]
const nonce = (n: number): Uint8Array => {
  const b = new Uint8Array(12)
  new DataView(b.buffer).setUint32(4, n, true)
  return b
}
const bytes = (x: Uint8Array | Uint8ArrayList): Buffer => Buffer.from(x.subarray())
/** The same bytes as a list of uneven pieces (a message split across socket reads). */
function pieces(b: Uint8Array): Uint8ArrayList {
  const out = new Uint8ArrayList()
  for (let o = 0, step = 1; o < b.byteLength; o += step, step = step * 3 + 7) {
    out.append(b.subarray(o, Math.min(b.byteLength, o + step)))
  }
  return out
}

test('seals the same bytes as the default, and each opens what the other sealed', () => {
  const k = randomBytes(32)
  const ad = randomBytes(32)
  for (const size of SIZES) {
    const plain = randomBytes(size)
    for (const input of [plain, pieces(plain)]) {
      const ours = bytes(noiseCrypto.chaCha20Poly1305Encrypt(input, nonce(size), ad, k))
      const theirs = bytes(defaultCrypto.chaCha20Poly1305Encrypt(plain, nonce(size), ad, k))
      assert.deepEqual(ours, theirs, `${size} bytes sealed alike`)
      const opened = noiseCrypto.chaCha20Poly1305Decrypt(pieces(theirs), nonce(size), ad, k)
      assert.deepEqual(bytes(opened), plain, `${size} bytes opened from pieces`)
      const whole = noiseCrypto.chaCha20Poly1305Decrypt(theirs, nonce(size), ad, k)
      assert.deepEqual(bytes(whole), plain, `${size} bytes opened whole`)
    }
  }
})

test('a tampered message, tag or nonce is refused', () => {
  const k = randomBytes(32)
  const ad = new Uint8Array(0)
  const plain = randomBytes(65_519)
  const sealed = bytes(noiseCrypto.chaCha20Poly1305Encrypt(plain, nonce(1), ad, k))
  for (const at of [0, 40_000, sealed.byteLength - 1]) {
    const bad = Buffer.from(sealed)
    bad[at]! ^= 1
    assert.throws(() => noiseCrypto.chaCha20Poly1305Decrypt(bad, nonce(1), ad, k))
    assert.throws(() => noiseCrypto.chaCha20Poly1305Decrypt(pieces(bad), nonce(1), ad, k))
  }
  assert.throws(() => noiseCrypto.chaCha20Poly1305Decrypt(sealed, nonce(2), ad, k))
})

test('a key changed in place is used as it is now, not as it was first seen', () => {
  const k = randomBytes(32)
  const plain = randomBytes(8192)
  const ad = new Uint8Array(0)
  noiseCrypto.chaCha20Poly1305Encrypt(plain, nonce(0), ad, k)
  k[0]! ^= 0xff
  const ours = bytes(noiseCrypto.chaCha20Poly1305Encrypt(plain, nonce(0), ad, k))
  assert.deepEqual(ours, bytes(defaultCrypto.chaCha20Poly1305Encrypt(plain, nonce(0), ad, k)))
})

test('a daemon-configured node and a default libp2p node move 16 MiB intact over TCP', async () => {
  const size = 16 * 1024 * 1024
  const data = randomBytes(size)
  const daemonLike = await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise({ crypto: noiseCrypto })],
    streamMuxers: [meshMuxer(DEFAULT_LIMITS)]
  })
  // The other side keeps the library's ciphers and Yamux defaults but for the window bounds,
  // which must match for the daemon's bounded buffers.
  const plain = await createLibp2p({
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [meshMuxer(DEFAULT_LIMITS)]
  })
  try {
    await daemonLike.handle('/test/echo-hash/1', async stream => {
      const h = createHash('sha256')
      for await (const c of stream) h.update(c.subarray())
      stream.send(h.digest())
      await stream.close()
    })
    const stream = await plain.dialProtocol(daemonLike.getMultiaddrs()[0]!, '/test/echo-hash/1')
    for (let o = 0; o < size; o += 1024 * 1024) {
      if (!stream.send(data.subarray(o, o + 1024 * 1024))) await stream.onDrain()
      while (stream.writeBufferLength > 4 * 1024 * 1024) {
        await new Promise(resolve => stream.addEventListener('idle', resolve, { once: true }))
      }
    }
    await stream.close()
    const reply = new Uint8ArrayList()
    for await (const c of stream) reply.append(c.subarray())
    assert.equal(
      Buffer.from(reply.subarray()).toString('hex'),
      createHash('sha256').update(data).digest('hex')
    )
  } finally {
    await plain.stop()
    await daemonLike.stop()
  }
})
