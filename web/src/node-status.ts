/**
 * A gossiped status record as the views hold it: its body parsed by the one status contract
 * (crdt/fleet-status.ts), plus what this page knows of the record (when it arrived, whether it
 * went stale), and the contract's "up to date" rule applied to the documents this page holds.
 */
import {
  ago,
  parseStatusBody,
  recentPutBacks,
  syncState as judge,
  type PutBack,
  type SyncState
} from '../../crdt/fleet-status.ts'
import type { DocView, NodeStatus } from './fleet-source.ts'

export interface RawStatus {
  node: string
  peerId: string
  body: unknown
  receivedAt: number
  stale: boolean
}

/**
 * How far a node's clock may be off this page's before the time its record was made counts
 * against it. A record reaches the page fresh whatever its age (a daemon sends a new peer every
 * record it holds, those of nodes down for hours among them): one made, by its node's clock,
 * more than staleAfterMs plus this long ago is stale at once, not staleAfterMs after it came.
 */
export const CLOCK_SKEW_ALLOWANCE_MS = 2 * 60_000

export function nodeStatus(r: RawStatus, now: number, staleAfterMs: number): NodeStatus {
  const body = parseStatusBody(r.body, r.node.slice(0, 12))
  return {
    ...body,
    node: r.node,
    peerId: r.peerId,
    receivedAt: r.receivedAt,
    // The mesh marks a record stale when no newer one came within staleAfterMs; the page
    // re-checks against its own clock so a node turns stale even between mesh events.
    stale:
      r.stale ||
      now - r.receivedAt > staleAfterMs ||
      (body.at > 0 && now - body.at > staleAfterMs + CLOCK_SKEW_ALLOWANCE_MS)
  }
}

/** Whether the node applied the latest revision of every document this page holds. */
export function syncState(n: NodeStatus, docs: DocView[]): SyncState {
  // Nothing is known of what a node never heard from applied: not "behind".
  if (n.neverSeen === true) return 'unknown'
  return judge(
    n.applied,
    Object.fromEntries(docs.map(d => [d.id, d.heads])),
    id => !(n.newer?.includes(id) ?? false)
  )
}

/**
 * Every node the page should list: each enrolled device, by its enrolment's name and labels, with
 * its newest record or, if none has reached the page, an empty one marked `neverSeen` (a node
 * that is down is listed as down, not left out); and every other node heard from.
 */
export function fleetList(
  records: readonly RawStatus[],
  enrolled: ReadonlyMap<string, { name: string; labels: Record<string, string> }>,
  now: number,
  staleAfterMs: number,
  peerIdOf: (key: string) => string
): NodeStatus[] {
  const heard = new Map(records.map(r => [r.node, r]))
  const out: NodeStatus[] = []
  for (const [key, dev] of enrolled) {
    const r = heard.get(key)
    heard.delete(key)
    if (r !== undefined) {
      const status = nodeStatus(r, now, staleAfterMs)
      out.push({ ...status, name: dev.name, labels: dev.labels, enrolled: true })
      continue
    }
    out.push({
      ...parseStatusBody({}, dev.name),
      labels: dev.labels,
      node: key,
      peerId: peerIdOf(key),
      receivedAt: 0,
      stale: true,
      neverSeen: true,
      enrolled: true
    })
  }
  for (const r of heard.values()) out.push(nodeStatus(r, now, staleAfterMs))
  return out
}

/**
 * The enrolled, unrevoked nodes by key, with their enrolment's name and labels: what a rollout's
 * waves are planned over, as the daemons plan them (node/rollout-agent.ts reads the same
 * `enrolledDevices`). Nodes only heard from are left out.
 */
export function enrolledNodes(
  nodes: readonly NodeStatus[]
): Map<string, { name: string; labels: Record<string, string> }> {
  const out = new Map<string, { name: string; labels: Record<string, string> }>()
  for (const n of nodes) {
    if (n.enrolled === true) out.set(n.node, { name: n.name, labels: n.labels })
  }
  return out
}

/** Files the node put back lately (crdt/fleet-status.ts `recentPutBacks`, on this page's clock). */
export function putBacks(n: NodeStatus, now: number): PutBack[] {
  return recentPutBacks({ status: n, lastSeen: n.receivedAt > 0 ? n.receivedAt : null }, now)
}

/** "down · last seen 3 min ago", "down · never seen", "online". */
export function seenLabel(n: NodeStatus, now: number): string {
  if (!n.stale) return 'online'
  if (n.neverSeen === true) return 'down · never seen'
  return `down · last seen ${ago(n.at || n.receivedAt, now)}`
}
