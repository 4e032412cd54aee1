/**
 * The daemon's HTTP server (node:http): routes (http-routes.ts) matched in order, request bodies
 * bounded (MAX_BODY_BYTES), errors answered as `{error, category, message}` with the status
 * their category decides, and the dashboard's static files (web/dist) for every other GET.
 * Bound to 127.0.0.1 by default. Every request passes `ApiAccess.check` (http-access.ts: token,
 * Host, Origin, body types) before its route runs; a route says who it is for (`access`).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { readFile } from 'node:fs/promises'
import { extname, join, normalize } from 'node:path'
import { fileURLToPath } from 'node:url'
import { logger } from '@libp2p/logger'
import { categoryOf, ErrorCategory, RhizomeError } from '../crdt/errors.ts'
import type { ApiAccess, RouteAccess } from './http-access.ts'

const log = logger('rhizome:node:http')

export const MAX_BODY_BYTES = 32 * 1024 * 1024
const WEB_DIST = fileURLToPath(new URL('../web/dist/', import.meta.url))

/** An HTTP-level refusal (no such route or document, body too large); its status decides its category. */
export class HttpError extends RhizomeError {
  static override name = 'HttpError'
  override name = 'HttpError'
  readonly status: number
  readonly code: string
  readonly category: ErrorCategory
  constructor(status: number, code: string, message: string) {
    super(message)
    this.status = status
    this.code = code
    this.category =
      status === 401 || status === 403
        ? ErrorCategory.Unauthorised
        : status === 413
          ? ErrorCategory.PeerFault
          : status === 429 || status === 503
            ? ErrorCategory.Unavailable
            : status < 500
              ? ErrorCategory.Usage
              : ErrorCategory.Internal
  }
}

const STATUS_OF: Record<ErrorCategory, number> = {
  [ErrorCategory.PeerFault]: 400,
  [ErrorCategory.Unauthorised]: 403,
  [ErrorCategory.Usage]: 400,
  [ErrorCategory.Unavailable]: 503,
  [ErrorCategory.Internal]: 500
}

/** The HTTP status an error is answered with: derived from its category (crdt/errors.ts). */
export function httpStatusFor(err: unknown): number {
  return err instanceof HttpError ? err.status : STATUS_OF[categoryOf(err)]
}

export type HttpReply =
  | { json: unknown; status?: number }
  | { bytes: Uint8Array; type: string; status?: number }
  | { text: string; type: string; status?: number }

export interface Route {
  method: string
  pattern: RegExp
  /** Who may call it (http-access.ts); token holders only unless said otherwise. */
  access?: RouteAccess
  handler: (
    m: RegExpMatchArray,
    req: IncomingMessage,
    url: URL,
    body: () => Promise<Uint8Array>,
    /** Aborted when the client goes away before the answer is sent. */
    signal: AbortSignal
  ) => Promise<HttpReply>
}

function readBody(req: IncomingMessage, max: number): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0)
    if (declared > max) {
      reject(
        new HttpError(
          413,
          'PayloadTooLarge',
          `the request body is ${declared} bytes; at most ${max} are accepted (split the change or use a bundle)`
        )
      )
      return
    }
    const chunks: Buffer[] = []
    let n = 0
    req.on('data', (c: Buffer) => {
      n += c.length
      if (n > max) {
        reject(
          new HttpError(
            413,
            'PayloadTooLarge',
            `the request body exceeds ${max} bytes (split the change or use a bundle)`
          )
        )
        req.destroy()
        return
      }
      chunks.push(c)
    })
    req.on('end', () => resolve(new Uint8Array(Buffer.concat(chunks))))
    req.on('error', reject)
  })
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.css': 'text/css',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.wasm': 'application/wasm',
  '.map': 'application/json'
}

async function staticFile(path: string): Promise<HttpReply> {
  const rel = normalize(decodeURIComponent(path === '/' ? '/index.html' : path)).replace(
    /^(\.\.[/\\])+/,
    ''
  )
  const file = join(WEB_DIST, rel)
  if (!file.startsWith(WEB_DIST)) throw new HttpError(404, 'NotFound', 'no such file')
  try {
    return {
      bytes: new Uint8Array(await readFile(file)),
      type: TYPES[extname(file)] ?? 'application/octet-stream'
    }
  } catch {
    if (path === '/' || path === '/index.html') {
      return {
        text: '<!doctype html><meta charset="utf-8"><title>Rhizome</title><h1>Rhizome daemon</h1><p>The dashboard is not built. Build it with <code>npm run build:web</code> (it is served from <code>web/dist</code>). The JSON API is at <a href="/api/status">/api/status</a>, metrics at <a href="/metrics">/metrics</a>.</p>',
        type: 'text/html; charset=utf-8'
      }
    }
    throw new HttpError(404, 'NotFound', `no such file: ${path}`)
  }
}

function send(res: ServerResponse, r: HttpReply): void {
  const status = r.status ?? 200
  if ('json' in r) {
    const body = JSON.stringify(r.json)
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' })
    res.end(body)
  } else if ('bytes' in r) {
    res.writeHead(status, { 'content-type': r.type, 'content-length': r.bytes.length })
    res.end(r.bytes)
  } else {
    res.writeHead(status, { 'content-type': r.type })
    res.end(r.text)
  }
}

export function createApiServer(routes: Route[], access: ApiAccess): Server {
  return createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost')
    const body = (): Promise<Uint8Array> => readBody(req, MAX_BODY_BYTES)
    const gone = new AbortController()
    res.once('close', () => {
      if (!res.writableFinished) gone.abort(new Error('the client closed the connection'))
    })
    void (async () => {
      try {
        for (const route of routes) {
          if (route.method !== req.method) continue
          const m = url.pathname.match(route.pattern)
          if (m !== null) {
            access.check(req, route.access ?? 'token')
            send(res, await route.handler(m, req, url, body, gone.signal))
            return
          }
        }
        if (req.method === 'GET' && !url.pathname.startsWith('/api/')) {
          access.check(req, 'static')
          send(res, await staticFile(url.pathname))
          return
        }
        access.check(req, 'token')
        throw new HttpError(
          404,
          'NotFound',
          `no route ${req.method} ${url.pathname}; see GET /api/health, /api/status, /api/docs`
        )
      } catch (err) {
        const e = err as Error
        const status = httpStatusFor(e)
        if (status === 500) log.error('%s %s failed: %e', req.method, url.pathname, e)
        if (res.headersSent) {
          res.destroy()
          return
        }
        send(res, {
          status,
          json: {
            error: e instanceof HttpError ? e.code : e.name,
            category: categoryOf(e),
            message: e.message
          }
        })
      }
    })()
  })
}
