/**
 * Fleet overview: every node with name, labels, online or last seen, applied revision against
 * the latest, workload health. Filter by text or `key=value`, sort by any column.
 */
import type { ComponentChildren } from 'preact'
import { useMemo, useState } from 'preact/hooks'
import type { FleetSnapshot, NodeStatus } from '../fleet-source.ts'
import {
  ago,
  health,
  healthLabel,
  shortHeads,
  SYNC_LABEL,
  type Health,
  type SyncState
} from '../../../crdt/fleet-status.ts'
import { syncState } from '../node-status.ts'
import { navigate } from '../navigation.ts'

type SortKey = 'name' | 'status' | 'revision' | 'health' | 'seen' | 'peers'

interface Row {
  n: NodeStatus
  sync: SyncState
  health: Health
  healthy: number
  total: number
  problems: number
}

const SYNC_ORDER: Record<SyncState, number> = {
  behind: 0,
  'ahead-or-diverged': 1,
  unknown: 2,
  'in-sync': 3
}
const HEALTH_ORDER: Record<Health, number> = { failing: 0, degraded: 1, idle: 2, healthy: 3 }

/** `site=berlin-3 till` → every term must match: key=value on labels, plain words on name, labels or key. */
export function matchesFilter(n: NodeStatus, filter: string): boolean {
  for (const term of filter
    .toLowerCase()
    .split(/\s+/)
    .filter(t => t !== '')) {
    const eq = term.indexOf('=')
    if (eq > 0) {
      const k = term.slice(0, eq)
      const v = term.slice(eq + 1)
      if ((n.labels[k] ?? '').toLowerCase() !== v) return false
      continue
    }
    const hay = `${n.name} ${Object.entries(n.labels)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')} ${n.peerId} ${n.stale ? 'down stale' : 'online'}`.toLowerCase()
    if (!hay.includes(term)) return false
  }
  return true
}

function compare(a: Row, b: Row, key: SortKey): number {
  switch (key) {
    case 'name':
      return a.n.name.localeCompare(b.n.name, undefined, { numeric: true })
    case 'status':
      return Number(b.n.stale) - Number(a.n.stale)
    case 'revision':
      return SYNC_ORDER[a.sync] - SYNC_ORDER[b.sync]
    case 'health':
      return HEALTH_ORDER[a.health] - HEALTH_ORDER[b.health]
    case 'seen':
      return b.n.receivedAt - a.n.receivedAt
    case 'peers':
      return b.n.peers.length - a.n.peers.length
  }
}

/** One figure of the summary row; `tone` (ok, warn, bad) colours it. */
function Card({
  count,
  tone = '',
  testid,
  children
}: {
  count: number
  tone?: '' | 'ok' | 'warn' | 'bad'
  testid?: string
  children: ComponentChildren
}) {
  return (
    <div class={tone === '' ? 'card' : `card ${tone}`}>
      <div class='num' data-testid={testid}>
        {count}
      </div>
      <div>{children}</div>
    </div>
  )
}

export function Overview({ snap, now }: { snap: FleetSnapshot; now: number }) {
  const [filter, setFilter] = useState('')
  const [sort, setSort] = useState<{ key: SortKey; dir: 1 | -1 }>({ key: 'name', dir: 1 })
  const rows = useMemo(
    () => snap.nodes.map(n => ({ n, sync: syncState(n, snap.docs), ...health(n) })),
    [snap.nodes, snap.docs]
  )
  const shown = useMemo(
    () =>
      rows
        .filter(r => matchesFilter(r.n, filter))
        .sort(
          (a, b) =>
            sort.dir * compare(a, b, sort.key) ||
            a.n.name.localeCompare(b.n.name, undefined, { numeric: true })
        ),
    [rows, filter, sort]
  )
  const fleetHeads = snap.docs.find(d => d.id === 'fleet')?.heads
  const summary = {
    online: rows.filter(r => !r.n.stale).length,
    stale: rows.filter(r => r.n.stale).length,
    behind: rows.filter(r => r.sync === 'behind').length,
    failing: rows.filter(r => r.health === 'failing' || r.health === 'degraded').length
  }
  const header = (key: SortKey, label: string) => (
    <th aria-sort={sort.key === key ? (sort.dir === 1 ? 'ascending' : 'descending') : 'none'}>
      <button
        class='sort'
        onClick={() => setSort(s => ({ key, dir: s.key === key ? (s.dir === 1 ? -1 : 1) : 1 }))}
      >
        {label}
        {sort.key === key ? (sort.dir === 1 ? ' ▲' : ' ▼') : ''}
      </button>
    </th>
  )

  if (rows.length === 0) {
    return (
      <section class='empty' data-testid='overview-empty'>
        <h2>No node is enrolled yet</h2>
        <p>
          This browser is connected, but neither an enrolled device nor a status record has reached
          it yet. Devices are enrolled with <code>rhizome enrol</code>; if this stays empty, check
          that the daemon you connected to is enrolled in this fleet (<code>rhizome status</code> on
          it).
        </p>
      </section>
    )
  }

  return (
    <section data-testid='overview'>
      <div class='cards'>
        <Card count={rows.length} testid='count-nodes'>
          nodes
        </Card>
        <Card count={summary.online} tone='ok' testid='count-online'>
          online
        </Card>
        <Card count={summary.stale} tone={summary.stale > 0 ? 'warn' : ''} testid='count-stale'>
          down
        </Card>
        <Card count={summary.behind} tone={summary.behind > 0 ? 'warn' : ''}>
          behind latest <code>{shortHeads(fleetHeads)}</code>
        </Card>
        <Card count={summary.failing} tone={summary.failing > 0 ? 'bad' : ''}>
          degraded or failing
        </Card>
      </div>
      <div class='toolbar'>
        <input
          class='filter'
          type='search'
          placeholder='Filter: name, label (site=berlin-3), down…'
          value={filter}
          onInput={e => setFilter((e.target as HTMLInputElement).value)}
          aria-label='Filter nodes'
          data-testid='filter'
        />
        <span class='muted'>
          {shown.length} of {rows.length} shown
        </span>
      </div>
      <table class='grid' data-testid='node-table'>
        <thead>
          <tr>
            {header('name', 'Node')}
            <th>Labels</th>
            {header('status', 'Status')}
            {header('seen', 'Last seen')}
            {header('revision', 'Applied revision')}
            {header('health', 'Workloads')}
            {header('peers', 'Peers')}
          </tr>
        </thead>
        <tbody>
          {shown.map(r => (
            <tr
              key={r.n.node}
              data-node={r.n.name}
              class={r.n.stale ? 'row-stale' : ''}
              onClick={() => navigate({ view: 'node', node: r.n.name })}
            >
              <td>
                <a
                  class='node-link'
                  href={`#view=node&node=${encodeURIComponent(r.n.name)}`}
                  onClick={e => e.preventDefault()}
                >
                  {r.n.name}
                </a>
              </td>
              <td>
                {Object.entries(r.n.labels).map(([k, v]) => (
                  <span class='label' key={k}>
                    {k}={v}
                  </span>
                ))}
              </td>
              <td>
                <span class={r.n.stale ? 'badge stale' : 'badge online'} data-testid='node-state'>
                  {r.n.stale ? 'down' : 'online'}
                  {r.n.freshness?.state === 'stale' ? ' · may be frozen' : ''}
                </span>
              </td>
              <td class='muted' title={r.n.at > 0 ? new Date(r.n.at).toLocaleString() : ''}>
                {r.n.neverSeen === true
                  ? 'never'
                  : ago(r.n.stale ? r.n.at || r.n.receivedAt : r.n.receivedAt, now)}
              </td>
              <td>
                <span class={`badge sync-${r.sync}`}>{SYNC_LABEL[r.sync]}</span>{' '}
                <code class='muted'>{shortHeads(r.n.applied.fleet)}</code>
              </td>
              <td>
                <span class={`badge health-${r.health}`} data-testid='node-health'>
                  {healthLabel(r)}
                </span>
              </td>
              <td class='num-cell'>{r.n.peers.length}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {shown.length === 0 && (
        <p class='empty-inline'>
          No node matches “{filter}”. Clear the filter to see all {rows.length}.
        </p>
      )}
    </section>
  )
}
