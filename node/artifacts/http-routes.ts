/**
 * The daemon's artifact routes (HTTP API, loopback by default):
 *
 *   PUT /api/artifacts?name=N[&chunkSize=B]   body: the file's bytes, streamed into the store →
 *                                              {digest, name, size, chunkSize, chunks, fileSha256}
 *   GET /api/artifacts                         [{digest, name, state, size, held, …, status}]
 *   GET /api/artifacts/:digest/manifest        the encoded manifest (404 if not held)
 *   GET /api/artifacts/:digest/chunks/:i       one verified chunk (404 if not held): bundle export
 *
 * The body is hashed and written as it arrives (never held in memory), up to the smaller of the
 * artifact bound and the daemon's disk budget.
 */
import { Readable } from 'node:stream'
import { HttpError, type Route } from '../http-api.ts'
import type { Artifacts } from './manager.ts'
import { MAX_ARTIFACT_BYTES, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE } from './limits.ts'
import { parseDigest } from './manifest.ts'

const notHeld = (what: string): HttpError =>
  new HttpError(
    404,
    'NotHeld',
    `this daemon does not hold ${what}; \`rhizome artifact list\` shows what it holds`
  )

export function artifactRoutes(artifacts: Artifacts, diskBudgetBytes: number): Route[] {
  return [
    {
      method: 'PUT',
      pattern: /^\/api\/artifacts$/,
      handler: async (_m, req, url) => {
        const name = url.searchParams.get('name') ?? undefined
        if (name !== undefined && (name.length > 200 || hasControlChar(name))) {
          throw new HttpError(
            400,
            'BadName',
            'an artifact name is at most 200 printable characters'
          )
        }
        const cs = url.searchParams.get('chunkSize')
        const chunkSize = cs === null ? undefined : Number(cs)
        if (
          chunkSize !== undefined &&
          (!Number.isInteger(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE)
        ) {
          throw new HttpError(
            400,
            'BadChunkSize',
            `chunkSize must be an integer from ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE}`
          )
        }
        const maxBytes = Math.min(MAX_ARTIFACT_BYTES, diskBudgetBytes)
        const declared = Number(req.headers['content-length'] ?? 0)
        if (declared > maxBytes) {
          throw new HttpError(
            413,
            'PayloadTooLarge',
            `the artifact is ${declared} bytes; this daemon takes at most ${maxBytes} (its artifact disk budget)`
          )
        }
        const m = await artifacts.store.add(Readable.from(req), {
          ...(name === undefined ? {} : { name }),
          ...(chunkSize === undefined ? {} : { chunkSize }),
          maxBytes
        })
        return {
          json: {
            digest: m.digest,
            name: name ?? null,
            size: m.size,
            chunkSize: m.chunkSize,
            chunks: m.chunks.length,
            fileSha256: m.fileSha256
          }
        }
      }
    },
    {
      method: 'GET',
      pattern: /^\/api\/artifacts\/(sha256:[0-9a-f]{64})\/manifest$/,
      handler: async m => {
        const manifest = artifacts.store.manifest(parseDigest(m[1]))
        if (manifest === undefined) throw notHeld(m[1] as string)
        return { bytes: manifest.bytes, type: 'application/octet-stream' }
      }
    },
    {
      method: 'GET',
      pattern: /^\/api\/artifacts\/(sha256:[0-9a-f]{64})\/chunks\/(\d{1,6})$/,
      handler: async m => {
        const chunk = await artifacts.store.readChunk(parseDigest(m[1]), Number(m[2]))
        if (chunk === undefined) throw notHeld(`${m[1]} chunk ${m[2]}`)
        return { bytes: chunk, type: 'application/octet-stream' }
      }
    },
    {
      method: 'GET',
      pattern: /^\/api\/artifacts$/,
      handler: async () => {
        const held = artifacts.list().map(a => ({ ...a, status: artifacts.status(a.digest) }))
        const known = new Set<string>(held.map(a => a.digest))
        // Referenced, but not even the manifest is here yet.
        const absent = Object.entries(artifacts.statuses())
          .filter(([d]) => !known.has(d))
          .map(([digest, status]) => ({ digest, state: 'absent', held: 0, pinnedBy: [], status }))
        return { json: [...held, ...absent] }
      }
    }
  ]
}

function hasControlChar(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) < 32) return true
  return false
}
