/**
 * A node's artifacts (models, binaries, archives its config references): complete, or how far
 * the fetch is, from how many peers, how fast, and when it should be done.
 */
import type { ArtifactStatus } from '../../../crdt/fleet-status.ts'
import { TableHead } from './parts.tsx'

const mib = (n: number): string => `${(n / 1048576).toFixed(n < 10 * 1048576 ? 1 : 0)} MiB`

export function ArtifactsPanel({
  artifacts
}: {
  artifacts: Record<string, ArtifactStatus> | undefined
}) {
  const list = Object.entries(artifacts ?? {})
  if (list.length === 0) return null
  return (
    <>
      <h3>Artifacts</h3>
      <table class='grid compact' data-testid='artifacts'>
        <TableHead columns={['Artifact', 'State', 'Progress', 'Peers', 'Rate', 'ETA']} />
        <tbody>
          {list.map(([digest, a]) => {
            const pct =
              a.size === undefined ? 0 : a.size === 0 ? 100 : Math.floor((100 * a.held) / a.size)
            return (
              <tr key={digest} title={a.reason ?? digest}>
                <td>
                  {a.name ?? ''} <code class='muted small'>{digest.slice(7, 19)}</code>
                </td>
                <td>
                  <span class={`badge art-${a.state}`}>{a.state}</span>
                </td>
                <td>
                  <progress max={100} value={pct} /> {pct}%
                  {a.size === undefined ? '' : ` of ${mib(a.size)}`}
                </td>
                <td class='num-cell'>{a.state === 'fetching' ? a.peers : '—'}</td>
                <td class='num-cell'>{a.rate > 0 ? `${mib(a.rate)}/s` : '—'}</td>
                <td class='num-cell'>{a.eta === undefined ? '—' : `${a.eta} s`}</td>
              </tr>
            )
          })}
        </tbody>
      </table>
    </>
  )
}
