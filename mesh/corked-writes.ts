/**
 * One socket write per batch of transport messages, not one per buffer.
 *
 * A Noise transport message leaves as three buffers (length, ciphertext, tag: noise-crypto.ts
 * hands the sealed message on as its pieces to spare a copy), and one Yamux data frame of up to
 * the stream window (1 MiB) is up to 16 such messages. libp2p's TCP connection writes every
 * buffer with its own `socket.write`, so while the socket is idle each becomes its own system
 * call (and, with `noDelay`, its own segment). Here the connection's `sendData` writes a batch
 * between `cork()` and `uncork()`: Node then hands the batch to the kernel as one `writev`.
 * Nothing is held back: the uncork is synchronous, at the end of the same call.
 *
 * Applied to the raw connection before the encrypter sees it, and only where that connection is
 * a Node socket's (libp2p's TCP transport: `socket` with `cork`, and `sendData`); anything else
 * (a WebSocket, a connection behind the pre-shared-key protector) is left as it is.
 */
import type { ConnectionEncrypter, MessageStream } from '@libp2p/interface'

interface CorkableSocket {
  cork(): void
  uncork(): void
  write(buf: Uint8Array): boolean
}

type SendData = (data: Iterable<Uint8Array>) => { sentBytes: number; canSendMore: boolean }

function socketOf(c: object): CorkableSocket | undefined {
  const socket = (c as { socket?: Partial<CorkableSocket> }).socket
  const corkable =
    typeof socket?.cork === 'function' &&
    typeof socket.uncork === 'function' &&
    typeof socket.write === 'function' &&
    typeof (c as { sendData?: unknown }).sendData === 'function'
  return corkable ? (socket as CorkableSocket) : undefined
}

/**
 * Write a TCP connection's batches corked (see above); returns whether it did. Every buffer of a
 * batch is handed to the socket, as the transport's own `sendData` does until the socket's buffer
 * passes its high-water mark (there it stops and the rest waits in the connection's own write
 * buffer for 'drain': the same bytes in memory either way). "Can send more" is the socket's answer
 * to the last write, so the layers above still wait for 'drain' once the socket is full.
 */
export function corkWrites(connection: MessageStream): boolean {
  const socket = socketOf(connection)
  if (socket === undefined) return false
  const sendData: SendData = data => {
    let sentBytes = 0
    let canSendMore = true
    socket.cork()
    try {
      for (const buf of data) {
        sentBytes += buf.byteLength
        canSendMore = socket.write(buf)
      }
    } finally {
      socket.uncork()
    }
    return { sentBytes, canSendMore }
  }
  ;(connection as unknown as { sendData: SendData }).sendData = sendData
  return true
}

/** An encrypter whose raw connections write corked (see above). */
export function corkedEncrypter<C>(
  factory: (components: C) => ConnectionEncrypter
): (components: C) => ConnectionEncrypter {
  return components => {
    const inner = factory(components)
    return {
      protocol: inner.protocol,
      secureInbound: async (connection, options) => {
        corkWrites(connection)
        return inner.secureInbound(connection, options)
      },
      secureOutbound: async (connection, options) => {
        corkWrites(connection)
        return inner.secureOutbound(connection, options)
      }
    }
  }
}
