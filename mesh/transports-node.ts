/**
 * Node-only wiring for daemons: TCP and WebSockets listeners (browsers dial ws://), mDNS on the LAN,
 * artifact links over TLS.
 * Kept apart so the protocol code stays browser-safe.
 */
import { mdns } from '@libp2p/mdns'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import type { MeshPlatform } from './mesh.ts'
import { noiseCrypto } from './noise-crypto.ts'
import { tlsArtifactLinks } from './artifact-link.ts'

export const MDNS_SERVICE_TAG = 'rhizome.local'

/**
 * An A/B switch for measurements, RHIZOME_NOISE_CRYPTO=library: the Noise library's own ciphers
 * instead of noise-crypto.ts (the same bytes on the wire either way; docs/benchmarks.md quotes
 * runs with it).
 */
const LIBRARY_CIPHERS = process.env.RHIZOME_NOISE_CRYPTO === 'library'

export const nodePlatform: MeshPlatform = {
  transports: () => [tcp(), webSockets()],
  discovery: ({ mdns: on }) =>
    on ? [mdns({ serviceTag: MDNS_SERVICE_TAG, interval: 10_000 })] : [],
  defaultListen: ['/ip4/0.0.0.0/tcp/4001', '/ip4/0.0.0.0/tcp/4002/ws'],
  artifactLinks: tlsArtifactLinks,
  ...(LIBRARY_CIPHERS ? {} : { noiseCrypto })
}
