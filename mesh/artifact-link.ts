/**
 * Artifact links (daemons only): chunk and manifest requests over a TLS connection of their own,
 * opened beside the mesh connection to a holder, for the bulk of an artifact's bytes.
 *
 * Why: through the mesh connection every byte passes Noise and Yamux in JavaScript, a stream is
 * opened per chunk, and one 256 MiB transfer cost the two daemons ~2.5 s of CPU, most of it in
 * libp2p (docs/benchmarks.md, "## artifacts"). Over a link the bytes are encrypted by OpenSSL in
 * the TLS record layer and one connection carries every chunk, pipelined.
 *
 * How a link opens, and why it is safe:
 *  1. The fetcher asks the holder over the mesh (ARTIFACT_LINK_PROTOCOL, a Noise-encrypted stream
 *     on a connection already held, so the holder knows which enrolled device asks) for an offer:
 *     a port, a one-time identity and a fresh 256-bit key. Only an enrolled device is offered one.
 *  2. The fetcher connects to that port at the address its mesh connection reaches the holder on,
 *     and both run a TLS 1.2 pre-shared-key handshake (PSK-AES128-GCM-SHA256, or
 *     PSK-CHACHA20-POLY1305 for devices without AES instructions) with that key. No certificate is
 *     involved: only the holder and the device it gave the key to (over Noise) can complete it,
 *     so a link authenticates both ends as the mesh connection did. The identity is valid once
 *     and for `OFFER_TTL_MS`; the key lives in memory only.
 *  3. The link then carries the artifact protocol's chunk and manifest requests
 *     (artifact-protocol.ts: a frame each, as on a stream), several in flight; replies come back
 *     in the order asked. The holder checks before each request that the asker is still an
 *     enrolled device with an open mesh connection: a cut, a ban or a revocation ends its links.
 *
 * Bounds (mesh/limits.ts; holder): at most MAX_LINKS_PER_PEER links per peer, MAX_LINK_SOCKETS sockets in all
 * (handshaking or open) and MAX_LINK_SOCKETS_PER_HOST from one address, MAX_OFFERS unused offers;
 * a handshake within LINK_HANDSHAKE_MS; requests are
 * parsed only as they are served (LINK_PIPELINE at once) and the socket is paused while
 * LINK_BUFFER_BYTES of unparsed input wait; a malformed request, or a kind other than chunk and
 * manifest, is the peer's fault (banned); an idle link closes after LINK_IDLE_MS. (Fetcher) a
 * reply over MAX_ARTIFACT_REPLY_BYTES, or one nobody asked for, is the peer's fault. A holder
 * working on a request sends an empty frame every LINK_KEEPALIVE_MS it has written nothing, so a
 * fetcher closes a link with requests waiting and no byte for LINK_STALL_MS (one a firewall or a
 * NAT dropped): its requests fail, the next go over the mesh connection.
 *
 * Anything that stops a link opening (a firewall, an address the mesh connection came through
 * that does not lead back, an older daemon) only means the requests go over the mesh connection,
 * as before links existed.
 */
import { randomBytes } from 'node:crypto'
import type { OnReadOpts, Socket } from 'node:net'
import {
  createServer,
  connect,
  type ConnectionOptions,
  type Server,
  type TLSSocket
} from 'node:tls'
import { logger } from '@libp2p/logger'
import { encodeFrame } from './frames.ts'
import {
  decodeArtifactRequest,
  encodeArtifactRequest,
  MAX_ARTIFACT_REPLY_BYTES,
  MAX_ARTIFACT_REQUEST_BYTES,
  type ArtifactRequest,
  type LinkOffer
} from './artifact-protocol.ts'
import {
  ArtifactLinkListenError,
  ExchangeTimeoutError,
  FrameTooLargeError,
  PeerGoneError,
  ProtocolViolationError
} from './errors.ts'
import {
  LINK_BUFFER_BYTES,
  LINK_HANDSHAKE_MS,
  LINK_IDLE_MS,
  LINK_KEEPALIVE_MS,
  LINK_PIPELINE,
  LINK_STALL_MS,
  LINK_POOL_BUFFERS,
  MAX_LINK_SOCKETS,
  MAX_LINK_SOCKETS_PER_HOST,
  MAX_LINK_WAITING,
  MAX_LINKS_PER_PEER,
  MAX_OFFERS,
  OFFER_TTL_MS
} from './limits.ts'
import type { ArtifactLink, ArtifactLinks, Lent, LinkServer, LinkServerInit } from './types.ts'

const log = logger('rhizome:mesh:artifact-link')

/** TLS 1.2 pre-shared-key suites, both sides: AES-GCM first, ChaCha20 for CPUs without AES. */
const CIPHERS = 'PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305'
/** The keep-alive frame: a frame of no bytes. */
const KEEPALIVE = Uint8Array.of(0)
/** Chunk buffers are this large: a 1 MiB chunk and its reply header. */
const CHUNK_BUFFER_BYTES = 1024 * 1024 + 64
/** Pooled buffers unused this long are dropped. */
const POOL_IDLE_MS = 10_000
/** A link's socket reads into one buffer of this size. */
const READ_BUFFER_BYTES = 64 * 1024

const tlsOptions = { ciphers: CIPHERS, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' } as const

/**
 * A frame's length at `at` of `buf`: `[payloadStart, payloadLength]`, or undefined while the
 * varint is incomplete. Throws FrameTooLargeError over `max`.
 */
function frameHead(buf: Uint8Array, at: number, max: number): [number, number] | undefined {
  let len = 0
  for (let i = 0; i < 4; i++) {
    if (at + i >= buf.length) return undefined
    const b = buf[at + i]!
    len += (b & 0x7f) * 2 ** (7 * i)
    if (len > max) throw new FrameTooLargeError(`a peer sent a frame over the ${max}-byte limit`)
    if ((b & 0x80) === 0) return [at + i + 1, len]
  }
  throw new FrameTooLargeError(`a peer sent a frame over the ${max}-byte limit`)
}

/** The link server: offers links to enrolled peers and answers their requests. */
class TlsLinkServer implements LinkServer {
  private readonly init: LinkServerInit
  private readonly servers: Server[] = []
  private readonly offers = new Map<string, { peer: string; key: Buffer; expires: number }>()
  /** Which peer's offer each handshaking socket used. */
  private readonly owner = new WeakMap<TLSSocket, string>()
  private readonly links = new Map<string, Set<TLSSocket>>()
  private readonly pool = new BufferPool()
  /** Sockets open per remote address. */
  private readonly perHost = new Map<string, number>()
  port = 0

  constructor(init: LinkServerInit) {
    this.init = init
    this.port = init.port
  }

  async listen(): Promise<void> {
    for (const host of this.init.hosts) {
      const server = createServer({
        ...tlsOptions,
        handshakeTimeout: Math.min(LINK_HANDSHAKE_MS, this.init.timeoutMs),
        pskCallback: (socket, identity) => this.keyFor(socket, identity)
      })
      server.maxConnections = MAX_LINK_SOCKETS
      server.on('connection', (socket: Socket) => this.counted(socket))
      server.on('secureConnection', socket => this.accepted(socket))
      server.on('tlsClientError', err => log('link handshake failed: %s', err.message))
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject)
          server.listen(this.port, host, () => {
            server.off('error', reject)
            resolve()
          })
        })
      } catch (err) {
        // A port the operator chose must be there; any free port (0) that failed on one host
        // only costs that host its links.
        if (this.init.port !== 0) {
          await this.close()
          throw new ArtifactLinkListenError(`${host}:${this.port}`, { cause: err })
        }
        log.error('cannot serve artifact links on %s: %s', host, (err as Error).message)
        continue
      }
      const addr = server.address()
      // Any free port: the first host's, then the same on the others.
      if (this.port === 0 && typeof addr === 'object' && addr !== null) this.port = addr.port
      this.servers.push(server)
    }
  }

  get open(): number {
    let n = 0
    for (const set of this.links.values()) n += set.size
    return n
  }

  offer(peer: string): LinkOffer | undefined {
    if (this.servers.length === 0) return undefined
    const now = performance.now()
    let mine = 0
    for (const [id, o] of this.offers) {
      if (o.expires < now) this.offers.delete(id)
      else if (o.peer === peer) mine++
    }
    if (mine >= MAX_LINKS_PER_PEER || (this.links.get(peer)?.size ?? 0) >= MAX_LINKS_PER_PEER) {
      return undefined
    }
    if (this.offers.size >= MAX_OFFERS) this.offers.delete(this.offers.keys().next().value!)
    const identity = randomBytes(16).toString('hex')
    const key = randomBytes(32)
    this.offers.set(identity, { peer, key, expires: now + OFFER_TTL_MS })
    return { port: this.port, identity, key }
  }

  /** End the links of `peer` (banned, gone). */
  drop(peer: string): void {
    for (const s of this.links.get(peer) ?? []) s.destroy()
  }

  async close(): Promise<void> {
    for (const set of this.links.values()) for (const s of set) s.destroy()
    await Promise.all(this.servers.map(s => new Promise(resolve => s.close(resolve))))
    this.servers.length = 0
  }

  /** Count a new socket against its host's MAX_LINK_SOCKETS_PER_HOST; close it if over. */
  private counted(socket: Socket): void {
    const host = socket.remoteAddress ?? ''
    const n = this.perHost.get(host) ?? 0
    if (n >= MAX_LINK_SOCKETS_PER_HOST) {
      socket.destroy()
      return
    }
    this.perHost.set(host, n + 1)
    socket.once('close', () => {
      const left = (this.perHost.get(host) ?? 1) - 1
      if (left <= 0) this.perHost.delete(host)
      else this.perHost.set(host, left)
    })
  }

  private keyFor(socket: TLSSocket, identity: string): Buffer | null {
    const o = this.offers.get(identity)
    this.offers.delete(identity)
    if (o === undefined || o.expires < performance.now()) return null
    this.owner.set(socket, o.peer)
    return o.key
  }

  private accepted(socket: TLSSocket): void {
    const peer = this.owner.get(socket)
    const set = peer === undefined ? undefined : (this.links.get(peer) ?? new Set())
    if (peer === undefined || set === undefined || set.size >= MAX_LINKS_PER_PEER) {
      socket.destroy()
      return
    }
    set.add(socket)
    this.links.set(peer, set)
    socket.once('close', () => {
      set.delete(socket)
      if (set.size === 0 && this.links.get(peer) === set) this.links.delete(peer)
    })
    new ServedLink(socket, peer, this.init, this.pool).start()
  }
}

/** One link, holder side: parse requests as they are served, answer, write replies in order. */
class ServedLink {
  private readonly socket: TLSSocket
  private readonly peer: string
  private readonly init: LinkServerInit
  private readonly pool: BufferPool
  private input: Buffer = Buffer.alloc(0)
  private readonly answering: Array<ReturnType<LinkServerInit['answer']>> = []
  private writing = false
  /** When we last wrote to the link: a request waiting longer gets a keep-alive frame. */
  private lastWrite = performance.now()

  constructor(socket: TLSSocket, peer: string, init: LinkServerInit, pool: BufferPool) {
    this.socket = socket
    this.peer = peer
    this.init = init
    this.pool = pool
  }

  start(): void {
    const { socket } = this
    socket.setTimeout(LINK_IDLE_MS, () => socket.destroy())
    // While a request waits (the serve rate, the disk), an empty frame each LINK_KEEPALIVE_MS
    // tells the fetcher the link is alive, so it can give up on a silent one within seconds.
    const keepAlive = setInterval(() => {
      const quiet = performance.now() - this.lastWrite >= LINK_KEEPALIVE_MS
      if (this.answering.length > 0 && quiet && !socket.destroyed) {
        this.lastWrite = performance.now()
        socket.write(KEEPALIVE)
      }
    }, LINK_KEEPALIVE_MS)
    keepAlive.unref()
    socket.once('close', () => clearInterval(keepAlive))
    socket.setNoDelay(true)
    socket.on('error', err => log('link with %s: %s', this.peer, err.message))
    socket.on('data', (d: Buffer) => {
      this.input = this.input.length === 0 ? d : Buffer.concat([this.input, d])
      if (this.input.length > LINK_BUFFER_BYTES) socket.pause()
      this.pump()
    })
  }

  /** Take requests off the input while fewer than LINK_PIPELINE are being answered. */
  private pump(): void {
    if (this.socket.destroyed) return
    try {
      while (this.answering.length < LINK_PIPELINE && !this.socket.destroyed) {
        const head = frameHead(this.input, 0, MAX_ARTIFACT_REQUEST_BYTES)
        if (head === undefined || head[0] + head[1] > this.input.length) break
        const req = decodeArtifactRequest(this.input.subarray(head[0], head[0] + head[1]))
        this.input = this.input.subarray(head[0] + head[1])
        if (req.kind !== 'chunk' && req.kind !== 'manifest') {
          throw new ProtocolViolationError(
            `an artifact link carries chunks and manifests, not ${req.kind}`
          )
        }
        if (!this.init.serves(this.peer)) {
          this.socket.destroy()
          return
        }
        const buf = req.kind === 'chunk' ? this.pool.take() : undefined
        const answer = this.init.answer(this.peer, req, buf).then(
          r => ({
            pieces: r.pieces,
            done: () => (r.done(), buf !== undefined && this.pool.give(buf))
          }),
          (err: unknown) => {
            if (buf !== undefined) this.pool.give(buf)
            throw err
          }
        )
        // Settled here too, so a link that closes with answers queued leaves no rejection unheard.
        answer.catch(() => {})
        this.answering.push(answer)
      }
      if (this.input.length <= LINK_BUFFER_BYTES && this.socket.isPaused()) this.socket.resume()
    } catch (err) {
      this.init.fault(this.peer, err as Error)
      this.socket.destroy()
      return
    }
    if (!this.writing) void this.write()
  }

  /**
   * Write the replies in the order asked, each once its answer is ready. Runs until no answer is
   * left, also after the socket closed (each answer's `done` is called, written or not).
   */
  private async write(): Promise<void> {
    this.writing = true
    try {
      while (this.answering.length > 0) {
        let reply: Awaited<ReturnType<LinkServerInit['answer']>>
        try {
          reply = await this.answering[0]!
        } catch (err) {
          log('link with %s: %s', this.peer, (err as Error).message)
          void this.answering.shift()
          this.socket.destroy()
          continue
        }
        void this.answering.shift()
        try {
          if (!this.socket.destroyed) await this.send(reply.pieces)
        } catch (err) {
          log('link with %s: %s', this.peer, (err as Error).message)
          this.socket.destroy()
        } finally {
          reply.done()
        }
        this.pump()
      }
    } finally {
      this.writing = false
    }
  }

  /**
   * Write a reply's pieces; resolves once the socket has taken the last of them (its callback), so
   * the chunk's buffer may be reused: until then the stream may still hold a reference to it.
   */
  private send(pieces: Uint8Array[]): Promise<void> {
    const { socket } = this
    const timeoutMs = this.init.timeoutMs
    this.lastWrite = performance.now()
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new ExchangeTimeoutError(`peer did not read our data within ${timeoutMs} ms`))
      }, timeoutMs)
      pieces.forEach((p, i) => {
        if (i < pieces.length - 1) socket.write(p)
        else {
          socket.write(p, err => {
            this.lastWrite = performance.now()
            clearTimeout(timer)
            if (err === null || err === undefined) resolve()
            else reject(err)
          })
        }
      })
    })
  }
}

/** Up to LINK_POOL_BUFFERS chunk buffers for reuse, dropped when unused for POOL_IDLE_MS. */
class BufferPool {
  private readonly free: Buffer[] = []
  private lent = 0
  private timer: ReturnType<typeof setTimeout> | undefined

  /** A buffer to read a chunk into, or undefined when LINK_POOL_BUFFERS are lent (read into a new one). */
  take(): Buffer | undefined {
    clearTimeout(this.timer)
    if (this.free.length === 0 && this.lent >= LINK_POOL_BUFFERS) return undefined
    this.lent++
    return this.free.pop() ?? Buffer.allocUnsafe(CHUNK_BUFFER_BYTES)
  }

  give(buf: Buffer): void {
    this.lent--
    this.free.push(buf)
    clearTimeout(this.timer)
    this.timer = setTimeout(() => {
      this.free.length = 0
    }, POOL_IDLE_MS)
    this.timer.unref()
  }
}

interface Waiting {
  resolve(payload: Lent): void
  reject(err: Error): void
  /** Its asker gave up: the reply is read and dropped. */
  abandoned: boolean
}

/** One link, fetcher side. */
class TlsLink implements ArtifactLink {
  private readonly socket: TLSSocket
  private readonly timeoutMs: number
  private readonly waiting: Waiting[] = []
  /** The reply being read: its buffer (from `pool` if it fits) and how much of it has arrived. */
  private reply: { buf: Buffer; at: number; pooled: boolean } | undefined
  private readonly pool: BufferPool
  private head: Buffer = Buffer.alloc(0)
  private replyLength = 0
  private lastProgress = performance.now()
  private readonly timer: ReturnType<typeof setInterval>
  private error: Error | undefined
  /**
   * The link closed; `fault`: a peer fault no request carried to its asker (to be reported);
   * `stalled`: it went silent with requests waiting.
   */
  onClose: ((fault: Error | undefined, stalled: boolean) => void) | undefined

  constructor(socket: TLSSocket, timeoutMs: number, pool: BufferPool) {
    this.socket = socket
    this.timeoutMs = timeoutMs
    this.pool = pool
    socket.setNoDelay(true)
    socket.on('error', err => this.close(err))
    socket.once('close', () => this.close(new PeerGoneError('the artifact link closed')))
    this.timer = setInterval(() => this.watch(), Math.min(1000, timeoutMs / 2))
    this.timer.unref()
  }

  get open(): boolean {
    return this.error === undefined
  }

  request(req: ArtifactRequest, signal: AbortSignal): Promise<Lent> | undefined {
    if (this.error !== undefined || this.waiting.length >= MAX_LINK_WAITING) return undefined
    signal.throwIfAborted()
    if (this.waiting.length === 0) this.lastProgress = performance.now()
    return new Promise<Lent>((resolve, reject) => {
      const onAbort = (): void => {
        w.abandoned = true
        reject(signal.reason as Error)
      }
      const w: Waiting = {
        resolve: p => {
          signal.removeEventListener('abort', onAbort)
          resolve(p)
        },
        reject: e => {
          signal.removeEventListener('abort', onAbort)
          reject(e)
        },
        abandoned: false
      }
      signal.addEventListener('abort', onAbort, { once: true })
      this.waiting.push(w)
      this.socket.write(encodeFrame(encodeArtifactRequest(req)))
    })
  }

  close(err?: Error, fault?: Error, stalled = false): void {
    if (this.error !== undefined) return
    this.error = err ?? new PeerGoneError('the artifact link closed')
    clearInterval(this.timer)
    this.socket.destroy()
    for (const w of this.waiting.splice(0)) if (!w.abandoned) w.reject(this.error)
    if (this.reply?.pooled === true) this.pool.give(this.reply.buf)
    this.reply = undefined
    this.onClose?.(fault, stalled)
  }

  private watch(): void {
    const idle = performance.now() - this.lastProgress
    if (this.waiting.length > 0 && idle > LINK_STALL_MS) {
      // A holder sends keep-alives while it works on a request: this link has gone silent (a
      // firewall or NAT dropping it): its requests fail, and the next go over the mesh.
      this.close(
        new ExchangeTimeoutError(`nothing on the artifact link for ${LINK_STALL_MS} ms`),
        undefined,
        true
      )
    } else if (this.waiting.length === 0 && idle > LINK_IDLE_MS) this.close()
  }

  /** Bytes read (into the socket's one read buffer: copied out before this returns). */
  data(d: Buffer): void {
    this.lastProgress = performance.now()
    try {
      let at = 0
      while (at < d.length && this.error === undefined) {
        if (this.reply === undefined) {
          // The reply's length: a varint, which may be split across reads.
          const joined =
            this.head.length === 0 ? d.subarray(at) : Buffer.concat([this.head, d.subarray(at)])
          const h = frameHead(joined, 0, MAX_ARTIFACT_REPLY_BYTES)
          if (h === undefined) {
            this.head = Buffer.from(joined)
            return
          }
          if (this.waiting.length === 0) {
            throw new ProtocolViolationError('a peer sent an artifact reply nobody asked for')
          }
          at += h[0] - this.head.length
          this.head = Buffer.alloc(0)
          // An empty frame: the holder's keep-alive while it works on our request.
          if (h[1] === 0) continue
          const pooled = h[1] <= CHUNK_BUFFER_BYTES ? this.pool.take() : undefined
          this.reply = {
            buf: pooled ?? Buffer.allocUnsafe(h[1]),
            at: 0,
            pooled: pooled !== undefined
          }
          this.replyLength = h[1]
        }
        const r = this.reply
        const n = Math.min(this.replyLength - r.at, d.length - at)
        d.copy(r.buf, r.at, at, at + n)
        r.at += n
        at += n
        if (r.at === this.replyLength) {
          this.reply = undefined
          const w = this.waiting.shift()!
          let lent = true
          const release = (): void => {
            if (lent && r.pooled) this.pool.give(r.buf)
            lent = false
          }
          if (w.abandoned) release()
          // A plain Uint8Array, not a Buffer: its slice() copies (a Buffer's is a view, and a view
          // kept past `release` would change under the next reply).
          else w.resolve({ bytes: new Uint8Array(r.buf.buffer, r.buf.byteOffset, r.at), release })
        }
      }
    } catch (err) {
      // The first waiting request carries the fault to the fetch engine, which bans the peer;
      // with none to carry it, the link's owner reports it.
      const w = this.waiting.shift()
      const carried = w !== undefined && !w.abandoned
      if (carried) w.reject(err as Error)
      this.close(err as Error, carried ? undefined : (err as Error))
    }
  }
}

/** Open a link to `host` with an offer the holder made us. */
async function openLink(
  host: string,
  offer: LinkOffer,
  timeoutMs: number,
  signal: AbortSignal
): Promise<ArtifactLink> {
  signal.throwIfAborted()
  // The link, once the handshake is done (nothing is read before: requests come after it).
  const ref: { link?: TlsLink } = {}
  const options: ConnectionOptions & { onread: OnReadOpts } = {
    ...tlsOptions,
    // Every read into one buffer (copied into the reply's at once), not a new buffer per TLS
    // record: 16 KiB records of a 256 MiB artifact were 16,384 buffers of external memory.
    onread: {
      buffer: Buffer.allocUnsafe(READ_BUFFER_BYTES),
      callback: (n: number, buf: Uint8Array) => {
        ref.link?.data(Buffer.from(buf.buffer, buf.byteOffset, n))
        return true
      }
    },
    host,
    port: offer.port,
    pskCallback: () => ({ psk: Buffer.from(offer.key), identity: offer.identity }),
    // No certificate in a PSK handshake: the key is what authenticates the holder.
    checkServerIdentity: () => undefined
  }
  const socket = connect(options)
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => fail(new ExchangeTimeoutError(`no artifact link handshake within ${timeoutMs} ms`)),
        timeoutMs
      )
      const onAbort = (): void => fail(signal.reason as Error)
      const fail = (err: Error): void => {
        done()
        reject(err)
      }
      const done = (): void => {
        clearTimeout(timer)
        signal.removeEventListener('abort', onAbort)
        socket.off('error', fail)
      }
      signal.addEventListener('abort', onAbort, { once: true })
      socket.once('error', fail)
      socket.once('secureConnect', () => {
        done()
        resolve()
      })
    })
  } catch (err) {
    socket.destroy()
    throw err
  }
  ref.link = new TlsLink(socket, timeoutMs, fetchPool)
  return ref.link
}

/** The buffers links read replies into, shared by every link of this process. */
const fetchPool = new BufferPool()

/** Links over TLS with pre-shared keys (Node's `tls`, so OpenSSL). */
export const tlsArtifactLinks: ArtifactLinks = {
  serve: async init => {
    const server = new TlsLinkServer(init)
    await server.listen()
    return server
  },
  open: openLink
}
