/**
 * Opening protocol streams to a peer on a connection we already hold.
 */
import type { AbortOptions, PeerId, Stream } from '@libp2p/interface'
import type { ConnectionManager } from '@libp2p/interface-internal'
import { PeerGoneError } from './errors.ts'

/**
 * A protocol stream on a connection we already hold to `peer`. Never `dialProtocol(peer)`: that
 * dials a new connection when the old one has just gone, at whatever address identify taught us,
 * which routes around a link the operator (or a test) deliberately cut. Only the connection
 * keeper (`connection-keeper.ts`) and discovery make connections.
 */
export async function streamOnConnection(
  connectionManager: Pick<ConnectionManager, 'getConnections'>,
  peer: PeerId,
  protocol: string,
  options: AbortOptions & { signal: AbortSignal; negotiateFully?: boolean }
): Promise<Stream> {
  const conn = connectionManager.getConnections(peer).find(c => c.status === 'open')
  if (conn === undefined) throw new PeerGoneError(`no open connection to ${peer.toString()}`)
  return conn.newStream(protocol, options)
}
