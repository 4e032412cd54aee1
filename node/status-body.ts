/**
 * The status body a daemon publishes (mesh.publishStatus gossips it; the dashboard reads
 * exactly these field names). Kept under MAX_STATUS_BYTES by trimming logs if needed.
 *
 * ```ts
 * { name, labels,
 *   revision: { <docId>: heads[] },      // what this node holds
 *   applied:  { <docId>: heads[] },      // what its running state was made from
 *   workloads: { <name>: { state: 'running'|'starting'|'crashed'|'stopped', healthy: boolean|null,
 *                          restarts, version?, pid?, log: last 20 lines } },
 *   files: { ok, drifted: [paths put back] },
 *   peers: [peerId...], startedAt, at }    // times: ms since the epoch
 * ```
 */
import { MAX_STATUS_BYTES } from '../mesh/types.ts'
import type { WorkloadStatus } from './appliers/processes.ts'
import type { ArtifactStatus } from './artifacts/manager.ts'

export interface NodeStatusBody {
  name: string
  labels: Record<string, string>
  revision: Record<string, string[]>
  applied: Record<string, string[]>
  workloads: Record<string, WorkloadStatus>
  files: { ok: boolean; drifted: string[] }
  peers: string[]
  startedAt: number
  at: number
  /** Config problems found while applying (bad paths, bad workload specs), at most 20. */
  errors?: string[]
  /** Referenced artifacts by digest: state, bytes held, peers, rate, ETA (at most 32). */
  artifacts?: Record<string, ArtifactStatus>
}

const size = (v: unknown): number => new TextEncoder().encode(JSON.stringify(v)).length

/** Trim logs (then peers and errors) until the body fits in a status record. */
export function fitStatus(body: NodeStatusBody): NodeStatusBody {
  if (size(body) <= MAX_STATUS_BYTES - 1024) return body
  const b: NodeStatusBody = structuredClone(body)
  for (const keep of [10, 3, 0]) {
    for (const w of Object.values(b.workloads)) w.log = w.log.slice(-keep).map(l => l.slice(0, 200))
    if (size(b) <= MAX_STATUS_BYTES - 1024) return b
  }
  b.peers = b.peers.slice(0, 50)
  b.errors = b.errors?.slice(0, 3)
  return b
}
