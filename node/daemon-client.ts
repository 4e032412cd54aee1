/**
 * How the CLI talks to a daemon: its HTTP API. `localReplica` rebuilds the daemon's documents
 * in memory (same genesis and trust chain, every signed batch verified again here), so the
 * CLI makes changes with an admin key locally and posts only signed batches back.
 */
import { decodeBatch, encodeBatch, type SignedBatch } from '../crdt/signed-change.ts'
import { decodeTrustStatement, type SignedTrustStatement } from '../crdt/trust.ts'
import { Replica } from '../crdt/replica.ts'
import { MemoryStore } from '../crdt/store.ts'
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { utf8 } from '../crdt/bytes.ts'
import { DaemonUnreachableError, RejectedByDaemonError } from './errors.ts'

export const REQUEST_TIMEOUT_MS = 30_000

export class DaemonClient {
  readonly base: string
  constructor(url: string) {
    this.base = url.replace(/\/+$/, '')
  }

  private async request(path: string, init: RequestInit = {}): Promise<Response> {
    let res: Response
    try {
      res = await fetch(this.base + path, {
        ...init,
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS)
      })
    } catch (err) {
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
      throw new RejectedByDaemonError(
        body.error ?? `HTTP ${res.status}`,
        body.message ?? `the daemon answered ${res.status} to ${init.method ?? 'GET'} ${path}`,
        body.category ?? (res.status >= 500 ? 'internal' : 'peer-fault')
      )
    }
    return res
  }

  async json<T>(path: string): Promise<T> {
    return (await (await this.request(path)).json()) as T
  }

  async bytes(path: string): Promise<Uint8Array> {
    return new Uint8Array(await (await this.request(path)).arrayBuffer())
  }

  async trust(): Promise<SignedTrustStatement[]> {
    const list = await this.json<unknown[]>('/api/trust')
    return list.map(s => decodeTrustStatement(utf8(JSON.stringify(s))))
  }

  async docIds(): Promise<string[]> {
    return (await this.json<Array<{ id: string }>>('/api/docs')).map(d => d.id)
  }

  async docBatch(id: string): Promise<SignedBatch> {
    return decodeBatch(await this.bytes(`/api/docs/${encodeURIComponent(id)}/batch`))
  }

  async postBatch(batch: SignedBatch): Promise<{ status: string; heads: string[] }> {
    return this.postBytes(encodeBatch(batch))
  }

  async postBytes(bytes: Uint8Array): Promise<{ status: string; heads: string[] }> {
    const res = await this.request('/api/batches', {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: bytes as Uint8Array<ArrayBuffer>
    })
    return (await res.json()) as { status: string; heads: string[] }
  }

  async postTrust(bytes: Uint8Array): Promise<{ added: boolean; version: number }> {
    const res = await this.request('/api/trust', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: bytes as Uint8Array<ArrayBuffer>
    })
    return (await res.json()) as { added: boolean; version: number }
  }

  /** An in-memory replica holding the daemon's trust chain and the given documents (all by default). */
  async localReplica(ids?: string[]): Promise<Replica> {
    const chain = await this.trust()
    const genesis = chain[0]
    if (genesis === undefined) {
      throw new RejectedByDaemonError(
        'NoTrust',
        `the daemon at ${this.base} returned no trust statements`
      )
    }
    const replica = await Replica.open({ store: new MemoryStore(), ed: nodeCryptoEd25519, genesis })
    for (const s of chain.slice(1)) await replica.addTrustStatement(s)
    for (const id of ids ?? (await this.docIds())) {
      const doc = await replica.open(id)
      const batch = await this.docBatch(id)
      if (batch.chunks.length > 0) await doc.accept(batch)
    }
    return replica
  }
}
