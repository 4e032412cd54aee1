/**
 * The connection encrypter and muxer of the bench's "libp2p alone" (artifacts.bench.ts), in both
 * of its processes: libp2p's defaults, or the daemons' own settings (mesh.ts), so the ceiling the
 * bench shows is the one this transport reaches as the daemons configure it.
 */
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { DEFAULT_LIMITS } from '../mesh/limits.ts'
import { meshMuxer } from '../mesh/mesh.ts'
import { noiseCrypto } from '../mesh/noise-crypto.ts'

export function transport(asDaemon: boolean): {
  connectionEncrypters: [ReturnType<typeof noise>]
  streamMuxers: [ReturnType<typeof yamux>]
} {
  return asDaemon
    ? {
        connectionEncrypters: [noise({ crypto: noiseCrypto })],
        streamMuxers: [meshMuxer(DEFAULT_LIMITS)]
      }
    : { connectionEncrypters: [noise()], streamMuxers: [yamux()] }
}
