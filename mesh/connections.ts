/**
 * Opening protocol streams to a peer on a connection we already hold.
 */
import type {
  AbortOptions,
  Libp2pEvents,
  PeerId,
  Stream,
  TypedEventTarget
} from '@libp2p/interface'
import type { ConnectionManager, Registrar } from '@libp2p/interface-internal'
import { PeerGoneError } from './errors.ts'

/**
 * What a service that speaks a protocol of its own (sync, session, logs, artifacts) takes from
 * libp2p at the least: the registrar, to answer the protocol, and the connections already held, to
 * open its streams on (`streamOnConnection`).
 */
export interface ProtocolComponents {
  registrar: Pick<Registrar, 'handle' | 'unhandle'>
  connectionManager: Pick<ConnectionManager, 'getConnections'>
}

/** libp2p's own events (`peer:connect`, `peer:disconnect`, …), as a service receives them. */
export type NodeEvents = TypedEventTarget<Libp2pEvents>

/**
 * A protocol stream on a connection we already hold to `peer`. Never `dialProtocol(peer)`: that
 * dials a new connection when the old one has just gone, at whatever address identify taught us,
 * which routes around a link the operator (or a test) deliberately cut. Only the connection
 * keeper (`connection-keeper.ts`) and discovery make connections.
 */
export async function streamOnConnection(
  connectionManager: ProtocolComponents['connectionManager'],
  peer: PeerId,
  protocol: string,
  options: AbortOptions & { signal: AbortSignal; negotiateFully?: boolean }
): Promise<Stream> {
  const conn = connectionManager.getConnections(peer).find(c => c.status === 'open')
  if (conn === undefined) throw new PeerGoneError(`no open connection to ${peer.toString()}`)
  return conn.newStream(protocol, options)
}
