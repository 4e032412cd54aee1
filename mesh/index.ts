/**
 * The mesh for daemons (Node): a libp2p node over TCP and WebSockets that replicates a replica's
 * signed documents and gossips signed status records with the fleet's other enrolled nodes.
 * Browsers use `browser.ts` instead.
 *
 * @example
 * ```ts
 * const mesh = await createMesh({ replica, identity, listen: ['/ip4/0.0.0.0/tcp/4001', '/ip4/0.0.0.0/tcp/4002/ws'], bootstrap })
 * await mesh.start()
 * mesh.addEventListener('status', e => console.log(e.detail.node, e.detail.body))
 * await mesh.publishStatus({ revision: heads })
 * ```
 */
import { createMeshOn } from './mesh.ts'
import { nodePlatform } from './transports-node.ts'
import type { Mesh, MeshOptions } from './types.ts'

export type * from './types.ts'
export { MAX_STATUS_BYTES } from './types.ts'
export { DEFAULT_LIMITS } from './limits.ts'
export { signSessionVoucher } from './browser-session.ts'

export async function createMesh(options: MeshOptions): Promise<Mesh> {
  return createMeshOn(options, nodePlatform)
}
