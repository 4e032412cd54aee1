/**
 * Backpressure on the sync stream: a peer that sends faster than the daemon handles its frames is
 * held back by yamux flow control, so the daemon buffers one frame and one receive window
 * (`MAX_STREAM_WINDOW_BYTES`), not whatever the peer sends. The reader is the mesh's own
 * (`readFrames`), over the mesh's own muxer configuration.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { tcp } from '@libp2p/tcp'
import type { Stream } from '@libp2p/interface'
import { createLibp2p } from 'libp2p'
import { encodeFrame, readFrames } from '../mesh/frames.ts'
import { DEFAULT_LIMITS, MAX_STREAM_WINDOW_BYTES } from '../mesh/limits.ts'
import { meshMuxer } from '../mesh/mesh.ts'
import { waitFor } from './fixtures/wait.ts'

const PROTOCOL = '/rhizome-test/backpressure/1.0.0'
const FRAME = 64 * 1024
const FRAMES = 128

test('a peer sending faster than frames are handled is held back; the reader buffers about one window', async () => {
  const receiver = await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [meshMuxer(DEFAULT_LIMITS)]
  })
  const sender = await createLibp2p({
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux({ streamOptions: { maxWriteBufferLength: Infinity } })]
  })
  let inbound: Stream | undefined
  let handled = 0
  let release = (): void => {}
  const stall = new Promise<void>(resolve => {
    release = resolve
  })
  await receiver.handle(PROTOCOL, async stream => {
    inbound = stream
    // A handler busy with its first frame until the test ends.
    for await (const _frame of readFrames(stream, DEFAULT_LIMITS.maxFrameBytes)) {
      handled++
      await stall
    }
  })
  try {
    const out = await sender.dialProtocol(receiver.getMultiaddrs()[0]!, PROTOCOL)
    const total = FRAMES * (FRAME + 4)
    for (let i = 0; i < FRAMES; i++) out.send(encodeFrame(new Uint8Array(FRAME).fill(i)))
    // Wait for the sender's queue to stop shrinking: what it still holds is what flow control kept back.
    let last = -1
    let still = 0
    await waitFor(
      "the sender's queue to settle",
      () => {
        const now = out.writeBufferLength
        still = now === last ? still + 1 : 0
        last = now
        return still >= 5
      },
      10_000,
      100
    )
    const delivered = total - out.writeBufferLength
    assert.equal(handled, 1)
    assert.ok(
      delivered <= FRAME + 2 * MAX_STREAM_WINDOW_BYTES,
      `${(delivered / 1048576).toFixed(1)} MiB reached a reader handling one frame`
    )
    assert.ok((inbound?.readBufferLength ?? 0) <= 2 * MAX_STREAM_WINDOW_BYTES)
  } finally {
    release()
    await sender.stop()
    await receiver.stop()
  }
})
