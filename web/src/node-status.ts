/**
 * A gossiped status record as the views hold it: its body parsed by the one status contract
 * (crdt/fleet-status.ts), plus what this page knows of the record (when it arrived, whether it
 * went stale), and the contract's "up to date" rule applied to the documents this page holds.
 */
import { parseStatusBody, syncState as judge, type SyncState } from '../../crdt/fleet-status.ts'
import type { DocView, NodeStatus } from './fleet-source.ts'

export interface RawStatus {
  node: string
  peerId: string
  body: unknown
  receivedAt: number
  stale: boolean
}

export function nodeStatus(r: RawStatus, now: number, staleAfterMs: number): NodeStatus {
  return {
    ...parseStatusBody(r.body, r.node.slice(0, 12)),
    node: r.node,
    peerId: r.peerId,
    receivedAt: r.receivedAt,
    // The mesh marks a record stale when no newer one came within staleAfterMs; the page
    // re-checks against its own clock so a node turns stale even between mesh events.
    stale: r.stale || now - r.receivedAt > staleAfterMs
  }
}

/** Whether the node applied the latest revision of every document this page holds. */
export function syncState(n: NodeStatus, docs: DocView[]): SyncState {
  return judge(
    n.applied,
    Object.fromEntries(docs.map(d => [d.id, d.heads])),
    id => !(n.newer?.includes(id) ?? false)
  )
}
