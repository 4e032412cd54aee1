/**
 * The real FleetSource: page side. The libp2p peer, the replica (Automerge, wasm), signature
 * checks and scrypt all run in a Web Worker (mesh-worker.ts), so none of that work can freeze
 * the page; the page only receives plain snapshots and renders them.
 *
 * The fleet's genesis trust statement is needed before anything can be verified. It comes from
 * the daemon that served this page (`./api/trust`, same origin: trusting it adds nothing to
 * trusting the page's own code) or, when the dashboard is served on its own, from the fleet's
 * trust.json chosen in the connect form.
 */
import type { ConnectRequest, FleetSource, HistoryView, SignerInfo } from './fleet-source.ts'
import type { WorkerMessage, WorkerRequest, WorkerResult } from './worker-protocol.ts'
import { SnapshotSource } from './snapshot-source.ts'

const REQUEST_TIMEOUT_MS = 60_000

export class WorkerFleetSource extends SnapshotSource implements FleetSource {
  private readonly worker: Worker
  private readonly pending = new Map<
    number,
    { resolve: (r: WorkerResult) => void; reject: (e: Error) => void }
  >()
  private nextId = 1
  /** Set by the connect form when the person chose a trust.json file. */
  trustFile: unknown[] | undefined

  constructor() {
    super({ connection: { state: 'disconnected', connectedTo: [] }, nodes: [], docs: [], keys: {} })
    this.worker = new Worker(new URL('./mesh-worker.ts', import.meta.url), {
      type: 'module',
      name: 'rhizome-mesh'
    })
    this.worker.addEventListener('message', (e: MessageEvent<WorkerMessage>) => {
      this.onMessage(e.data)
    })
    this.worker.addEventListener('error', e => {
      this.set({
        ...this.state,
        connection: {
          ...this.state.connection,
          state: 'error',
          error: `the dashboard's background worker failed: ${e.message}. Reload the page.`
        }
      })
    })
  }

  private onMessage(m: WorkerMessage): void {
    if (m.type === 'snapshot') {
      this.set(m.snapshot)
      return
    }
    const p = this.pending.get(m.id)
    if (p === undefined) return
    this.pending.delete(m.id)
    if (m.ok) p.resolve(m.result)
    else {
      const err = new Error(m.error)
      err.name = m.name
      p.reject(err)
    }
  }

  private request(req: WorkerRequest): Promise<WorkerResult> {
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(
          new Error(
            `${req.type} got no answer within ${REQUEST_TIMEOUT_MS / 1000} s; reload the page and try again`
          )
        )
      }, REQUEST_TIMEOUT_MS)
      this.pending.set(id, {
        resolve: r => {
          clearTimeout(timer)
          resolve(r)
        },
        reject: e => {
          clearTimeout(timer)
          reject(e)
        }
      })
      this.worker.postMessage({ id, ...req })
    })
  }

  async connect(req: ConnectRequest): Promise<void> {
    const trust = this.trustFile ?? (await sameOriginTrust(req.token))
    await this.request({
      type: 'connect',
      address: req.address,
      token: req.token,
      staleAfterMs: req.staleAfterMs,
      trust
    })
  }

  async disconnect(): Promise<void> {
    await this.request({ type: 'disconnect' })
  }
  async unlockKey(keyFile: string, passphrase: string): Promise<SignerInfo> {
    return (await this.request({ type: 'unlock', keyFile, passphrase })) as SignerInfo
  }
  async forgetKey(): Promise<void> {
    await this.request({ type: 'forget' })
  }
  async publish(
    docId: string,
    value: Record<string, unknown>,
    message: string
  ): Promise<{ heads: string[] }> {
    return (await this.request({ type: 'publish', docId, value, message })) as { heads: string[] }
  }

  async validate(docId: string, value: Record<string, unknown>): Promise<void> {
    await this.request({ type: 'validate', docId, value })
  }

  async history(docId: string, before?: string): Promise<HistoryView> {
    return (await this.request({ type: 'history', docId, before })) as HistoryView
  }
}

/**
 * The trust chain of the daemon that served this page, if it did. The daemon lets the page read
 * it with the viewer token from its dashboard URL (`rhizome dashboard`), until that expires.
 */
async function sameOriginTrust(token: string | undefined): Promise<unknown[] | undefined> {
  if (token === undefined) return undefined
  try {
    const res = await fetch('./api/trust', {
      signal: AbortSignal.timeout(5000),
      headers: { accept: 'application/json', authorization: `Bearer ${token}` }
    })
    if (!res.ok || !(res.headers.get('content-type') ?? '').includes('json')) return undefined
    const v: unknown = await res.json()
    return Array.isArray(v) ? v : undefined
  } catch {
    return undefined
  }
}
