/**
 * How the CLI talks to a daemon: its HTTP API. `localReplica` rebuilds the daemon's documents
 * in memory (same genesis and trust chain, every signed batch verified again here), so the
 * CLI makes changes with an admin key locally and posts only signed batches back. Every request
 * gives up after REQUEST_TIMEOUT_MS, or when `options.signal` aborts.
 *
 * Every request carries the daemon's API token (node/http-access.ts), found in this order: the
 * `token` option, $RHIZOME_API_TOKEN, the file $RHIZOME_TOKEN_FILE, $RHIZOME_DATA_DIR/api.token,
 * /var/lib/rhizome/api.token (the packaged daemon's data directory). Reading that file is what
 * proves the caller is the daemon's user: run the CLI as that user (or root), or pass the file.
 * Before the token is first sent, the daemon proves it holds it too (`GET /api/proof` with a fresh
 * nonce, http-access.ts `apiProof`): a program squatting the daemon's port gets nothing secret.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { AbortOptions } from '@libp2p/interface'
import { HISTORY_PAGE_MAX, type HistoryItem, type HistoryPage } from '../crdt/change-history.ts'
import { decodeBatch, encodeBatch, type SignedBatch } from '../crdt/signed-change.ts'
import { trustStatementFromJson, type SignedTrustStatement } from '../crdt/trust.ts'
import { Replica } from '../crdt/replica.ts'
import { MemoryStore } from '../crdt/store.ts'
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { DaemonNotProvenError, DaemonUnreachableError, RejectedByDaemonError } from './errors.ts'
import { apiProof } from './http-access.ts'
import type { BatchReply, DashboardReply, DocSummary, ProofReply } from './http-routes.ts'

export const REQUEST_TIMEOUT_MS = 30_000

/**
 * The most of a proof reply the CLI reads (the daemon's is ~90 bytes): a program squatting the
 * daemon's port could otherwise stream a body into the CLI's memory until the request timed out.
 */
export const PROOF_REPLY_MAX_BYTES = 4096

/** The body of `res` as text, or undefined (the rest cancelled) once it passes `maxBytes`. */
async function textUpTo(res: Response, maxBytes: number): Promise<string | undefined> {
  if (res.body === null) return ''
  const reader = res.body.getReader()
  const parts: Uint8Array[] = []
  let n = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    n += value.length
    if (n > maxBytes) {
      await reader.cancel()
      return undefined
    }
    parts.push(value)
  }
  return Buffer.concat(parts).toString('utf8')
}

/** `text` as JSON, or undefined. */
function jsonOrUndefined(text: string | undefined): unknown {
  try {
    return text === undefined ? undefined : JSON.parse(text)
  } catch {
    return undefined
  }
}

/** Where the CLI looks for the API token when none is given. */
export const DEFAULT_TOKEN_FILE = '/var/lib/rhizome/api.token'

/** The API token, and where it came from (for messages); undefined token when none was found. */
export async function findApiToken(
  env: NodeJS.ProcessEnv = process.env
): Promise<{ token: string | undefined; from: string }> {
  if (env.RHIZOME_API_TOKEN !== undefined && env.RHIZOME_API_TOKEN !== '') {
    return { token: env.RHIZOME_API_TOKEN.trim(), from: '$RHIZOME_API_TOKEN' }
  }
  const file =
    env.RHIZOME_TOKEN_FILE ??
    (env.RHIZOME_DATA_DIR === undefined
      ? DEFAULT_TOKEN_FILE
      : join(env.RHIZOME_DATA_DIR, 'api.token'))
  try {
    return { token: (await readFile(file, 'utf8')).trim(), from: file }
  } catch (err) {
    return {
      token: undefined,
      from: `${file} (${(err as NodeJS.ErrnoException).code ?? 'unreadable'})`
    }
  }
}

export class DaemonClient {
  readonly base: string
  private token: Promise<{ token: string | undefined; from: string }> | undefined
  /** The daemon's proof that it holds the token, checked once per client. */
  private proven: Promise<void> | undefined

  constructor(url: string, opts: { token?: string } = {}) {
    this.base = url.replace(/\/+$/, '')
    if (opts.token !== undefined) {
      this.token = Promise.resolve({ token: opts.token, from: 'option' })
    }
  }

  /** The headers that authenticate a request to this daemon (for callers that fetch themselves). */
  async authHeaders(options?: AbortOptions): Promise<Record<string, string>> {
    this.token ??= findApiToken()
    const { token } = await this.token
    if (token === undefined) return {}
    this.proven ??= this.prove(token, options)
    try {
      await this.proven
    } catch (err) {
      this.proven = undefined
      throw err
    }
    return { authorization: `Bearer ${token}` }
  }

  /**
   * Ask the process at `base` to prove it holds `token` (an HMAC of a fresh nonce under it)
   * before the token goes anywhere: a program that took the daemon's port gets nothing secret.
   */
  private async prove(token: string, options?: AbortOptions): Promise<void> {
    const nonce = randomBytes(32).toString('hex')
    let res: Response
    try {
      res = await this.request(`/api/proof?nonce=${nonce}`, {}, options, false)
    } catch (err) {
      if (!(err instanceof RejectedByDaemonError)) throw err
      throw new DaemonNotProvenError(
        `the program answering at ${this.base} refused to prove it holds the daemon's API token (${err.message}), so nothing secret was sent to it: a daemon older than this CLI (restart it after upgrading), or another program on the daemon's port (see who listens there: ss -ltnp)`
      )
    }
    const reply = jsonOrUndefined(await textUpTo(res, PROOF_REPLY_MAX_BYTES))
    const { proof } = (reply ?? {}) as Partial<ProofReply>
    const want = Buffer.from(apiProof(token, nonce), 'hex')
    const got = typeof proof === 'string' ? Buffer.from(proof, 'hex') : Buffer.alloc(0)
    if (got.length !== want.length || !timingSafeEqual(got, want)) {
      throw new DaemonNotProvenError(
        `the program answering at ${this.base} could not prove it holds the daemon's API token, so nothing secret was sent to it: another program may have taken the daemon's port while the daemon was down (see who listens there: ss -ltnp), or the token this CLI read is another daemon's`
      )
    }
  }

  private async request(
    path: string,
    init: RequestInit = {},
    options?: AbortOptions,
    authenticated = true
  ): Promise<Response> {
    const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS)
    const signal =
      options?.signal === undefined ? timeout : AbortSignal.any([timeout, options.signal])
    const headers = {
      ...(init.headers as Record<string, string> | undefined),
      ...(authenticated ? await this.authHeaders(options) : {})
    }
    init = { ...init, headers }
    let res: Response
    try {
      try {
        res = await fetch(this.base + path, { ...init, signal })
      } catch (err) {
        // A kept-alive connection the daemon closed while this process was busy (its close not
        // yet read) fails at once; every request here may be repeated (a batch or statement
        // the daemon already holds is a duplicate), so it is sent once more, on a new one.
        if ((err as { cause?: { code?: string } }).cause?.code !== 'UND_ERR_SOCKET') throw err
        res = await fetch(this.base + path, { ...init, signal })
      }
    } catch (err) {
      // The caller's own abort is not the daemon's fault: it surfaces as it is.
      if (options?.signal?.aborted === true) throw options.signal.reason
      const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message
      throw new DaemonUnreachableError(
        `cannot reach the daemon at ${this.base} (${cause}); is it running (rhizome start)? pass its address with --daemon or RHIZOME_DAEMON`
      )
    }
    if (!res.ok) {
      let body: { error?: string; message?: string; category?: string } = {}
      try {
        body = (await res.json()) as typeof body
      } catch {}
      if (res.status === 401 && this.token !== undefined) {
        body.message = `${body.message ?? 'the daemon wants its API token'}. This CLI found none: it read ${(await this.token).from}`
      }
      throw new RejectedByDaemonError(
        body.error ?? `HTTP ${res.status}`,
        body.message ?? `the daemon answered ${res.status} to ${init.method ?? 'GET'} ${path}`,
        body.category ?? (res.status >= 500 ? 'internal' : 'peer-fault')
      )
    }
    return res
  }

  async json<T>(path: string, options?: AbortOptions): Promise<T> {
    return (await (await this.request(path, {}, options)).json()) as T
  }

  async bytes(path: string, options?: AbortOptions): Promise<Uint8Array> {
    return new Uint8Array(await (await this.request(path, {}, options)).arrayBuffer())
  }

  async trust(options?: AbortOptions): Promise<SignedTrustStatement[]> {
    const list = await this.json<unknown[]>('/api/trust', options)
    return list.map(trustStatementFromJson)
  }

  /**
   * The newest `limit` changes (of one document, or of all), newest first, read page by page
   * (`GET /api/history` answers at most HISTORY_PAGE_MAX a page).
   */
  async history(
    query: { doc?: string; limit: number },
    options?: AbortOptions
  ): Promise<HistoryItem[]> {
    const out: HistoryItem[] = []
    let before: string | null | undefined
    while (out.length < query.limit && before !== null) {
      const q = new URLSearchParams({
        limit: String(Math.min(HISTORY_PAGE_MAX, query.limit - out.length))
      })
      if (query.doc !== undefined) q.set('doc', query.doc)
      if (before !== undefined) q.set('before', before)
      const page = await this.json<HistoryPage>(`/api/history?${q}`, options)
      out.push(...page.items)
      before = page.next
    }
    return out
  }

  async docIds(options?: AbortOptions): Promise<string[]> {
    return (await this.json<DocSummary[]>('/api/docs', options)).map(d => d.id)
  }

  async docBatch(id: string, options?: AbortOptions): Promise<SignedBatch> {
    return decodeBatch(await this.bytes(`/api/docs/${encodeURIComponent(id)}/batch`, options))
  }

  async postBatch(batch: SignedBatch, options?: AbortOptions): Promise<BatchReply> {
    return this.postBytes(encodeBatch(batch), options)
  }

  async postBytes(bytes: Uint8Array, options?: AbortOptions): Promise<BatchReply> {
    return this.postBytesTo<BatchReply>('/api/batches', bytes, options)
  }

  /** POST raw bytes to a path; the JSON answer. */
  async postBytesTo<T = unknown>(
    path: string,
    bytes: Uint8Array,
    options?: AbortOptions
  ): Promise<T> {
    return this.post<T>(path, 'application/octet-stream', bytes as Uint8Array<ArrayBuffer>, options)
  }

  /** A dashboard URL with a new one-time viewer token (`rhizome dashboard`). */
  async dashboard(options?: AbortOptions): Promise<DashboardReply> {
    return this.post<DashboardReply>('/api/dashboard', 'application/json', '{}', options)
  }

  async postTrust(
    bytes: Uint8Array,
    options?: AbortOptions
  ): Promise<{ added: boolean; version: number }> {
    return this.post('/api/trust', 'application/json', bytes as Uint8Array<ArrayBuffer>, options)
  }

  private async post<T>(
    path: string,
    contentType: string,
    body: BodyInit,
    options: AbortOptions | undefined
  ): Promise<T> {
    const res = await this.request(
      path,
      { method: 'POST', headers: { 'content-type': contentType }, body },
      options
    )
    return (await res.json()) as T
  }

  /** An in-memory replica holding the daemon's trust chain and the given documents (all by default). */
  async localReplica(ids?: string[], options?: AbortOptions): Promise<Replica> {
    const chain = await this.trust(options)
    const genesis = chain[0]
    if (genesis === undefined) {
      throw new RejectedByDaemonError(
        'NoTrust',
        `the daemon at ${this.base} returned no trust statements`
      )
    }
    const replica = await Replica.open({ store: new MemoryStore(), ed: nodeCryptoEd25519, genesis })
    for (const s of chain.slice(1)) await replica.addTrustStatement(s)
    for (const id of ids ?? (await this.docIds(options))) {
      const doc = await replica.open(id)
      const batch = await this.docBatch(id, options)
      if (batch.chunks.length > 0) await doc.accept(batch)
    }
    return replica
  }
}
