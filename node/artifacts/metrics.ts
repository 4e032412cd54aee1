/** The artifact subsystem's Prometheus metrics, on the daemon's registry (read when scraped). */
import { Gauge, type Registry } from 'prom-client'
import type { Artifacts, ArtifactCounters } from './manager.ts'

export function registerArtifactMetrics(registry: Registry, artifacts: Artifacts): void {
  const counter = (name: string, help: string, pick: (c: ArtifactCounters) => number): void => {
    void new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(pick(artifacts.counters()))
      }
    })
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
  void new Gauge({
    name: 'rhizome_artifact_bytes',
    help: 'Per referenced artifact: verified bytes held (held) and its size (size)',
    labelNames: ['digest', 'kind'],
    registers: [registry],
    collect() {
      this.reset()
      for (const [d, s] of Object.entries(artifacts.statuses())) {
        this.set({ digest: d, kind: 'held' }, s.held)
        if (s.size !== undefined) this.set({ digest: d, kind: 'size' }, s.size)
      }
    }
  })
  void new Gauge({
    name: 'rhizome_artifacts',
    help: 'Referenced artifacts by state (complete, fetching, waiting, failed)',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      this.reset()
      for (const state of ['complete', 'fetching', 'waiting', 'failed']) this.set({ state }, 0)
      for (const s of Object.values(artifacts.statuses())) this.inc({ state: s.state })
    }
  })
  void new Gauge({
    name: 'rhizome_artifact_store_bytes',
    help: 'Bytes the artifact store holds on disk (complete and partial)',
    registers: [registry],
    collect() {
      this.set(artifacts.store.usedBytes())
    }
  })
}
