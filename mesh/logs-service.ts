/**
 * The logs service: serves this node's recent workload output on `/rhizome/logs/1.0.0`
 * (logs-protocol.ts) and asks other nodes for theirs.
 *
 * - Served to enrolled nodes and admin sessions only (a viewer or a stranger is refused before
 *   its request is read), at most `LOG_REQUESTS_PER_SECOND` per peer (burst `LOG_REQUEST_BURST`).
 * - Asking rides a connection already held to the node, or one the connection keeper opens to
 *   the addresses the node advertised.
 */
import { logger } from '@libp2p/logger'
import type { AbortOptions, Connection, PeerId, Startable, Stream } from '@libp2p/interface'
import { PeerMap } from '@libp2p/peer-collections'
import type { ProtocolComponents } from './connections.ts'
import { LogsRefusedError, PeerGoneError } from './errors.ts'
import { readOneFrame, sendFrame } from './frames.ts'
import {
  LOG_REQUEST_BURST,
  LOG_REQUESTS_PER_SECOND,
  LOGS_STREAMS_PER_PEER,
  MAX_REMEMBERED_PEERS
} from './limits.ts'
import {
  decodeLogsReply,
  decodeLogsRequest,
  encodeLogsReply,
  encodeLogsRequest,
  LOGS_PROTOCOL,
  MAX_LOG_LINES,
  MAX_LOGS_REPLY_BYTES,
  MAX_LOGS_REQUEST_BYTES,
  type LogsReply
} from './logs-protocol.ts'
import type { Admission, LogSource, MeshLimits } from './types.ts'
import { TokenBucket } from './work-budget.ts'

const log = logger('rhizome:mesh:logs')

export interface LogsComponents extends ProtocolComponents {
  admission: { admissionOf(peer: PeerId): Admission }
  /** Opens a connection to an enrolled node at the addresses it advertised. */
  keeper: { connect(peer: PeerId, options: AbortOptions): Promise<Connection> }
}

export interface LogsInit {
  limits: MeshLimits
}

export class LogsService implements Startable {
  private readonly components: LogsComponents
  private readonly init: LogsInit
  private source: LogSource | undefined
  private readonly rates = new PeerMap<TokenBucket>()

  constructor(components: LogsComponents, init: LogsInit) {
    this.components = components
    this.init = init
  }

  readonly [Symbol.toStringTag] = '@rhizome/logs'

  async start(): Promise<void> {
    await this.components.registrar.handle(
      LOGS_PROTOCOL,
      (stream, connection) => {
        this.answer(stream, connection.remotePeer).catch(err => {
          log('logs request from %p failed: %s', connection.remotePeer, (err as Error).message)
          stream.abort(err as Error)
        })
      },
      { maxInboundStreams: LOGS_STREAMS_PER_PEER, maxOutboundStreams: LOGS_STREAMS_PER_PEER }
    )
  }

  async stop(): Promise<void> {
    await this.components.registrar.unhandle(LOGS_PROTOCOL)
  }

  /** Where this node's workload output comes from (the daemon's process supervisor). */
  serve(source: LogSource): void {
    this.source = source
  }

  /** This node's own lines (no network), or undefined when no such workload runs here. */
  own(workload: string, lines: number): string[] | undefined {
    return this.source?.(workload, Math.min(lines, MAX_LOG_LINES))
  }

  /**
   * A node's recent output of `workload`: the lines, or undefined when no such workload runs
   * there. Throws PeerGoneError when the node cannot be reached, LogsRefusedError when it refuses.
   */
  async fetch(
    peer: PeerId,
    workload: string,
    options: AbortOptions & { lines?: number } = {}
  ): Promise<string[] | undefined> {
    const signal = AbortSignal.any([
      AbortSignal.timeout(this.init.limits.exchangeTimeoutMs),
      ...(options.signal !== undefined ? [options.signal] : [])
    ])
    let stream: Stream
    try {
      const held = this.components.connectionManager
        .getConnections(peer)
        .find(c => c.status === 'open')
      const conn = held ?? (await this.components.keeper.connect(peer, { signal }))
      stream = await conn.newStream(LOGS_PROTOCOL, { signal })
    } catch (err) {
      if (err instanceof PeerGoneError) throw err
      // libp2p rejects with the stream's close event when the connection dies mid-negotiation.
      const why = err instanceof Error ? err.message : `the connection closed (${String(err)})`
      throw new PeerGoneError(`cannot ask node ${peer.toString()} for logs: ${why}`)
    }
    const timeoutMs = this.init.limits.exchangeTimeoutMs
    let reply: LogsReply
    try {
      const lines = Math.max(1, Math.min(options.lines ?? MAX_LOG_LINES, MAX_LOG_LINES))
      await sendFrame(stream, encodeLogsRequest({ workload, lines }), timeoutMs)
      reply = decodeLogsReply(await readOneFrame(stream, MAX_LOGS_REPLY_BYTES + 1024, timeoutMs))
    } catch (err) {
      const closed = stream.status !== 'open'
      stream.abort(err as Error)
      if (closed) {
        // Reset without an answer: it refuses us (not enrolled or admin), has
        // LOGS_STREAMS_PER_PEER requests of ours running already, or went away.
        throw new LogsRefusedError(
          `node ${peer.toString()} closed the logs request without answering (${(err as Error).message}); it answers enrolled nodes and admin sessions, ${LOGS_STREAMS_PER_PEER} requests at a time`
        )
      }
      throw err
    }
    await stream.close({ signal }).catch(() => {})
    if (reply.kind === 'refused') {
      throw new LogsRefusedError(
        `node ${peer.toString()} refused the logs request: ${reply.reason}`
      )
    }
    return reply.kind === 'lines' ? reply.lines : undefined
  }

  private async answer(stream: Stream, peer: PeerId): Promise<void> {
    const timeoutMs = this.init.limits.exchangeTimeoutMs
    const admission = this.components.admission.admissionOf(peer)
    if (admission !== 'node' && admission !== 'admin-session') {
      stream.abort(
        new LogsRefusedError('logs are served to enrolled nodes and admin sessions only')
      )
      return
    }
    let reply: LogsReply
    if (!this.rate(peer).take(1, performance.now())) {
      reply = {
        kind: 'refused',
        reason: `more than ${LOG_REQUESTS_PER_SECOND} requests a second; ask again later`
      }
    } else {
      const req = decodeLogsRequest(await readOneFrame(stream, MAX_LOGS_REQUEST_BYTES, timeoutMs))
      const lines = this.own(req.workload, req.lines)
      reply = lines === undefined ? { kind: 'no-such-workload' } : { kind: 'lines', lines }
    }
    await sendFrame(stream, encodeLogsReply(reply), timeoutMs)
    await stream.close({ signal: AbortSignal.timeout(timeoutMs) })
  }

  private rate(peer: PeerId): TokenBucket {
    let b = this.rates.get(peer)
    if (b === undefined) {
      if (this.rates.size >= MAX_REMEMBERED_PEERS) this.rates.clear()
      b = new TokenBucket(LOG_REQUESTS_PER_SECOND, LOG_REQUEST_BURST, performance.now())
      this.rates.set(peer, b)
    }
    return b
  }
}

/** The logs service, for `services:` in createLibp2p. */
export function logs(init: LogsInit): (components: LogsComponents) => LogsService {
  return components => new LogsService(components, init)
}
