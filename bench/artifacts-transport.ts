/**
 * The connection encrypter and muxer of the bench's "libp2p alone" (artifacts.bench.ts), in both
 * of its processes: libp2p's defaults, or the daemons' own settings (mesh.ts), so the ceiling the
 * bench shows is the one this transport reaches as the daemons configure it.
 * `ARTIFACT_BENCH_CORK=0` leaves out the daemons' corked socket writes (mesh/corked-writes.ts),
 * for an A/B of that alone.
 */
import type { ConnectionEncrypter } from '@libp2p/interface'
import { noise, type NoiseComponents } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { corkedEncrypter } from '../mesh/corked-writes.ts'
import { DEFAULT_LIMITS } from '../mesh/limits.ts'
import { meshMuxer } from '../mesh/mesh.ts'
import { noiseCrypto } from '../mesh/noise-crypto.ts'

export function transport(asDaemon: boolean): {
  connectionEncrypters: [(components: NoiseComponents) => ConnectionEncrypter]
  streamMuxers: [ReturnType<typeof yamux>]
} {
  if (!asDaemon) return { connectionEncrypters: [noise()], streamMuxers: [yamux()] }
  const encrypter = noise({ crypto: noiseCrypto })
  return {
    connectionEncrypters: [
      process.env.ARTIFACT_BENCH_CORK === '0' ? encrypter : corkedEncrypter(encrypter)
    ],
    streamMuxers: [meshMuxer(DEFAULT_LIMITS)]
  }
}
