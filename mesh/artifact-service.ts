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
 * - Streams only on connections already held: fetching never dials a peer. The one exception is
 *   an artifact link (artifact-link.ts): a TLS connection to the port the holder offered over
 *   the mesh, at the address a held connection reaches it on, used while that connection stands
 *   (the holder checks before every request). Chunks and manifests go over a peer's link once it
 *   is open, the rest (which chunks, announcements) over streams.
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
  ARTIFACT_LINK_PROTOCOL,
  ARTIFACT_PROTOCOL,
  decodeArtifactRequest,
  decodeLinkOffer,
  encodeLinkOffer,
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
import { ExchangeTimeoutError, MalformedMessageError, SessionRefusedError } from './errors.ts'
import { encodeFrame, readOneFrame, readOneFramePieces, sendFrame } from './frames.ts'
import type { PeerAdmission } from './admission-service.ts'
import type {
  ArtifactHolder,
  ArtifactLink,
  ArtifactLinks,
  ArtifactSource,
  Lent,
  LinkServer,
  MeshArtifacts,
  MeshLimits
} from './types.ts'

const log = logger('rhizome:mesh:artifacts')

export interface ArtifactServiceComponents extends ProtocolComponents {
  /** Who a peer is (only `node`, an enrolled device, is served or asked), and how to ban one. */
  admission: Pick<PeerAdmission, 'admissionOf' | 'reject'>
}

export interface ArtifactServiceInit {
  /** What this node holds (the daemon's store); without one, nothing is served. */
  holder?: ArtifactHolder
  limits: Pick<MeshLimits, 'exchangeTimeoutMs'>
  /**
   * Artifact links (daemons: artifact-link.ts): chunks and manifests fetched over one, once open,
   * and served on `port` at `hosts` (no hosts, or `port` false: none served).
   */
  links?: { impl: ArtifactLinks; hosts: string[]; port: number | false }
}

/** A holder that offered no link (or whose link failed to open) is asked again after this long. */
const LINK_RETRY_MS = 60_000
/** The reply to one request: frame pieces, and `done` once they went out (or were dropped). */
type Reply = { pieces: Uint8Array[]; done(): void }
const noop = (): void => {}

export class ArtifactService implements Startable, MeshArtifacts {
  private readonly components: ArtifactServiceComponents
  private readonly init: ArtifactServiceInit
  readonly served = { chunks: 0, bytes: 0, refused: 0, busy: 0 }
  /** Chunks we received, over artifact links and over streams. */
  readonly received = { overLinks: 0, overStreams: 0 }
  /** Chunk replies queued (serve rate) or being sent: how full the upload is. */
  private serving = 0
  /** Per artifact held complete: which peer each chunk went to (super-seeding), oldest first. */
  private readonly sentTo = new Map<string, Map<number, string>>()
  /** Per peer: our requests' streams open with it, and the requests waiting for one. */
  private readonly asking = new Map<string, { open: number; waiting: Array<() => void> }>()
  /** Per peer: announce messages taken in the current second. */
  private readonly announces = new Map<string, { second: number; n: number }>()
  private linkServer: LinkServer | undefined
  /** Per peer: our open link, or when to try opening one again; peers whose link is opening. */
  private readonly links = new Map<string, ArtifactLink>()
  private readonly noLinkUntil = new Map<string, number>()
  private readonly opening = new Set<string>()
  private running = false

  constructor(components: ArtifactServiceComponents, init: ArtifactServiceInit) {
    this.components = components
    this.init = init
  }

  async start(): Promise<void> {
    this.running = true
    await this.components.registrar.handle(
      ARTIFACT_PROTOCOL,
      (stream, connection) => {
        this.serve(stream, connection)
      },
      { maxInboundStreams: MAX_ARTIFACT_STREAMS, maxOutboundStreams: MAX_ARTIFACT_STREAMS }
    )
    const links = this.init.links
    if (links === undefined || links.port === false || this.init.holder === undefined) return
    if (links.hosts.length === 0) return
    const server = await links.impl.serve({
      hosts: links.hosts,
      port: links.port,
      timeoutMs: this.init.limits.exchangeTimeoutMs,
      serves: peer => this.serves(peer),
      answer: (peer, req, into) => this.reply(peer, req, into),
      fault: (peer, err) => this.faulty(peer, err)
    })
    if (server.port === 0) return
    this.linkServer = server
    await this.components.registrar.handle(
      ARTIFACT_LINK_PROTOCOL,
      (stream, connection) => {
        this.offerLink(stream, connection)
      },
      { maxInboundStreams: 2, maxOutboundStreams: 2 }
    )
  }

  async stop(): Promise<void> {
    this.running = false
    await this.components.registrar.unhandle(ARTIFACT_PROTOCOL)
    if (this.linkServer !== undefined) {
      await this.components.registrar.unhandle(ARTIFACT_LINK_PROTOCOL)
      await this.linkServer.close()
      this.linkServer = undefined
    }
    for (const link of this.links.values()) link.close()
  }

  /** Artifact links open, ours and to us. */
  linksOpen(): { out: number; in: number } {
    return { out: this.links.size, in: this.linkServer?.open ?? 0 }
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
    this.links.get(peerId)?.close(err)
    this.linkServer?.drop(peerId)
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
        const req: ArtifactRequest = { kind: 'manifest', digest }
        const linked = await this.overLink(peer, req, signal)
        // A manifest is kept: copied out of the link's buffer (Uint8Array's slice copies).
        const payload =
          linked !== undefined
            ? Uint8Array.prototype.slice.call(linked.bytes)
            : await this.ask(peer, req, signal)
        linked?.release()
        const body = decodeBodyReply(payload)
        return body === 'busy' ? undefined : body
      },
      announce: async (digest, indices, signal) => {
        await this.ask(peer, { kind: 'announce', digest, indices }, signal)
      },
      chunk: async (digest, index, signal, opts) => {
        const req: ArtifactRequest = { kind: 'chunk', digest, index }
        if (opts?.insist === true) req.insist = true
        const linked = await this.overLink(peer, req, signal)
        let body
        try {
          body = decodeBodyPieces(
            linked !== undefined
              ? [linked.bytes]
              : await this.ask(peer, req, signal, readOneFramePieces),
            'chunk'
          )
        } catch (err) {
          linked?.release()
          throw err
        }
        if (linked !== undefined && (body === undefined || body === 'busy')) linked.release()
        if (body !== undefined && body !== 'busy') {
          if (linked !== undefined) this.received.overLinks++
          else this.received.overStreams++
        }
        if (body === undefined) {
          throw new SessionRefusedError(
            `${peer.toString()} no longer holds chunk ${index} of ${digest}`
          )
        }
        // Over a link the body is one piece, in the link's buffer: lent to the caller.
        return linked !== undefined && body !== 'busy'
          ? { bytes: body[0]!, release: () => linked.release() }
          : body
      }
    }
  }

  /**
   * `req` over our artifact link to `peer`, if one is open: the reply's payload. Undefined when
   * there is none (one starts opening, unless it failed lately): the caller asks over a stream.
   */
  private overLink(
    peer: PeerId,
    req: ArtifactRequest,
    signal: AbortSignal
  ): Promise<Lent> | undefined {
    const id = peer.toString()
    const link = this.links.get(id)
    if (link === undefined || !link.open) {
      this.openLink(peer)

      return undefined
    }
    const r = link.request(req, signal)

    return r
  }

  /** Ask `peer` for a link offer over the mesh and open it, in the background (one at a time). */
  private openLink(peer: PeerId): void {
    const id = peer.toString()
    const impl = this.init.links?.impl
    if (impl === undefined || this.opening.has(id) || this.links.has(id)) return
    if ((this.noLinkUntil.get(id) ?? 0) > performance.now()) return
    const conn = this.components.connectionManager
      .getConnections(peer)
      .find(c => c.status === 'open')
    const host = conn === undefined ? undefined : linkHost(conn)
    if (conn === undefined || host === undefined) {
      this.noLinkUntil.set(id, performance.now() + LINK_RETRY_MS)
      return
    }
    this.opening.add(id)
    const timeoutMs = this.init.limits.exchangeTimeoutMs
    void (async () => {
      const signal = AbortSignal.timeout(timeoutMs)
      const stream = await conn.newStream(ARTIFACT_LINK_PROTOCOL, { signal })
      let offer
      try {
        await sendFrame(stream, Uint8Array.of(1), timeoutMs)
        offer = decodeLinkOffer(await readOneFrame(stream, 64, timeoutMs))
        await stream.close({ signal })
      } catch (err) {
        stream.abort(err as Error)
        throw err
      }
      if (offer === undefined) throw new SessionRefusedError(`${id} offers no artifact link now`)
      const link = await impl.open(host, offer, timeoutMs, signal)
      link.onClose = (fault, stalled) => {
        if (this.links.get(id) === link) this.links.delete(id)
        // A link that went silent would likely do so again: the mesh connection for a while.
        if (stalled) this.noLinkUntil.set(id, performance.now() + LINK_RETRY_MS)
        if (fault !== undefined) this.faulty(id, fault)
      }
      if (!this.running || !this.connected(id)) {
        link.close()
        return
      }
      this.links.set(id, link)
      log('artifact link to %s at %s:%d', id, host, offer.port)
    })()
      .catch((err: unknown) => {
        this.noLinkUntil.set(id, performance.now() + LINK_RETRY_MS)
        if (isPeerFault(err) && !(err instanceof SessionRefusedError)) this.faulty(id, err as Error)
        else log('no artifact link to %s: %s', id, (err as Error).message)
      })
      .finally(() => this.opening.delete(id))
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
      const reply = await this.reply(peer.toString(), req)
      try {
        // Both sent, whatever the first answers: the second only queues behind it.
        if (!reply.pieces.map(p => stream.send(p)).every(Boolean)) {
          try {
            await stream.onDrain({ signal: AbortSignal.timeout(timeoutMs) })
          } catch {
            throw new ExchangeTimeoutError(`peer did not read our data within ${timeoutMs} ms`)
          }
        }
      } finally {
        reply.done()
      }
      await stream.close({ signal: AbortSignal.timeout(timeoutMs) })
    })().catch(err => this.failed(peer, stream, 'artifact request from', err))
  }

  /**
   * The reply to one request from `peer`, over a stream or a link. A chunk counts as in the
   * upload (super-seeding's `serving`) from its read until `done`.
   */
  private async reply(peer: string, req: ArtifactRequest, into?: Uint8Array): Promise<Reply> {
    const holder = this.init.holder
    const frame = (payload: Uint8Array): Reply => ({ pieces: [encodeFrame(payload)], done: noop })
    if (req.kind === 'have') return frame(encodeHaveReply(holder?.have(req.digest)))
    if (req.kind === 'announce') {
      const taken = holder?.announced !== undefined && this.takeAnnounce(peer)
      if (taken) holder.announced?.(peer, req.digest, req.indices)
      return frame(taken ? REPLY_OK : REPLY_NOT_HELD)
    }
    if (req.kind === 'manifest') {
      const body = holder?.manifest(req.digest)
      return body === undefined ? frame(REPLY_NOT_HELD) : { pieces: okReply(body), done: noop }
    }
    if (holder !== undefined && this.busy(holder, req, peer)) {
      this.served.busy++
      return frame(REPLY_BUSY)
    }
    this.serving++
    let body: Uint8Array | undefined
    try {
      body = await holder?.chunk(req.digest, req.index, into)
    } catch (err) {
      this.serving--
      throw err
    }
    if (body === undefined) {
      this.serving--
      return frame(REPLY_NOT_HELD)
    }
    const length = body.length
    let done = false
    return {
      pieces: okReply(body),
      done: () => {
        if (done) return
        done = true
        this.serving--
        this.served.chunks++
        this.served.bytes += length
      }
    }
  }

  /** Answer a request for a link offer (enrolled devices only). */
  private offerLink(stream: Stream, connection: Connection): void {
    const peer = connection.remotePeer
    if (this.components.admission.admissionOf(peer) !== 'node') {
      stream.abort(new SessionRefusedError('artifact links are offered to enrolled devices only'))
      return
    }
    const timeoutMs = this.init.limits.exchangeTimeoutMs
    void (async () => {
      const ask = await readOneFrame(stream, 16, timeoutMs)
      if (ask.length !== 1 || ask[0] !== 1) {
        throw new MalformedMessageError('a malformed artifact link request')
      }
      await sendFrame(stream, encodeLinkOffer(this.linkServer?.offer(peer.toString())), timeoutMs)
      await stream.close({ signal: AbortSignal.timeout(timeoutMs) })
    })().catch(err => this.failed(peer, stream, 'link offer to', err))
  }

  /** An exchange a peer opened failed: its fault bans it, anything else is logged; the stream ends. */
  private failed(peer: PeerId, stream: Stream, what: string, err: unknown): void {
    if (isPeerFault(err)) this.components.admission.reject(peer, err as Error)
    else log('%s %s: %s', what, peer, (err as Error).message)
    stream.abort(err as Error)
  }

  /** Do we still serve `peer` over a link: an enrolled device with an open mesh connection? */
  private serves(peerId: string): boolean {
    try {
      const peer = peerIdFromString(peerId)
      return this.components.admission.admissionOf(peer) === 'node' && this.connected(peerId)
    } catch {
      return false
    }
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
 * A status-0 reply as two pieces: the frame's length and status, then the body as it is (not
 * copied), so the muxer frames them as two data frames at most (they were three).
 */
function okReply(body: Uint8Array): Uint8Array[] {
  const head = new ByteWriter()
    .varint(body.length + 1)
    .u8(0)
    .finish()
  return [head, body]
}

/**
 * The host a link to the peer of `conn` is opened to: the IP address its mesh connection reaches
 * it on (TCP or WebSockets); none through a relay.
 */
function linkHost(conn: Connection): string | undefined {
  const parts = conn.remoteAddr.getComponents()
  if (parts.some(p => p.name === 'p2p-circuit')) return undefined
  const ip = parts.find(p => p.name === 'ip4' || p.name === 'ip6')
  return parts.some(p => p.name === 'tcp') ? ip?.value : undefined
}

/** The service factory, for libp2p's `services`. */
export function artifactExchange(
  init: ArtifactServiceInit
): (components: ArtifactServiceComponents) => ArtifactService {
  return components => new ArtifactService(components, init)
}
