/** The artifact subsystem's Prometheus metrics, on the daemon's registry (read when scraped). */
import type { Registry } from 'prom-client'
import { labelledGauge, readGauge } from '../metrics.ts'
import type { Artifacts, ArtifactCounters } from './manager.ts'

export function registerArtifactMetrics(registry: Registry, artifacts: Artifacts): void {
  const counter = (name: string, help: string, pick: (c: ArtifactCounters) => number): void => {
    readGauge(registry, name, help, () => pick(artifacts.counters()))
  }
  counter(
    'rhizome_artifact_bytes_fetched_total',
    'Artifact bytes fetched from peers and verified',
    c => c.bytesFetched
  )
  counter(
    'rhizome_artifact_bytes_refetched_total',
    'Artifact bytes fetched for chunks already held (wasted)',
    c => c.bytesRefetched
  )
  counter(
    'rhizome_artifact_chunks_rejected_total',
    'Artifact chunks refused: they did not match the manifest',
    c => c.chunksRejected
  )
  counter(
    'rhizome_artifact_bytes_served_total',
    'Artifact bytes served to peers',
    c => c.bytesServed
  )
  labelledGauge(
    registry,
    'rhizome_artifact_bytes',
    'Per referenced artifact: verified bytes held (held) and its size (size)',
    ['digest', 'kind'],
    g => {
      for (const [d, s] of Object.entries(artifacts.statuses())) {
        g.set({ digest: d, kind: 'held' }, s.held)
        if (s.size !== undefined) g.set({ digest: d, kind: 'size' }, s.size)
      }
    }
  )
  labelledGauge(
    registry,
    'rhizome_artifacts',
    'Referenced artifacts by state (complete, fetching, waiting, failed)',
    ['state'],
    g => {
      for (const state of ['complete', 'fetching', 'waiting', 'failed']) g.set({ state }, 0)
      for (const s of Object.values(artifacts.statuses())) g.inc({ state: s.state })
    }
  )
  readGauge(
    registry,
    'rhizome_artifact_store_bytes',
    'Bytes the artifact store holds on disk (complete and partial)',
    () => artifacts.store.usedBytes()
  )
}
