/**
 * Mesh topology as a picture: who is connected to whom, from each status record's `peers` list,
 * plus this browser and the daemons it is connected to. Nodes sit on a circle grouped by site
 * label, so a site's nodes are neighbours and cross-site links stand out.
 */
import { useMemo } from 'preact/hooks'
import type { FleetSnapshot } from '../fleet-source.ts'
import { health } from '../../../crdt/fleet-status.ts'
import { navigate } from '../navigation.ts'

const SIZE = 760

export function Topology({ snap }: { snap: FleetSnapshot }) {
  const layout = useMemo(() => {
    const nodes = [...snap.nodes].sort(
      (a, b) =>
        (a.labels.site ?? '').localeCompare(b.labels.site ?? '') ||
        a.name.localeCompare(b.name, undefined, { numeric: true })
    )
    const r = SIZE / 2 - (nodes.length > 40 ? 90 : 70)
    const pos = new Map<string, { x: number; y: number }>()
    nodes.forEach((n, i) => {
      const a = (2 * Math.PI * i) / Math.max(1, nodes.length) - Math.PI / 2
      pos.set(n.peerId, { x: SIZE / 2 + r * Math.cos(a), y: SIZE / 2 + r * Math.sin(a) })
    })
    const self = snap.connection.selfPeerId
    if (self !== undefined) pos.set(self, { x: SIZE / 2, y: SIZE / 2 })
    const edges = new Map<string, [string, string]>()
    const add = (a: string, b: string): void => {
      if (!pos.has(a) || !pos.has(b) || a === b) return
      const k = a < b ? `${a}|${b}` : `${b}|${a}`
      edges.set(k, [a, b])
    }
    for (const n of nodes) for (const p of n.peers) add(n.peerId, p)
    if (self !== undefined) for (const d of snap.connection.connectedTo) add(self, d)
    // big fleets: one label per site instead of one per node (names stay in each node's tooltip)
    const sites = new Map<string, number[]>()
    nodes.forEach((n, i) => {
      const k = n.labels.site ?? '(no site)'
      sites.set(k, [...(sites.get(k) ?? []), i])
    })
    const siteLabels = [...sites.entries()].map(([site, idx]) => {
      const mid = ((idx[0] as number) + (idx.at(-1) as number)) / 2
      const a = (2 * Math.PI * mid) / Math.max(1, nodes.length) - Math.PI / 2
      return {
        site,
        count: idx.length,
        x: SIZE / 2 + (r + 34) * Math.cos(a),
        y: SIZE / 2 + (r + 34) * Math.sin(a),
        anchor: Math.abs(Math.cos(a)) < 0.3 ? 'middle' : Math.cos(a) < 0 ? 'end' : 'start'
      }
    })
    return { nodes, pos, edges: [...edges.values()], self, siteLabels }
  }, [snap.nodes, snap.connection])

  if (layout.nodes.length === 0) {
    return (
      <div class='empty'>
        <h2>No nodes to draw yet</h2>
        <p>The picture is built from status records; none has arrived.</p>
      </div>
    )
  }
  const small = layout.nodes.length > 40
  return (
    <section data-testid='topology'>
      <div class='legend'>
        <span>
          <i class='dot online' /> online
        </span>
        <span>
          <i class='dot stale' /> down
        </span>
        <span>
          <i class='dot failing' /> degraded or failing
        </span>
        <span>
          <i class='dot self' /> this browser
        </span>
        {small && <span class='muted'>hover a node for its name; click it for details</span>}
        <span class='muted'>
          {layout.edges.length} connections between {layout.nodes.length} nodes
        </span>
      </div>
      <svg class='topology' viewBox={`0 0 ${SIZE} ${SIZE}`} role='img' aria-label='Mesh topology'>
        {layout.edges.map(([a, b]) => {
          const p = layout.pos.get(a)
          const q = layout.pos.get(b)
          if (p === undefined || q === undefined) return null
          const browser = a === layout.self || b === layout.self
          return (
            <line
              key={`${a}|${b}`}
              x1={p.x}
              y1={p.y}
              x2={q.x}
              y2={q.y}
              class={browser ? 'edge browser' : 'edge'}
            />
          )
        })}
        {layout.nodes.map(n => {
          const p = layout.pos.get(n.peerId)
          if (p === undefined) return null
          const h = health(n).health
          const cls = n.stale ? 'stale' : h === 'failing' || h === 'degraded' ? 'failing' : 'online'
          const angle = Math.atan2(p.y - SIZE / 2, p.x - SIZE / 2)
          const lx = p.x + Math.cos(angle) * 14
          const ly = p.y + Math.sin(angle) * 14
          return (
            <g
              key={n.peerId}
              class='vertex'
              onClick={() => navigate({ view: 'node', node: n.name })}
              data-node={n.name}
            >
              <title>{`${n.name} (${Object.entries(n.labels)
                .map(([k, v]) => `${k}=${v}`)
                .join(', ')}) — ${n.peers.length} peers`}</title>
              <circle cx={p.x} cy={p.y} r={small ? 6 : 10} class={`node ${cls}`} />
              {!small && (
                <text
                  x={lx}
                  y={ly}
                  class={small ? 'vlabel small' : 'vlabel'}
                  text-anchor={Math.cos(angle) < 0 ? 'end' : 'start'}
                  dominant-baseline='middle'
                >
                  {n.name}
                </text>
              )}
            </g>
          )
        })}
        {small &&
          layout.siteLabels.map(l => (
            <text
              key={l.site}
              x={l.x}
              y={l.y}
              class='site-label'
              text-anchor={l.anchor}
              dominant-baseline='middle'
            >
              {l.site} ({l.count})
            </text>
          ))}
        {layout.self !== undefined && (
          <g>
            <circle cx={SIZE / 2} cy={SIZE / 2} r={12} class='node self' />
            <text x={SIZE / 2} y={SIZE / 2 + 26} class='vlabel' text-anchor='middle'>
              this browser
            </text>
          </g>
        )}
      </svg>
    </section>
  )
}
