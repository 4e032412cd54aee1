/**
 * The artifact service: serves the chunks this node holds to enrolled peers, and presents its
 * connected enrolled peers as chunk sources to the node's fetch engine (node/artifacts/fetch.ts).
 * Wire format in artifact-protocol.ts.
 *
 * - Served to enrolled devices only: a viewer or admin browser session, or anyone else, gets its
 *   stream reset before a byte is read.
 * - Bounded: one request per stream, at most `MAX_ARTIFACT_STREAMS` at once per peer connection
 *   (libp2p resets the streams over it; our own requests to a peer wait for one of its
 *   MAX_ARTIFACT_STREAMS, however many fetches ask it), request frames of 64 bytes, replies of
 *   one chunk; every
 *   exchange within `exchangeTimeoutMs`. Bytes per second are the holder's to bound (the daemon's
 *   `artifactServeRate`), since it reads the chunks.
 * - A peer that sends a malformed request or reply is rejected (banned) through admission; one
 *   that sends a wrong manifest or chunk is reported by the fetch engine through `faulty()`.
 * - Streams only on connections already held: fetching never dials.
 * - Announcements ("I now hold chunks …") are taken at MAX_ANNOUNCES_PER_SECOND per peer and
 *   handed to the holder (the fetch engine marks the chunks held by that peer).
 * - Super-seeding: while SUPERSEED_BUSY_SERVES chunk replies are queued or going out, a request
 *   for a chunk of an artifact held complete that was already sent to another peer still
 *   connected is answered busy (unless it insists): the seed's thin upload carries each chunk
 *   once, and the fetchers pass it on among themselves.
 */
import { logger } from '@libp2p/logger'
import type { Connection, PeerId, Startable, Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { isPeerFault } from '../crdt/errors.ts'
import { ByteWriter } from '../crdt/bytes.ts'
import {
  ARTIFACT_PROTOCOL,
  decodeArtifactRequest,
  decodeBodyPieces,
  decodeBodyReply,
  decodeHaveReply,
  encodeArtifactRequest,
  encodeHaveReply,
  MAX_ARTIFACT_REPLY_BYTES,
  MAX_ARTIFACT_REQUEST_BYTES,
  MAX_ANNOUNCES_PER_SECOND,
  MAX_ARTIFACT_STREAMS,
  MAX_SUPERSEED_ARTIFACTS,
  REPLY_BUSY,
  REPLY_NOT_HELD,
  REPLY_OK,
  SUPERSEED_BUSY_SERVES,
  type ArtifactRequest
} from './artifact-protocol.ts'
import { streamOnConnection, type ProtocolComponents } from './connections.ts'
import { ExchangeTimeoutError, SessionRefusedError } from './errors.ts'
import { readOneFrame, readOneFramePieces, sendFrame } from './frames.ts'
import type { PeerAdmission } from './admission-service.ts'
import type { ArtifactHolder, ArtifactSource, MeshArtifacts, MeshLimits } from './types.ts'

const log = logger('rhizome:mesh:artifacts')

export interface ArtifactServiceComponents extends ProtocolComponents {
  /** Who a peer is (only `node`, an enrolled device, is served or asked), and how to ban one. */
  admission: Pick<PeerAdmission, 'admissionOf' | 'reject'>
}

export interface ArtifactServiceInit {
  /** What this node holds (the daemon's store); without one, nothing is served. */
  holder?: ArtifactHolder
  limits: Pick<MeshLimits, 'exchangeTimeoutMs'>
}

export class ArtifactService implements Startable, MeshArtifacts {
  private readonly components: ArtifactServiceComponents
  private readonly init: ArtifactServiceInit
  readonly served = { chunks: 0, bytes: 0, refused: 0, busy: 0 }
  /** Chunk replies queued (serve rate) or being sent: how full the upload is. */
  private serving = 0
  /** Per artifact held complete: which peer each chunk went to (super-seeding), oldest first. */
  private readonly sentTo = new Map<string, Map<number, string>>()
  /** Per peer: our requests' streams open with it, and the requests waiting for one. */
  private readonly asking = new Map<string, { open: number; waiting: Array<() => void> }>()
  /** Per peer: announce messages taken in the current second. */
  private readonly announces = new Map<string, { second: number; n: number }>()

  constructor(components: ArtifactServiceComponents, init: ArtifactServiceInit) {
    this.components = components
    this.init = init
  }

  async start(): Promise<void> {
    await this.components.registrar.handle(
      ARTIFACT_PROTOCOL,
      (stream, connection) => {
        this.serve(stream, connection)
      },
      { maxInboundStreams: MAX_ARTIFACT_STREAMS, maxOutboundStreams: MAX_ARTIFACT_STREAMS }
    )
  }

  async stop(): Promise<void> {
    await this.components.registrar.unhandle(ARTIFACT_PROTOCOL)
  }

  /** Connected enrolled peers, each as a source of chunks. */
  sources(): ArtifactSource[] {
    const out: ArtifactSource[] = []
    const seen = new Set<string>()
    for (const c of this.components.connectionManager.getConnections()) {
      const id = c.remotePeer.toString()
      if (seen.has(id) || c.status !== 'open') continue
      seen.add(id)
      if (this.components.admission.admissionOf(c.remotePeer) !== 'node') continue
      out.push(this.source(c.remotePeer))
    }
    return out
  }

  /** A peer sent a wrong manifest or chunk: ban it like any peer that sends invalid data. */
  faulty(peerId: string, err: Error): void {
    try {
      this.components.admission.reject(peerIdFromString(peerId), err)
    } catch (e) {
      log.error('cannot reject %s: %e', peerId, e)
    }
  }

  private source(peer: PeerId): ArtifactSource {
    return {
      id: peer.toString(),
      have: async (digest, signal) =>
        decodeHaveReply(await this.ask(peer, { kind: 'have', digest }, signal)),
      manifest: async (digest, signal) => {
        const body = decodeBodyReply(await this.ask(peer, { kind: 'manifest', digest }, signal))
        return body === 'busy' ? undefined : body
      },
      announce: async (digest, indices, signal) => {
        await this.ask(peer, { kind: 'announce', digest, indices }, signal)
      },
      chunk: async (digest, index, signal, opts) => {
        const req: ArtifactRequest = { kind: 'chunk', digest, index }
        if (opts?.insist === true) req.insist = true
        const body = decodeBodyPieces(
          await this.ask(peer, req, signal, readOneFramePieces),
          'chunk'
        )
        if (body === undefined) {
          throw new SessionRefusedError(
            `${peer.toString()} no longer holds chunk ${index} of ${digest}`
          )
        }
        return body
      }
    }
  }

  private async ask(peer: PeerId, req: ArtifactRequest, signal: AbortSignal): Promise<Uint8Array>
  private async ask<T>(
    peer: PeerId,
    req: ArtifactRequest,
    signal: AbortSignal,
    read: (stream: Stream, max: number, timeoutMs: number) => Promise<T>
  ): Promise<T>
  private async ask(
    peer: PeerId,
    req: ArtifactRequest,
    signal: AbortSignal,
    read: (stream: Stream, max: number, timeoutMs: number) => Promise<unknown> = readOneFrame
  ): Promise<unknown> {
    const timeoutMs = this.init.limits.exchangeTimeoutMs
    const release = await this.slot(peer.toString(), signal)
    let stream: Stream
    try {
      stream = await streamOnConnection(
        this.components.connectionManager,
        peer,
        ARTIFACT_PROTOCOL,
        {
          signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]),
          // Asks to send the request with the protocol's name, no round trip before it. libp2p
          // 3.3 over Yamux ignores this and negotiates in full: one round trip per stream, so per
          // chunk (docs/benchmarks.md, "## artifacts"). Kept for a libp2p that honours it.
          negotiateFully: false
        }
      )
    } catch (err) {
      release()
      throw err
    }
    const onAbort = (): void => {
      stream.abort(new ExchangeTimeoutError('artifact request abandoned'))
    }
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      await sendFrame(stream, encodeArtifactRequest(req), timeoutMs)
      const reply = await read(stream, MAX_ARTIFACT_REPLY_BYTES, timeoutMs)
      // The slot is free once the stream is gone on both sides: until then both count it.
      // A peer that never closes its side has its stream reset after timeoutMs.
      void stream
        .close({ signal: AbortSignal.timeout(timeoutMs) })
        .catch((err: unknown) => stream.abort(err as Error))
        .finally(release)
      return reply
    } catch (err) {
      stream.abort(err as Error)
      release()
      throw err
    } finally {
      signal.removeEventListener('abort', onAbort)
    }
  }

  /**
   * Wait for one of the MAX_ARTIFACT_STREAMS streams we may have open with `peer` (or `signal`);
   * returns its release. The peer resets the streams over that many, and libp2p refuses to open
   * them: a request over it (several fetches asking the same peer at once, a "which chunks" poll
   * beside four chunk requests each) failed, and the fetch left that peer alone for seconds.
   * Waiters are the callers' own requests, bounded by the fetch engine's concurrency.
   */
  private async slot(peer: string, signal: AbortSignal): Promise<() => void> {
    let q = this.asking.get(peer)
    if (q === undefined) {
      q = { open: 0, waiting: [] }
      this.asking.set(peer, q)
    }
    const queue = q
    if (queue.open >= MAX_ARTIFACT_STREAMS) {
      signal.throwIfAborted()
      await new Promise<void>((resolve, reject) => {
        const turn = (): void => {
          signal.removeEventListener('abort', onAbort)
          resolve()
        }
        const onAbort = (): void => {
          queue.waiting.splice(queue.waiting.indexOf(turn), 1)
          reject(signal.reason as Error)
        }
        signal.addEventListener('abort', onAbort, { once: true })
        queue.waiting.push(turn)
      })
    } else queue.open++
    let released = false
    return () => {
      if (released) return
      released = true
      // The slot goes straight to the next waiter, if any (it stays counted).
      const next = queue.waiting.shift()
      if (next !== undefined) next()
      else if (--queue.open === 0 && this.asking.get(peer) === queue) this.asking.delete(peer)
    }
  }

  private serve(stream: Stream, connection: Connection): void {
    const peer = connection.remotePeer
    if (this.components.admission.admissionOf(peer) !== 'node') {
      this.served.refused++
      stream.abort(new SessionRefusedError('artifacts are served to enrolled devices only'))
      return
    }
    const timeoutMs = this.init.limits.exchangeTimeoutMs
    void (async () => {
      const req = decodeArtifactRequest(
        await readOneFrame(stream, MAX_ARTIFACT_REQUEST_BYTES, timeoutMs)
      )
      const holder = this.init.holder
      if (req.kind === 'have') {
        await sendFrame(stream, encodeHaveReply(holder?.have(req.digest)), timeoutMs)
      } else if (req.kind === 'announce') {
        const taken = holder?.announced !== undefined && this.takeAnnounce(peer.toString())
        if (taken) holder.announced?.(peer.toString(), req.digest, req.indices)
        await sendFrame(stream, taken ? REPLY_OK : REPLY_NOT_HELD, timeoutMs)
      } else if (req.kind === 'manifest') {
        const body = holder?.manifest(req.digest)
        if (body === undefined) await sendFrame(stream, REPLY_NOT_HELD, timeoutMs)
        else await sendOkReply(stream, body, timeoutMs)
      } else if (holder !== undefined && this.busy(holder, req, peer.toString())) {
        this.served.busy++
        await sendFrame(stream, REPLY_BUSY, timeoutMs)
      } else {
        this.serving++
        try {
          const body = await holder?.chunk(req.digest, req.index)
          if (body === undefined) await sendFrame(stream, REPLY_NOT_HELD, timeoutMs)
          else {
            await sendOkReply(stream, body, timeoutMs)
            this.served.chunks++
            this.served.bytes += body.length
          }
        } finally {
          this.serving--
        }
      }
      await stream.close({ signal: AbortSignal.timeout(timeoutMs) })
    })().catch(err => {
      if (isPeerFault(err)) this.components.admission.reject(peer, err as Error)
      else log('artifact request from %s: %s', peer, (err as Error).message)
      stream.abort(err as Error)
    })
  }

  /**
   * Super-seeding: should this chunk request be answered busy? Only for an artifact held
   * complete, while the upload is saturated, when the chunk already went to another peer that is
   * still connected (so the asker can get it there). Otherwise the chunk is recorded as going to
   * the asker.
   */
  private busy(
    holder: NonNullable<ArtifactServiceInit['holder']>,
    req: { digest: string; index: number; insist?: boolean },
    asker: string
  ): boolean {
    if (holder.superSeed === false || holder.have(req.digest)?.all !== true) return false
    let sent = this.sentTo.get(req.digest)
    if (sent === undefined) {
      sent = new Map()
      this.sentTo.set(req.digest, sent)
      for (const d of this.sentTo.keys()) {
        if (this.sentTo.size <= MAX_SUPERSEED_ARTIFACTS) break
        this.sentTo.delete(d)
      }
    }
    const to = sent.get(req.index)
    if (
      req.insist !== true &&
      this.serving >= SUPERSEED_BUSY_SERVES &&
      to !== undefined &&
      to !== asker &&
      this.connected(to)
    ) {
      return true
    }
    sent.set(req.index, asker)
    return false
  }

  private connected(peerId: string): boolean {
    try {
      return this.components.connectionManager
        .getConnections(peerIdFromString(peerId))
        .some(c => c.status === 'open')
    } catch {
      return false
    }
  }

  /** One more announce from `peer` this second, within MAX_ANNOUNCES_PER_SECOND? */
  private takeAnnounce(peer: string): boolean {
    const second = Math.floor(performance.now() / 1000)
    const a = this.announces.get(peer)
    if (a === undefined || a.second !== second) {
      // Entries of past seconds are worthless: the map holds only this second's announcers.
      if (a === undefined && this.announces.size >= 1024) this.announces.clear()
      this.announces.set(peer, { second, n: 1 })
      return true
    }
    return ++a.n <= MAX_ANNOUNCES_PER_SECOND
  }
}

/**
 * A status-0 reply: the frame's length and status as one piece, then the body as it is (not
 * copied): two sends, so the muxer frames them as two data frames at most (they were three).
 */
async function sendOkReply(stream: Stream, body: Uint8Array, timeoutMs: number): Promise<void> {
  const head = new ByteWriter()
    .varint(body.length + 1)
    .u8(0)
    .finish()
  // Both sent, whatever the first answers: the second only queues behind it.
  const ok = [stream.send(head), stream.send(body)].every(Boolean)
  if (!ok) {
    try {
      await stream.onDrain({ signal: AbortSignal.timeout(timeoutMs) })
    } catch {
      throw new ExchangeTimeoutError(`peer did not read our data within ${timeoutMs} ms`)
    }
  }
}

/** The service factory, for libp2p's `services`. */
export function artifactExchange(
  init: ArtifactServiceInit
): (components: ArtifactServiceComponents) => ArtifactService {
  return components => new ArtifactService(components, init)
}
