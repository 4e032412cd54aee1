/**
 * Remote logs: protocol `/rhizome/logs/1.0.0`, so any daemon can show another node's recent
 * workload output (`rhizome logs WORKLOAD --node NAME`). One request frame and one reply frame
 * per stream (`frames.ts`); integers unsigned LEB128, strings length-prefixed UTF-8.
 *
 *   request:  u8 version = 1 ‖ string workload (at most 128 bytes) ‖ varint lines (1 … MAX_LOG_LINES)
 *   reply:    u8 kind, then by kind:
 *             1 LINES     varint n (at most MAX_LOG_LINES) ‖ n × string line (at most
 *                         MAX_LOG_LINE_BYTES each); the newest last, the whole reply at most
 *                         MAX_LOGS_REPLY_BYTES (older lines are left out to fit)
 *             2 NO_SUCH   no workload of that name runs on the node
 *             3 REFUSED   string reason (the requester may not ask, or asks too often)
 *
 * Served to enrolled nodes and admin sessions only, at most LOG_REQUESTS_PER_SECOND per peer.
 */
import { ByteReader, ByteWriter, readWhole, utf8 } from '../crdt/bytes.ts'
import { MalformedMessageError } from './errors.ts'

export const LOGS_PROTOCOL = '/rhizome/logs/1.0.0'
const VERSION = 1
/** Lines one request may ask for (a workload keeps its last few hundred). */
export const MAX_LOG_LINES = 500
export const MAX_LOG_LINE_BYTES = 4096
/** A reply is at most this large; a request at most a few hundred bytes. */
export const MAX_LOGS_REPLY_BYTES = 256 * 1024
export const MAX_LOGS_REQUEST_BYTES = 512
const MAX_WORKLOAD_BYTES = 128

export interface LogsRequest {
  workload: string
  lines: number
}

export type LogsReply =
  | { kind: 'lines'; lines: string[] }
  | { kind: 'no-such-workload' }
  | { kind: 'refused'; reason: string }

const KIND = { lines: 1, 'no-such-workload': 2, refused: 3 } as const

function malformed(what: string, err: unknown): MalformedMessageError {
  if (err instanceof MalformedMessageError) return err
  return new MalformedMessageError(`malformed logs ${what}: ${(err as Error).message}`)
}

export function encodeLogsRequest(req: LogsRequest): Uint8Array {
  return new ByteWriter().u8(VERSION).string(req.workload).varint(req.lines).finish()
}

export function decodeLogsRequest(bytes: Uint8Array): LogsRequest {
  try {
    const r = new ByteReader(bytes, 'logs request')
    const v = r.u8()
    if (v !== VERSION) throw new MalformedMessageError(`logs request version ${v} is not supported`)
    const workload = r.string(MAX_WORKLOAD_BYTES)
    const lines = r.varint(MAX_LOG_LINES)
    r.end()
    if (lines < 1) throw new MalformedMessageError('a logs request asks for at least one line')
    return { workload, lines }
  } catch (err) {
    throw malformed('request', err)
  }
}

/** Encode a reply; of the lines, the newest that fit in MAX_LOGS_REPLY_BYTES (each cut to size). */
export function encodeLogsReply(reply: LogsReply): Uint8Array {
  const w = new ByteWriter().u8(KIND[reply.kind])
  if (reply.kind === 'refused') w.string(reply.reason.slice(0, 500))
  if (reply.kind !== 'lines') return w.finish()
  const kept: Uint8Array[] = []
  let size = 16
  for (const line of reply.lines.slice(-MAX_LOG_LINES).reverse()) {
    let b = utf8(line)
    if (b.length > MAX_LOG_LINE_BYTES) b = utf8(line.slice(0, MAX_LOG_LINE_BYTES / 4))
    if (size + b.length + 4 > MAX_LOGS_REPLY_BYTES) break
    size += b.length + 4
    kept.push(b)
  }
  w.varint(kept.length)
  for (const b of kept.reverse()) w.bytes(b)
  return w.finish()
}

export function decodeLogsReply(bytes: Uint8Array): LogsReply {
  return readWhole<LogsReply>(
    bytes,
    'logs reply',
    err => malformed('reply', err),
    r => {
      const kind = r.u8()
      if (kind === KIND.lines) {
        const n = r.varint(MAX_LOG_LINES)
        const lines: string[] = []
        for (let i = 0; i < n; i++) lines.push(r.string(MAX_LOG_LINE_BYTES))
        return { kind: 'lines', lines }
      }
      if (kind === KIND['no-such-workload']) return { kind: 'no-such-workload' }
      if (kind === KIND.refused) return { kind: 'refused', reason: r.string(1024) }
      throw new MalformedMessageError(`unknown logs reply kind ${kind}`)
    }
  )
}
