/**
 * One node: its effective config (computed here, with the same function every daemon uses, and
 * the rollouts it reports running on top: crdt/node-config.ts),
 * workloads, recent log lines, peers and revisions.
 */
import { useMemo } from 'preact/hooks'
import { stringify } from 'yaml'
import { nodeConfig } from '../../../crdt/node-config.ts'
import type { FleetSnapshot } from '../fleet-source.ts'
import { ago, health, healthLabel, shortHeads } from '../../../crdt/fleet-status.ts'
import { putBacks, seenLabel, syncState } from '../node-status.ts'
import { navigate } from '../navigation.ts'
import { ArtifactsPanel } from './artifacts.tsx'
import { TableHead } from './parts.tsx'

export function NodeDetail({
  snap,
  now,
  nodeName
}: {
  snap: FleetSnapshot
  now: number
  nodeName?: string
}) {
  const n = snap.nodes.find(x => x.name === nodeName)
  const computed = useMemo(
    () =>
      n === undefined
        ? { yaml: '', rollouts: [] }
        : (() => {
            const c = nodeConfig(snap.docs, { ...n, key: n.node })
            return { yaml: stringify(c.config, { lineWidth: 0 }), rollouts: c.rollouts }
          })(),
    [n?.name, n?.labels, n?.rollouts, snap.docs]
  )
  const effective = computed.yaml
  const byPeer = useMemo(() => new Map(snap.nodes.map(x => [x.peerId, x])), [snap.nodes])
  if (n === undefined) {
    return (
      <section class='empty'>
        <h2>No node named “{nodeName}”</h2>
        <p>
          It has not reported a status record to this browser.{' '}
          <a
            href='#view=overview'
            onClick={e => {
              e.preventDefault()
              navigate({ view: 'overview' })
            }}
          >
            Back to the fleet
          </a>
          .
        </p>
      </section>
    )
  }
  const h = health(n)
  const back = putBacks(n, now)
  const sync = syncState(n, snap.docs)
  return (
    <section data-testid='node-detail'>
      <div class='crumbs'>
        <a
          href='#view=overview'
          onClick={e => {
            e.preventDefault()
            navigate({ view: 'overview' })
          }}
        >
          Fleet
        </a>{' '}
        / {n.name}
      </div>
      <div class='detail-head'>
        <h2>{n.name}</h2>
        <span class={n.stale ? 'badge stale' : 'badge online'} data-testid='detail-state'>
          {seenLabel(n, now)}
        </span>
        <span class={`badge health-${h.health}`} data-testid='detail-health'>
          {healthLabel(h)}
        </span>
        <span class={`badge sync-${sync}`}>
          {sync === 'in-sync' ? 'applied latest' : sync === 'behind' ? 'behind latest' : sync}
        </span>
        <div class='labels'>
          {Object.entries(n.labels).map(([k, v]) => (
            <span class='label' key={k}>
              {k}={v}
            </span>
          ))}
        </div>
      </div>
      <p class='muted mono small'>
        peer {n.peerId} · key {n.node.slice(0, 16)}… · up since{' '}
        {n.startedAt > 0 ? new Date(n.startedAt).toLocaleString() : 'unknown'}
      </p>
      {n.errors.length > 0 && (
        <div class='alert bad'>
          <strong>Config problems on this node:</strong>
          <ul>
            {n.errors.map(e => (
              <li key={e}>{e}</li>
            ))}
          </ul>
        </div>
      )}
      {back.length > 0 && (
        <div class='alert warn' data-testid='put-back'>
          Changed by hand and put back:{' '}
          {back
            .map(p =>
              p.at === null ? p.path : `${p.path} at ${new Date(p.at).toLocaleTimeString()}`
            )
            .join(', ')}
        </div>
      )}
      {n.neverSeen === true && (
        <div class='alert warn' data-testid='never-seen'>
          Enrolled, but no status record of this node has reached this page: it has been down since
          this page connected, or has never started. The config below is what it will run.
        </div>
      )}
      {n.freshness?.state === 'stale' && (
        <div class='alert warn' data-testid='node-frozen'>
          Possibly kept on old state:{' '}
          {n.freshness.reason === 'behind'
            ? 'a freeze beacon names changes this node does not have, and its peers do not give them to it.'
            : `its newest freeze beacon expired ${ago(n.freshness.expires, now)} and no peer brought a newer one.`}{' '}
          It keeps running its last valid config.
        </div>
      )}
      <div class='cols'>
        <div class='panel'>
          <h3>Workloads</h3>
          {Object.keys(n.workloads).length === 0 ? (
            <p class='muted'>No workloads in this node's effective config.</p>
          ) : (
            <table class='grid compact'>
              <TableHead columns={['Name', 'State', 'Health', 'Restarts', 'Version', 'PID']} />
              <tbody>
                {Object.entries(n.workloads).map(([name, w]) => (
                  <tr key={name}>
                    <td>{name}</td>
                    <td>
                      <span class={`badge wl-${w.state}`}>{w.state}</span>
                    </td>
                    <td>
                      {w.healthy === null ? (
                        <span class='muted'>no probe</span>
                      ) : w.healthy ? (
                        <span class='badge health-healthy'>healthy</span>
                      ) : (
                        <span class='badge health-failing'>failing</span>
                      )}
                    </td>
                    <td class='num-cell'>{w.restarts}</td>
                    <td>{w.version ?? '—'}</td>
                    <td class='num-cell'>{w.pid ?? '—'}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          <ArtifactsPanel artifacts={n.artifacts} />
          <h3>Recent log lines</h3>
          {Object.entries(n.workloads).every(([, w]) => w.log.length === 0) ? (
            <p class='muted'>No log lines reported.</p>
          ) : (
            Object.entries(n.workloads).map(
              ([name, w]) =>
                w.log.length > 0 && (
                  <div key={name}>
                    <div class='log-title'>{name}</div>
                    <pre class='log'>{w.log.join('\n')}</pre>
                  </div>
                )
            )
          )}
          <h3>Revisions</h3>
          <table class='grid compact'>
            <TableHead columns={['Document', 'Latest here', 'Node holds', 'Node applied']} />
            <tbody>
              {snap.docs.map(d => (
                <tr key={d.id}>
                  <td>{d.id}</td>
                  <td>
                    <code>{shortHeads(d.heads)}</code>
                  </td>
                  <td>
                    <code>{shortHeads(n.revision[d.id])}</code>
                  </td>
                  <td>
                    <code>{shortHeads(n.applied[d.id])}</code>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          <h3>Peers ({n.peers.length})</h3>
          {n.peers.length === 0 ? (
            <p class='muted'>This node reports no connected peers.</p>
          ) : (
            <ul class='peer-list'>
              {n.peers.map(p => {
                const other = byPeer.get(p)
                return (
                  <li key={p}>
                    {other !== undefined ? (
                      <a
                        href={`#view=node&node=${encodeURIComponent(other.name)}`}
                        onClick={e => {
                          e.preventDefault()
                          navigate({ view: 'node', node: other.name })
                        }}
                      >
                        {other.name}
                      </a>
                    ) : p === snap.connection.selfPeerId ? (
                      <span>this browser</span>
                    ) : (
                      <span class='muted'>unknown peer</span>
                    )}{' '}
                    <code class='muted small'>…{p.slice(-8)}</code>
                  </li>
                )
              })}
            </ul>
          )}
        </div>
        <div class='panel'>
          <h3>Effective config</h3>
          <p class='muted small'>
            Computed in this page from the desired config it holds and this node's name and labels —
            the same function the daemon runs
            {computed.rollouts.length > 0
              ? `, with the rollouts it reports running on top: ${computed.rollouts.join(', ')}`
              : ''}
            .
          </p>
          {n.tryMode?.rolledBack !== undefined && (
            <div class='alert warn'>
              Try mode rolled back config <code>{n.tryMode.rolledBack.digest.slice(0, 12)}</code> (
              {n.tryMode.rolledBack.reason}): the node runs its last known-good config, not this
              one.
            </div>
          )}
          <pre class='yaml' data-testid='effective-config'>
            {effective.trim() === '{}' ? '# nothing applies to this node' : effective}
          </pre>
        </div>
      </div>
    </section>
  )
}
