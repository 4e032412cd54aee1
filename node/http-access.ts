/**
 * Who may use the daemon's HTTP API, decided before any route runs (http-api.ts asks
 * `ApiAccess.check`). Every local user and every web page the operator opens can reach a
 * loopback port, so:
 *
 * - The API token. At start the daemon makes `<dataDir>/api.token` (32 random bytes, hex, mode
 *   0600 in a 0700 directory, kept across restarts; delete it to rotate) and every route needs
 *   `Authorization: Bearer <token>` unless said otherwise. Reading that file is the proof of
 *   being the daemon's user (or root). The CLI finds it itself (daemon-client.ts).
 * - Open on loopback only: `GET /api/health` and `GET /metrics` answer a client on this machine
 *   without a token (health checks, Prometheus on the host); from elsewhere they need it too.
 * - The dashboard: `rhizome dashboard` has the daemon issue a one-time mesh viewer token and
 *   prints a URL carrying it; until it expires (VIEWER_TOKEN_TTL_MS) the same token also lets
 *   that page read `GET /api/trust` (the fleet's genesis, which it needs to verify anything). The
 *   page does everything else as a mesh peer, through the admission the token grants.
 * - Host and Origin. A request must name this daemon in `Host` (a page at attacker.example that
 *   resolves to 127.0.0.1 is refused: DNS rebinding); a browser request from another origin
 *   (`Origin`, `Sec-Fetch-Site`) is refused; writes carry `application/octet-stream` or
 *   `application/json` bodies only (a cross-site form or `text/plain` POST needs no preflight).
 * - Senders of invalid writes are refused for a while (InvalidSenders), as mesh peers are banned.
 * - Tokens are never logged in full (`tokenHint`).
 * - The daemon proves it holds the token before the CLI sends it (`GET /api/proof?nonce=N`,
 *   open to anyone: `apiProof`, an HMAC of the client's fresh nonce under the token). Another
 *   local program that took the daemon's port while the daemon was down (a squatter) cannot
 *   answer, so the CLI refuses to send it the token (daemon-client.ts).
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto'
import { chmod, readFile, writeFile } from 'node:fs/promises'
import type { IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { hostname, networkInterfaces } from 'node:os'
import { join } from 'node:path'
import { MAX_VIEWER_TOKENS, VIEWER_TOKEN_TTL_MS } from '../mesh/limits.ts'
import { HttpError } from './http-api.ts'

export const API_TOKEN_FILE = 'api.token'
/** Invalid writes (batches, trust statements) one sender may make in a window… */
export const INVALID_WRITES_PER_WINDOW = 10
export const INVALID_WRITES_WINDOW_MS = 60_000
/** …before it is refused for this long. */
export const INVALID_SENDER_REFUSAL_MS = 60_000
/** Senders remembered at most. */
export const MAX_TRACKED_SENDERS = 1024

/**
 * Who a route is for: anyone (Host and Origin checks still apply), everyone on this machine, the
 * dashboard page too, or token holders.
 */
export type RouteAccess = 'open' | 'loopback' | 'dashboard' | 'token'

/** A proof nonce: 32 bytes, hex. */
export const PROOF_NONCE = /^[0-9a-f]{64}$/

/**
 * The daemon's answer to a proof nonce: HMAC-SHA256 under the API token of a domain tag and the
 * nonce, hex. Only a holder of the token can make it; it tells nothing of the token.
 */
export function apiProof(token: string, nonce: string): string {
  return createHmac('sha256', token).update(`rhizome/api-proof/v1\0${nonce}`).digest('hex')
}

/** The first characters of a token, for logs. */
export function tokenHint(token: string): string {
  return `${token.slice(0, 4)}…`
}

/** Read the daemon's API token, or make it (0600) the first time. */
export async function loadOrCreateApiToken(
  dataDir: string
): Promise<{ token: string; file: string }> {
  const file = join(dataDir, API_TOKEN_FILE)
  try {
    const token = (await readFile(file, 'utf8')).trim()
    if (/^[0-9a-f]{64}$/.test(token)) {
      await chmod(file, 0o600)
      return { token, file }
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const token = randomBytes(32).toString('hex')
  await writeFile(file, token + '\n', { mode: 0o600 })
  await chmod(file, 0o600)
  return { token, file }
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest()
const sameSecret = (a: string, b: string): boolean => timingSafeEqual(digest(a), digest(b))

function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.')
}

/** The `Host` values that name this daemon: its bound address, loopback names, and this machine's. */
export function allowedHosts(bound: AddressInfo): Set<string> {
  const port = bound.port
  const out = new Set<string>()
  const add = (h: string): void => {
    out.add(`${h.includes(':') ? `[${h}]` : h}:${port}`.toLowerCase())
  }
  add(bound.address)
  for (const h of ['127.0.0.1', 'localhost', '::1']) add(h)
  if (bound.address === '0.0.0.0' || bound.address === '::') {
    add(hostname())
    for (const list of Object.values(networkInterfaces())) {
      for (const i of list ?? []) add(i.address)
    }
  }
  return out
}

/** Dashboard viewer tokens this daemon issued, each usable for `GET /api/trust` until it expires. */
class DashboardTokens {
  private readonly tokens = new Map<string, number>()

  add(token: string, now = Date.now()): void {
    for (const [t, exp] of this.tokens) if (exp <= now) this.tokens.delete(t)
    if (this.tokens.size >= MAX_VIEWER_TOKENS) {
      this.tokens.delete(this.tokens.keys().next().value as string)
    }
    this.tokens.set(token, now + VIEWER_TOKEN_TTL_MS)
  }

  valid(token: string, now = Date.now()): boolean {
    for (const [t, exp] of this.tokens) if (exp > now && sameSecret(t, token)) return true
    return false
  }
}

/** Senders of invalid writes: counted per window, then refused for a while. */
class InvalidSenders {
  private readonly senders = new Map<
    string,
    { since: number; count: number; refusedUntil: number }
  >()

  check(sender: string, now = Date.now()): void {
    const s = this.senders.get(sender)
    if (s !== undefined && s.refusedUntil > now) {
      throw new HttpError(
        429,
        'TooManyInvalidWrites',
        `this client sent more than ${INVALID_WRITES_PER_WINDOW} invalid writes within ${INVALID_WRITES_WINDOW_MS / 1000} s and is refused for ${Math.ceil((s.refusedUntil - now) / 1000)} s more; check what it sends`
      )
    }
  }

  failed(sender: string, now = Date.now()): void {
    let s = this.senders.get(sender)
    if (s === undefined || now - s.since > INVALID_WRITES_WINDOW_MS) {
      if (s === undefined && this.senders.size >= MAX_TRACKED_SENDERS) {
        this.senders.delete(this.senders.keys().next().value as string)
      }
      s = { since: now, count: 0, refusedUntil: 0 }
      this.senders.set(sender, s)
    }
    if (++s.count > INVALID_WRITES_PER_WINDOW) s.refusedUntil = now + INVALID_SENDER_REFUSAL_MS
  }
}

const WRITE_TYPES = ['application/octet-stream', 'application/json']

export class ApiAccess {
  readonly invalid = new InvalidSenders()
  private readonly token: string
  private readonly tokenFile: string
  private readonly dashboard = new DashboardTokens()
  private hosts = new Set<string>()

  constructor(token: string, tokenFile: string) {
    this.token = token
    this.tokenFile = tokenFile
  }

  /** Once listening: which `Host` values name this daemon. */
  bound(address: AddressInfo): void {
    this.hosts = allowedHosts(address)
  }

  /** A viewer token issued for the dashboard: it may also read the trust chain until it expires. */
  dashboardToken(token: string): void {
    this.dashboard.add(token)
  }

  /** `apiProof` under this daemon's token. */
  proof(nonce: string): string {
    return apiProof(this.token, nonce)
  }

  /** Who sent this request, for InvalidSenders. */
  sender(req: IncomingMessage): string {
    return req.socket.remoteAddress ?? 'unknown'
  }

  /** Throws the HttpError this request is refused with, if it is. */
  check(req: IncomingMessage, access: RouteAccess | 'static'): void {
    const host = (req.headers.host ?? '').toLowerCase()
    if (!this.hosts.has(host)) {
      throw new HttpError(
        403,
        'ForbiddenHost',
        `this daemon answers requests for its own address only (${[...this.hosts][0] ?? 'its listen address'}), not for "${host.slice(0, 100)}"`
      )
    }
    const origin = req.headers.origin
    const site = req.headers['sec-fetch-site']
    if (
      (origin !== undefined && !this.hosts.has(origin.replace(/^http:\/\//, '').toLowerCase())) ||
      (site !== undefined && site !== 'same-origin' && site !== 'none')
    ) {
      throw new HttpError(
        403,
        'CrossSiteRequest',
        `requests from other web pages are refused (Origin ${String(origin).slice(0, 100)})`
      )
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase() ?? ''
      if (!WRITE_TYPES.includes(type)) {
        throw new HttpError(
          415,
          'UnsupportedMediaType',
          `writes take ${WRITE_TYPES.join(' or ')} bodies, not "${type.slice(0, 60)}"`
        )
      }
    }
    if (access === 'static' || access === 'open') return
    if (access === 'loopback' && isLoopback(req.socket.remoteAddress)) return
    const auth = req.headers.authorization
    const bearer = auth?.startsWith('Bearer ') === true ? auth.slice(7).trim() : undefined
    if (bearer === undefined) {
      throw new HttpError(
        401,
        'Unauthenticated',
        `this API needs the daemon's token: send "Authorization: Bearer" with the content of ${this.tokenFile} (the CLI reads it from $RHIZOME_TOKEN_FILE, $RHIZOME_DATA_DIR/api.token or /var/lib/rhizome/api.token; run it as the daemon's user)`
      )
    }
    if (sameSecret(bearer, this.token)) return
    if (access === 'dashboard' && this.dashboard.valid(bearer)) return
    throw new HttpError(
      403,
      'WrongToken',
      `the token sent is not this daemon's (${this.tokenFile}), or a dashboard token that expired or may not do this`
    )
  }
}
