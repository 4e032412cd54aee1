/**
 * The mesh's counters: one plain object the services add to and `Mesh.metrics()` reads. Not a
 * libp2p service: it has no lifecycle and no components, so it is handed to each service in its
 * init rather than looked up.
 */
import type { MeshMetrics } from './types.ts'

/** What a sync stream counts: frames in and out, batches accepted, held already, or refused. */
export type SyncCount = 'in' | 'out' | 'accepted' | 'duplicate' | 'refused'

type Counted = Omit<
  MeshMetrics,
  | 'peers'
  | 'syncSessions'
  | 'statusRecords'
  | 'peersBanned'
  | 'artifactChunksOverLinks'
  | 'artifactChunksOverStreams'
  | 'artifactLinksOut'
  | 'artifactLinksIn'
>

export class MeshCounters implements Counted {
  changesAccepted = 0
  batchesAccepted = 0
  batchesDuplicate = 0
  changesRejected = 0
  batchesRejected = 0
  syncBytesIn = 0
  syncBytesOut = 0
  syncMessagesIn = 0
  syncMessagesOut = 0
  peersThrottled = 0
  statusRecordsCoalesced = 0
  inboundRefused = 0

  /**
   * Frames in and out (n = bytes); changes accepted (n = changes); a batch that held nothing new;
   * a batch refused as invalid or unauthorised (n = changes).
   */
  count(what: SyncCount, n: number): void {
    switch (what) {
      case 'in':
        this.syncBytesIn += n
        this.syncMessagesIn++
        break
      case 'out':
        this.syncBytesOut += n
        this.syncMessagesOut++
        break
      case 'accepted':
        this.changesAccepted += n
        this.batchesAccepted++
        break
      case 'duplicate':
        this.batchesDuplicate++
        break
      case 'refused':
        this.changesRejected += n
    }
  }

  snapshot(): Counted {
    return {
      changesAccepted: this.changesAccepted,
      batchesAccepted: this.batchesAccepted,
      batchesDuplicate: this.batchesDuplicate,
      changesRejected: this.changesRejected,
      batchesRejected: this.batchesRejected,
      syncBytesIn: this.syncBytesIn,
      syncBytesOut: this.syncBytesOut,
      syncMessagesIn: this.syncMessagesIn,
      syncMessagesOut: this.syncMessagesOut,
      peersThrottled: this.peersThrottled,
      statusRecordsCoalesced: this.statusRecordsCoalesced,
      inboundRefused: this.inboundRefused
    }
  }
}
