/**
 * The daemon's HTTP API routes, over the few parts of the daemon they read (`ApiComponents`);
 * the server itself (body limits, errors, static files) is http-api.ts.
 *
 * Every route needs the daemon's API token (http-access.ts) except where marked:
 *
 *   GET  /api/health                 HealthReply {ok, peerId, name, uptimeMs, mesh}   [loopback]
 *   GET  /metrics                    Prometheus text                                  [loopback]
 *   GET  /api/proof?nonce=HEX64      ProofReply {proof}: `apiProof(token, nonce)`, the daemon's proof
 *                                    that it holds the API token, asked before sending it  [open]
 *   GET  /api/status                 FleetStatus (crdt/fleet-status.ts): every node, online or last
 *                                    seen, up to date or not, with its status body
 *   GET  /api/trust                  every trust statement held, JSON array of signed statements in
 *                                    version order (genesis first; a fork's branches too)
 *                                    [also a dashboard viewer token]
 *   POST /api/trust                  add a signed trust statement (JSON)
 *   (trust state and equivocation evidence: node/trust-daemon.ts)
 *   GET  /api/docs                   DocSummary[] [{id, heads}]
 *   GET  /api/docs/:id               DocReply {id, heads, value}   (:id URL-encoded, may contain /)
 *   GET  /api/docs/:id/batch         application/octet-stream: encoded SignedBatch of all its changes
 *   POST /api/batches                application/octet-stream encoded SignedBatch → BatchReply
 *                                    {status, heads, applied}; 400/403 {error, message} when rejected
 *   GET  /api/history?doc=ID&limit=N&before=CURSOR
 *                                    HistoryPage {items (newest first), next} (crdt/change-history.ts):
 *                                    at most HISTORY_PAGE_MAX changes; `next` is the cursor of the
 *                                    older page, null at the oldest
 *   GET  /api/workloads/:name/logs   LogsReply {name, lines}; ?node=NAME asks that node through
 *                                    the mesh (name, PeerId or key), ?lines=N (1-500) the newest N
 *   POST /api/dashboard              DashboardReply {url, expiresAt, joinsThrough}: a dashboard
 *                                    URL with a new one-time viewer token (`rhizome dashboard`)
 *
 * POST /api/batches takes signed batches, verified exactly as if a peer had sent them, so nothing
 * unsigned or unauthorised can be applied through it even with the token; a client whose
 * batches or statements keep failing is refused for a while (http-access.ts InvalidSenders).
 */
import type { IncomingMessage } from 'node:http'
import { historyPage, type HistoryPage } from '../crdt/change-history.ts'
import { plainValue } from '../crdt/config-diff.ts'
import type { AcceptStatus, SignedDocument } from '../crdt/document.ts'
import type { Replica } from '../crdt/replica.ts'
import { decodeBatch, encodeBatch } from '../crdt/signed-change.ts'
import { decodeTrustStatement } from '../crdt/trust.ts'
import { categoryOf, ErrorCategory } from '../crdt/errors.ts'
import { HttpError, type Route } from './http-api.ts'
import { PROOF_NONCE, type ApiAccess } from './http-access.ts'
import type { EventLog } from './logger.ts'
import type { DaemonMetrics } from './metrics.ts'
import type { FleetStatus } from '../crdt/fleet-status.ts'

export interface HealthReply {
  ok: true
  peerId: string
  name: string
  uptimeMs: number
  mesh: boolean
}
/** `GET /api/proof`: the daemon's proof that it holds the API token (http-access.ts `apiProof`). */
export interface ProofReply {
  proof: string
}
export interface DocSummary {
  id: string
  heads: string[]
}
export interface DocReply extends DocSummary {
  value: unknown
}
export interface BatchReply {
  status: AcceptStatus
  heads: string[]
  applied: number
}
export interface LogsReply {
  name: string
  lines: string[]
}
export interface DashboardReply {
  /** Open it in a browser: the page joins the mesh with the one-time viewer token it carries. */
  url: string
  /** When the token stops working if unused, ms since the epoch. */
  expiresAt: number
  /**
   * The daemon's WebSocket address the page joins the mesh through (in the URL), or null: the
   * daemon listens on none, and a browser can join a mesh over WebSockets only.
   */
  joinsThrough: string | null
}

/** What the routes read of the daemon, and nothing more. */
export interface ApiComponents {
  peerId: string
  /** The node's current name (from its enrolment once reconciled). */
  name: () => string
  startedAt: number
  mesh: boolean
  replica: Replica
  metrics: DaemonMetrics
  fleetStatus: () => Promise<FleetStatus>
  /** A workload's recent output lines; undefined when no such workload runs here. */
  workloadLogs: (name: string) => string[] | undefined
  /** The same of another node, asked through the mesh (mesh/logs-protocol.ts). */
  nodeLogs: (node: string, name: string, lines: number) => Promise<string[] | undefined>
  events: EventLog
  access: ApiAccess
  /** A dashboard URL with a fresh one-time viewer token; undefined without a mesh. */
  dashboard: () => DashboardReply | undefined
}

export function apiRoutes(c: ApiComponents): Route[] {
  const replica = c.replica
  /** A write that failed on its content counts against its sender. */
  const counted = async <T>(req: IncomingMessage, write: () => Promise<T>): Promise<T> => {
    const sender = c.access.sender(req)
    c.access.invalid.check(sender)
    try {
      return await write()
    } catch (err) {
      const category = categoryOf(err)
      if (category === ErrorCategory.PeerFault || category === ErrorCategory.Unauthorised) {
        c.access.invalid.failed(sender)
      }
      throw err
    }
  }
  const docId = (raw: string): string => decodeURIComponent(raw)
  const needDoc = async (id: string): Promise<SignedDocument> => {
    if (!replica.documentIds().includes(id)) {
      throw new HttpError(
        404,
        'NotFound',
        `this daemon holds no document "${id}"; GET /api/docs lists the ones it holds`
      )
    }
    return replica.open(id)
  }
  return [
    {
      method: 'GET',
      pattern: /^\/api\/health$/,
      access: 'loopback',
      handler: async () => {
        const json: HealthReply = {
          ok: true,
          peerId: c.peerId,
          name: c.name(),
          uptimeMs: Date.now() - c.startedAt,
          mesh: c.mesh
        }
        return { json }
      }
    },
    {
      method: 'GET',
      pattern: /^\/api\/proof$/,
      access: 'open',
      handler: async (_m, _req, url) => {
        const nonce = url.searchParams.get('nonce') ?? ''
        if (!PROOF_NONCE.test(nonce)) {
          throw new HttpError(400, 'BadNonce', 'nonce: 32 random bytes as 64 lower-case hex digits')
        }
        const json: ProofReply = { proof: c.access.proof(nonce) }
        return { json }
      }
    },
    {
      method: 'GET',
      pattern: /^\/metrics$/,
      access: 'loopback',
      handler: async () => ({
        text: await c.metrics.registry.metrics(),
        type: c.metrics.registry.contentType
      })
    },
    {
      method: 'GET',
      pattern: /^\/api\/status$/,
      handler: async () => ({ json: await c.fleetStatus() })
    },
    {
      method: 'GET',
      pattern: /^\/api\/trust$/,
      access: 'dashboard',
      handler: async () => ({ json: replica.trust.held })
    },
    {
      method: 'POST',
      pattern: /^\/api\/trust$/,
      handler: async (_m, req, _u, body) =>
        counted(req, async () => {
          const added = await replica.addTrustStatement(decodeTrustStatement(await body()))
          return { json: { added, version: replica.trust.version } }
        })
    },
    {
      method: 'GET',
      pattern: /^\/api\/docs$/,
      handler: async () => {
        const json: DocSummary[] = await Promise.all(
          replica.documentIds().map(async id => ({ id, heads: (await replica.open(id)).heads }))
        )
        return { json }
      }
    },
    {
      method: 'GET',
      pattern: /^\/api\/docs\/(.+)\/batch$/,
      handler: async m => {
        const id = docId(m[1] as string)
        const doc = replica.documentIds().includes(id) ? await replica.open(id) : undefined
        const batch =
          doc === undefined
            ? { docId: id, chunks: [], signatures: [] }
            : doc.batchFor(doc.changeHashes())
        return { bytes: encodeBatch(batch), type: 'application/octet-stream' }
      }
    },
    {
      method: 'GET',
      pattern: /^\/api\/docs\/(.+)$/,
      handler: async m => {
        const doc = await needDoc(docId(m[1] as string))
        const json: DocReply = { id: doc.id, heads: doc.heads, value: plainValue(doc.value) }
        return { json }
      }
    },
    {
      method: 'POST',
      pattern: /^\/api\/batches$/,
      handler: async (_m, req, _u, body, signal) =>
        counted(req, async () => {
          try {
            const batch = decodeBatch(await body())
            const r = await replica.accept(batch, { signal })
            c.metrics.apiChanges.inc({ result: r.status })
            c.events('info', 'batch.accepted', {
              doc: batch.docId,
              status: r.status,
              applied: r.applied,
              via: 'http'
            })
            const json: BatchReply = { status: r.status, heads: r.heads, applied: r.applied }
            return { json }
          } catch (err) {
            c.metrics.apiChanges.inc({ result: 'rejected' })
            c.events('warn', 'batch.rejected', { error: err as Error, via: 'http' })
            throw err
          }
        })
    },
    {
      method: 'POST',
      pattern: /^\/api\/dashboard$/,
      handler: async () => {
        const json = c.dashboard()
        if (json === undefined) {
          throw new HttpError(
            409,
            'NoMesh',
            'this daemon runs without the mesh, so a dashboard cannot join through it'
          )
        }
        return { json }
      }
    },
    {
      method: 'GET',
      pattern: /^\/api\/history$/,
      handler: async (_m, _r, url, _b, signal) => {
        const only = url.searchParams.get('doc')
        const rawLimit = url.searchParams.get('limit')
        const limit = rawLimit === null ? undefined : Number(rawLimit)
        if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) {
          throw new HttpError(
            400,
            'BadRequest',
            `limit must be a positive whole number, not "${rawLimit?.slice(0, 20)}"`
          )
        }
        const ids = only === null ? replica.documentIds() : [only]
        const docs: SignedDocument[] = []
        for (const id of ids) docs.push(await needDoc(id))
        const json: HistoryPage = await historyPage(docs, {
          limit,
          before: url.searchParams.get('before') ?? undefined,
          lookup: key => replica.trust.lookup(key),
          signal
        })
        return { json }
      }
    },
    {
      method: 'GET',
      pattern: /^\/api\/workloads\/([^/]+)\/logs$/,
      handler: async (m, _req, url) => {
        const name = decodeURIComponent(m[1] as string)
        const node = url.searchParams.get('node')
        const want = Math.min(500, Math.max(1, Number(url.searchParams.get('lines') ?? 500) || 500))
        const lines =
          node === null ? c.workloadLogs(name)?.slice(-want) : await c.nodeLogs(node, name, want)
        if (lines === undefined) {
          throw new HttpError(
            404,
            'NotFound',
            `no workload "${name}" runs on ${node === null ? 'this node' : `node "${node}"`}`
          )
        }
        const json: LogsReply = { name, lines }
        return { json }
      }
    }
  ]
}
