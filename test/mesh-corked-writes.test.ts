/**
 * Corked socket writes (mesh/corked-writes.ts): a batch of buffers a TCP connection is asked to
 * send leaves as one write to the kernel, byte for byte, and the connection still reports a full
 * socket so the layers above wait for 'drain'.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer, connect, type Socket } from 'node:net'
import type { MessageStream } from '@libp2p/interface'
import { corkWrites } from '../mesh/corked-writes.ts'
import { waitFor } from './fixtures/wait.ts'

/** A connected pair of real sockets on loopback, and everything the receiving end reads. */
async function socketPair(): Promise<{
  sender: Socket
  received: () => Buffer
  close: () => void
}> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  const accepted = once(server, 'connection')
  const sender = connect(port, '127.0.0.1')
  await once(sender, 'connect')
  const [receiver] = (await accepted) as [Socket]
  const got: Buffer[] = []
  receiver.on('data', b => got.push(b))
  return {
    sender,
    received: () => Buffer.concat(got),
    close: () => {
      sender.destroy()
      receiver.destroy()
      server.close()
    }
  }
}

/** Counts the writes a socket hands to its handle: one `_write` per buffer, or one `_writev` per batch. */
function countWrites(socket: Socket): { write: number; writev: number } {
  const n = { write: 0, writev: 0 }
  const s = socket as unknown as Record<'_write' | '_writev', (...a: unknown[]) => unknown>
  const write = s._write.bind(socket)
  const writev = s._writev.bind(socket)
  s._write = (...a) => (n.write++, write(...a))
  s._writev = (...a) => (n.writev++, writev(...a))
  return n
}

/** A stand-in for libp2p's TCP connection: its `sendData` writes each buffer with `socket.write`. */
function tcpConnection(socket: Socket): MessageStream {
  const conn = {
    socket,
    sendData(data: Iterable<Uint8Array>) {
      let sentBytes = 0
      let canSendMore = true
      for (const buf of data) {
        sentBytes += buf.byteLength
        canSendMore = socket.write(buf)
        if (!canSendMore) break
      }
      return { sentBytes, canSendMore }
    }
  }
  return conn as unknown as MessageStream
}

type Send = (data: Iterable<Uint8Array>) => { sentBytes: number; canSendMore: boolean }

test('corked writes: a batch of Noise messages leaves as one write, every byte in order', async () => {
  const { sender, received, close } = await socketPair()
  try {
    const conn = tcpConnection(sender)
    assert.equal(corkWrites(conn), true)
    const n = countWrites(sender)
    // Four Noise messages as noise-crypto.ts hands them on: length, ciphertext, tag.
    const batch = Array.from({ length: 4 }, () => [
      randomBytes(2),
      randomBytes(65_519),
      randomBytes(16)
    ]).flat()
    const send = (conn as unknown as { sendData: Send }).sendData
    const r = send(batch)
    assert.equal(r.sentBytes, 4 * (2 + 65_519 + 16), 'every byte was taken')
    assert.equal(r.canSendMore, false, 'the socket is over its high-water mark: wait for drain')
    assert.deepEqual(n, { write: 0, writev: 1 }, 'twelve buffers, one write to the kernel')
    const all = Buffer.concat(batch)
    await waitFor('every byte at the other end', () => received().length >= all.length)
    assert.deepEqual(received(), all)
  } finally {
    close()
  }
})

test('corked writes: anything but a socket connection is left as it is', () => {
  const other = { sendData: () => ({ sentBytes: 0, canSendMore: true }) }
  assert.equal(corkWrites(other as unknown as MessageStream), false)
  assert.equal(corkWrites({ socket: {} } as unknown as MessageStream), false)
})
