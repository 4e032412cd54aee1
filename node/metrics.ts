/**
 * Prometheus metrics (GET /metrics), on a registry of the daemon's own (not prom-client's
 * global one, so two daemons in one process do not collide). Values from the mesh are read
 * when scraped.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { MeshMetrics } from '../mesh/types.ts'
import type { WorkloadStatus } from '../crdt/fleet-status.ts'

export interface MetricsSources {
  mesh: () => MeshMetrics | undefined
  revisionLag: () => number
  workloads: () => Record<string, WorkloadStatus>
}

/** A gauge read when scraped: `read` gives its value. */
export function readGauge(
  registry: Registry,
  name: string,
  help: string,
  read: () => number
): void {
  void new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(read())
    }
  })
}

/**
 * A gauge with labels, rebuilt from nothing when scraped (`fill` sets its values), so a workload,
 * rollout or artifact that is gone no longer shows.
 */
export function labelledGauge<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[],
  fill: (gauge: Gauge<L>) => void
): void {
  void new Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset()
      fill(this)
    }
  })
}

export class DaemonMetrics {
  readonly registry = new Registry()
  readonly reconcileSeconds: Histogram
  readonly apiChanges: Counter<'result'>

  constructor(src: MetricsSources) {
    const r = this.registry
    // Node's own: resident memory, V8 heap, buffers, GC pauses, event-loop lag, open files.
    collectDefaultMetrics({ register: r })
    const meshGauge = (name: string, help: string, pick: (m: MeshMetrics) => number): void => {
      readGauge(r, name, help, () => {
        const m = src.mesh()
        return m === undefined ? 0 : pick(m)
      })
    }
    meshGauge('rhizome_peers', 'Connected peers', m => m.peers)
    meshGauge(
      'rhizome_mesh_changes_accepted_total',
      'Changes accepted from peers',
      m => m.changesAccepted
    )
    meshGauge(
      'rhizome_mesh_changes_rejected_total',
      'Changes rejected from peers',
      m => m.changesRejected
    )
    meshGauge(
      'rhizome_mesh_batches_rejected_total',
      'Batches rejected from peers',
      m => m.batchesRejected
    )
    meshGauge(
      'rhizome_mesh_batches_accepted_total',
      'Batches from peers that held new changes',
      m => m.batchesAccepted
    )
    meshGauge(
      'rhizome_mesh_batches_duplicate_total',
      'Batches from peers that held nothing new (redundant pushes)',
      m => m.batchesDuplicate
    )
    meshGauge('rhizome_sync_bytes_in_total', 'Sync bytes received', m => m.syncBytesIn)
    meshGauge('rhizome_sync_bytes_out_total', 'Sync bytes sent', m => m.syncBytesOut)
    meshGauge('rhizome_status_records', 'Status records held', m => m.statusRecords)
    meshGauge(
      'rhizome_peers_banned_total',
      'Peers disconnected for sending invalid data',
      m => m.peersBanned
    )
    meshGauge(
      'rhizome_mesh_peers_throttled_total',
      'Peers cut off for exceeding their work budget or flooding status records',
      m => m.peersThrottled
    )
    meshGauge(
      'rhizome_mesh_status_coalesced_total',
      'Status records replaced by a newer one while waiting for their node pace',
      m => m.statusRecordsCoalesced
    )
    meshGauge(
      'rhizome_mesh_inbound_refused_total',
      'Inbound connections refused before their handshake (per-host or reserved slots)',
      m => m.inboundRefused
    )
    meshGauge(
      'rhizome_artifact_chunks_over_links_total',
      'Artifact chunks received over artifact links (TLS, beside the mesh connection)',
      m => m.artifactChunksOverLinks
    )
    meshGauge(
      'rhizome_artifact_chunks_over_streams_total',
      'Artifact chunks received over mesh streams (no link to that holder)',
      m => m.artifactChunksOverStreams
    )
    meshGauge(
      'rhizome_artifact_links_out',
      'Artifact links open to holders',
      m => m.artifactLinksOut
    )
    meshGauge('rhizome_artifact_links_in', 'Artifact links open to us', m => m.artifactLinksIn)
    readGauge(r, 'rhizome_revision_lag', 'Documents whose held revision is not yet applied', () =>
      src.revisionLag()
    )
    labelledGauge(
      r,
      'rhizome_workload_state',
      '1 for the state each workload is in',
      ['workload', 'state'],
      g => {
        for (const [name, w] of Object.entries(src.workloads())) {
          g.set({ workload: name, state: w.state }, 1)
        }
      }
    )
    labelledGauge(
      r,
      'rhizome_workload_healthy',
      '1 healthy, 0 unhealthy, -1 no probe',
      ['workload'],
      g => {
        for (const [name, w] of Object.entries(src.workloads())) {
          g.set({ workload: name }, w.healthy === null ? -1 : w.healthy ? 1 : 0)
        }
      }
    )
    this.apiChanges = new Counter({
      name: 'rhizome_api_batches_total',
      help: 'Batches posted to the HTTP API, by result',
      labelNames: ['result'],
      registers: [r]
    })
    this.reconcileSeconds = new Histogram({
      name: 'rhizome_reconcile_duration_seconds',
      help: 'Duration of reconcile passes',
      buckets: [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [r]
    })
  }
}
