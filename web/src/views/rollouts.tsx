/**
 * Rollouts: every staged rollout in the desired config, its progress by wave and the facts
 * behind it (who switched, who is healthy, who rolled back and why, who is waited for), judged
 * in this page from the same signed status records and the same pure functions the daemons use
 * (crdt/rollout-gate.ts), so the page agrees with them. Pause, resume and abort are changes to
 * the rollout's `state`, signed in this page with the unlocked key and published like any edit.
 */
import { useMemo, useState } from 'preact/hooks'
import type { FleetSnapshot, FleetSource } from '../fleet-source.ts'
import { rolloutsOf, RolloutState, type RolloutSpec } from '../../../crdt/rollout.ts'
import { planWaves } from '../../../crdt/rollout-waves.ts'
import {
  evidenceFrom,
  notHealthyYet,
  viewRollout,
  type RolloutView
} from '../../../crdt/rollout-gate.ts'
import { enrolledNodes } from '../node-status.ts'
import { ErrorAlert, TableHead } from './parts.tsx'

const clock = (ms: number | undefined): string =>
  ms === undefined ? '?' : new Date(ms).toLocaleTimeString()

function waveKind(spec: RolloutSpec, i: number): string {
  const w = spec.waves[i]!
  if (w.canary === undefined) return `${w.percent} %`
  return `canary ${Object.entries(w.canary)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('|') : v}`)
    .join(', ')}`
}

const STATE_BADGE: Record<RolloutView['state'], string> = {
  'not-started': 'sync-behind',
  running: 'health-degraded',
  paused: 'sync-behind',
  aborted: 'health-failing',
  completed: 'health-healthy'
}

function RolloutCard({
  spec,
  view,
  devices,
  source,
  snap,
  onNeedKey
}: {
  spec: RolloutSpec
  view: RolloutView
  devices: Map<string, { name: string; labels: Record<string, string> }>
  source: FleetSource
  snap: FleetSnapshot
  onNeedKey: () => void
}) {
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | undefined>()
  const name = (key: string): string => devices.get(key)?.name ?? `${key.slice(0, 12)}…`
  const set = async (state: RolloutState, verb: string): Promise<void> => {
    if (snap.signer === undefined) {
      onNeedKey()
      setError('Unlock a key file first: the change is signed in this page before it is published.')
      return
    }
    if (
      state === RolloutState.Aborted &&
      !confirm(`Abort ${spec.id}? Every node that switched goes back, and it stays aborted.`)
    ) {
      return
    }
    const doc = snap.docs.find(d => d.id === spec.docId)
    const held = (doc?.value.rollouts as Record<string, Record<string, unknown>> | undefined)?.[
      spec.name
    ]
    if (doc === undefined || held === undefined) {
      setError(`“${spec.docId}” no longer holds this rollout.`)
      return
    }
    const value = structuredClone(doc.value)
    ;(value.rollouts as Record<string, Record<string, unknown>>)[spec.name] = { ...held, state }
    setBusy(true)
    try {
      await source.publish(spec.docId, value, `rollout ${verb} ${spec.name}`)
      setError(undefined)
    } catch (err) {
      setError((err as Error).message)
    } finally {
      setBusy(false)
    }
  }
  const by = (phase: string) => view.nodes.filter(n => n.phase === phase)
  const open = view.state === 'running' || view.state === 'paused' || view.state === 'not-started'
  const actions = [
    { verb: 'pause', label: 'Pause', to: RolloutState.Paused, shown: view.state === 'running' },
    { verb: 'resume', label: 'Resume', to: RolloutState.Running, shown: view.state === 'paused' },
    { verb: 'abort', label: 'Abort', to: RolloutState.Aborted, shown: open }
  ]
  return (
    <div class='panel rollout' data-testid={`rollout-${spec.id}`}>
      <div class='detail-head'>
        <h3>{spec.id}</h3>
        <span class={`badge ${STATE_BADGE[view.state]}`} data-testid='rollout-state'>
          {view.state}
        </span>
        <span class='muted small'>
          {spec.eligible?.length ?? 0} eligible · started {spec.startedAt ?? 'not yet'}
        </span>
        <div class='actions'>
          {actions
            .filter(a => a.shown)
            .map(a => (
              <button
                key={a.verb}
                class='btn small'
                disabled={busy}
                onClick={() => void set(a.to, a.verb)}
                data-testid={`rollout-${a.verb}`}
              >
                {a.label}
              </button>
            ))}
        </div>
      </div>
      {view.abortReason !== undefined && <div class='alert bad'>Aborted: {view.abortReason}</div>}
      {view.stuck && (
        <div class='alert warn'>
          Stuck: too many nodes of the open wave failed or went back for it to get through. Abort
          it, or lower its threshold.
        </div>
      )}
      <ErrorAlert message={error} />
      <p class='muted mono small'>change {JSON.stringify(spec.change)}</p>
      <table class='grid compact' data-testid='rollout-waves'>
        <TableHead
          columns={['wave', 'nodes', 'progress', 'switched', 'soaked', 'failed', 'needed', '']}
        />
        <tbody>
          {view.waves.map(w => (
            <tr key={w.index} data-testid={`wave-${w.index}`}>
              <td>
                {w.index} · {waveKind(spec, w.index)}
              </td>
              <td class='num-cell'>{w.members.length}</td>
              <td>
                <div class='bar' title={`${w.soaked} of ${w.members.length} soaked`}>
                  <div
                    class='bar-fill'
                    style={{
                      width: `${w.members.length === 0 ? 100 : (100 * w.soaked) / w.members.length}%`
                    }}
                  />
                </div>
              </td>
              <td class='num-cell'>{w.switched}</td>
              <td class='num-cell'>{w.soaked}</td>
              <td class='num-cell'>{w.failed}</td>
              <td class='num-cell'>{w.needed}</td>
              <td>
                {w.passed ? (
                  <span class='badge health-healthy'>through</span>
                ) : view.state === 'aborted' ? (
                  <span class='badge health-failing'>aborted</span>
                ) : w.open ? (
                  <span class='badge health-degraded'>open</span>
                ) : (
                  <span class='muted'>waiting</span>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <dl class='facts'>
        <dt>Healthy</dt>
        <dd data-testid='rollout-soaked'>
          {by('soaked')
            .map(n => name(n.key))
            .join(', ') || '—'}
        </dd>
        <dt>Soaking</dt>
        <dd>
          {by('updating')
            .filter(n => !notHealthyYet(n))
            .map(n => `${name(n.key)} (since ${clock(n.report?.healthySince)})`)
            .join(', ') || '—'}
        </dd>
        <dt>Starting</dt>
        <dd data-testid='rollout-starting'>
          {by('updating')
            .filter(n => notHealthyYet(n))
            .map(n => `${name(n.key)} (switched ${clock(n.report?.switchedAt)}, not healthy yet)`)
            .join(', ') || '—'}
        </dd>
        <dt>Rolled back</dt>
        <dd data-testid='rollout-failed'>
          {by('failed')
            .map(n => `${name(n.key)}: ${n.report?.reason ?? 'failed'}`)
            .join('; ') || '—'}
        </dd>
        <dt>Went back</dt>
        <dd data-testid='rollout-reverted'>
          {by('reverted')
            .map(n => name(n.key))
            .join(', ') || '—'}
        </dd>
        <dt>Waiting for</dt>
        <dd data-testid='rollout-waiting'>
          {view.waitingFor.map(w => `${name(w.key)} (${w.why})`).join('; ') || '—'}
        </dd>
      </dl>
    </div>
  )
}

export function Rollouts({
  source,
  snap,
  onNeedKey
}: {
  source: FleetSource
  snap: FleetSnapshot
  onNeedKey: () => void
}) {
  const devices = useMemo(() => enrolledNodes(snap.nodes), [snap.nodes])
  const judged = useMemo(() => {
    const { rollouts, errors } = rolloutsOf(snap.docs.map(d => ({ id: d.id, value: d.value })))
    const records = snap.nodes.map(n => ({ node: n.node, body: n }))
    return {
      errors,
      rollouts: rollouts.map(spec => {
        const plan = planWaves(spec, k => devices.get(k)?.labels)
        return { spec, view: viewRollout(spec, plan, evidenceFrom(spec, records)) }
      })
    }
  }, [snap.docs, snap.nodes, devices])
  return (
    <section data-testid='rollouts'>
      {judged.errors.map(e => (
        <div class='alert warn' key={e}>
          {e}
        </div>
      ))}
      {judged.rollouts.length === 0 && (
        <p class='muted'>
          No rollouts in the desired config. A rollout is part of a document (`rollouts:` in the
          fleet file, published with <code>rhizome apply</code>).
        </p>
      )}
      {judged.rollouts.map(({ spec, view }) => (
        <RolloutCard
          key={spec.id}
          spec={spec}
          view={view}
          devices={devices}
          source={source}
          snap={snap}
          onNeedKey={onNeedKey}
        />
      ))}
    </section>
  )
}
