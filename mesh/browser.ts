/**
 * The mesh for browsers (the dashboard): a libp2p node with only the WebSockets transport, which
 * dials daemons (`bootstrap`, ws:// or wss:// multiaddrs with /p2p/<PeerId>) and presents
 * `credential` (a viewer token issued by that daemon, or a voucher signed by an admin or operator
 * key) before syncing. It never listens.
 *
 * @example
 * ```ts
 * const replica = await Replica.open({ store: new MemoryStore(), genesis, ed: await platformEd25519() })
 * const mesh = await createBrowserMesh({ replica, identity: generateKeyPair(), bootstrap: [daemonWsAddr], credential: { viewerToken } })
 * await mesh.start()
 * ```
 */
import { webSockets } from '@libp2p/websockets'
import { createMeshOn, type MeshPlatform } from './mesh.ts'
import type { Mesh, MeshOptions } from './types.ts'

export type * from './types.ts'
export { signSessionVoucher } from './browser-session.ts'

const browserPlatform: MeshPlatform = {
  transports: () => [webSockets()],
  defaultListen: []
}

export async function createBrowserMesh(options: MeshOptions): Promise<Mesh> {
  // A browser dials only the daemon it was given: it cannot dial the TCP addresses daemons advertise.
  return createMeshOn({ mdns: false, ...options, listen: [], extraPeers: 0 }, browserPlatform)
}
