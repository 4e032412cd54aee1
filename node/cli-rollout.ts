/**
 * The CLI side of staged rollouts: what `rhizome apply` does with a fleet file's rollouts (fix
 * each new one's eligible nodes at its start; keep those of running ones), and `rhizome rollout
 * list|status|pause|resume|abort`, which read the daemon's view (GET /api/rollouts) and sign the
 * state changes with the operator's key.
 */
import type { Command } from 'commander'
import { DEVICES_DOC, enrolledDevices } from '../crdt/devices.ts'
import { freezeRollouts, RolloutState } from '../crdt/rollout.ts'
import { notHealthyYet } from '../crdt/rollout-gate.ts'
import { Replica } from '../crdt/replica.ts'
import { DaemonClient } from './daemon-client.ts'
import { UsageError } from './errors.ts'
import type { RolloutDetail, RolloutSummary } from './rollout-routes.ts'
import {
  daemonOption,
  EXIT_HELP,
  keyOption,
  loadSigningKey,
  passphraseOption,
  say,
  sayList
} from './cli-common.ts'
import type { FleetDocuments } from '../crdt/fleet-yaml.ts'

/** Enrolled devices' labels by key, from a replica's trust chain and devices document. */
async function enrolledLabels(replica: Replica): Promise<Map<string, Record<string, string>>> {
  const devices = replica.documentIds().includes(DEVICES_DOC)
    ? (await replica.open(DEVICES_DOC)).value
    : undefined
  return new Map(
    [...enrolledDevices(replica.trust, devices)].map(([key, d]) => [key, d.labels] as const)
  )
}

/**
 * The fleet file as `apply` writes it: every document's rollouts frozen (see freezeRollouts).
 * Returns notes for the command to print: rollouts that start, rollouts removed.
 */
export async function freezeForApply(
  desired: FleetDocuments,
  current: FleetDocuments,
  replica: Replica,
  now = new Date()
): Promise<{ docs: FleetDocuments; notes: string[] }> {
  const nodes = await enrolledLabels(replica)
  const docs: FleetDocuments = {}
  const notes: string[] = []
  for (const [id, doc] of Object.entries(desired)) {
    const r = freezeRollouts(id, doc, current[id], nodes, now)
    docs[id] = r.doc
    for (const s of r.started) notes.push(`rollout ${s.id} starts: ${s.eligible} eligible node(s)`)
    for (const gone of r.removed) {
      notes.push(
        `rollout ${gone} is removed: nodes that switched to it go back to the document's own config (put its change into the document to keep it)`
      )
    }
  }
  return { docs, notes }
}

// ---- rhizome rollout … -------------------------------------------------------------------------

const time = (ms: number | undefined): string =>
  ms === undefined ? '?' : new Date(ms).toISOString().slice(11, 19)

const label = (n: { key: string; name: string | null }): string => n.name ?? n.key.slice(0, 12)

function waveKind(w: RolloutSummary['waves'][number]): string {
  if (w.canary === null) return `${w.percent ?? '?'} %`
  const sel = Object.entries(w.canary)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join('|') : v}`)
    .join(',')
  return `canary ${sel}`
}

function waveState(w: RolloutSummary['waves'][number], state: string): string {
  if (w.passed) return 'through'
  if (state === 'aborted') return 'aborted'
  return w.open ? 'open' : 'waiting'
}

/** The whole rollout, for a person: waves, who switched, soaked, failed, is waited for. */
export function rolloutLines(d: RolloutDetail): string[] {
  const change = JSON.stringify(d.change)
  const out = [
    `${d.id}  ${d.state}${d.abortReason === null ? '' : ` (${d.abortReason})`}`,
    `  started ${d.startedAt ?? 'not yet (eligible nodes not frozen: apply it with rhizome apply)'}, ${d.eligible} eligible node(s)`,
    `  change ${change.length > 160 ? change.slice(0, 157) + '...' : change}`,
    `  wave  ${'kind'.padEnd(24)} nodes  switched  soaked  failed  needed`
  ]
  for (const w of d.waves) {
    out.push(
      `  ${String(w.index).padEnd(4)}  ${waveKind(w).padEnd(24)} ${String(w.members).padStart(5)}  ${String(w.switched).padStart(8)}  ${String(w.soaked).padStart(6)}  ${String(w.failed).padStart(6)}  ${String(w.needed).padStart(6)}  ${waveState(w, d.state)}`
    )
  }
  const by = (phase: string) => d.nodes.filter(n => n.phase === phase)
  const list = (xs: string[]): string => (xs.length === 0 ? '-' : xs.join(', '))
  // Switched and healthy (soaking), or switched and not healthy yet (its probe has not passed).
  const soaking = by('updating').filter(n => !notHealthyYet(n))
  const starting = by('updating').filter(n => notHealthyYet(n))
  out.push(
    `  switched     ${list(d.nodes.filter(n => n.report?.switchedAt !== undefined).map(label))}`,
    `  healthy      ${list(by('soaked').map(n => `${label(n)} (soaked ${time(n.report?.soakedAt)})`))}`,
    `  soaking      ${list(soaking.map(n => `${label(n)} (since ${time(n.report?.healthySince)})`))}`,
    `  starting     ${list(starting.map(n => `${label(n)} (switched ${time(n.report?.switchedAt)}, not healthy yet)`))}`,
    `  rolled back  ${list(by('failed').map(n => `${label(n)}: ${n.report?.reason ?? 'failed'}`))}`,
    `  went back    ${list(by('reverted').map(label))}`,
    `  waiting for  ${list(d.waitingFor.map(w => `${label(w)} (wave ${w.wave}: ${w.why})`))}`
  )
  if (d.stuck) {
    out.push(
      '  stuck: too many nodes of the open wave failed or went back for it to get through; abort it (rhizome rollout abort) or lower its threshold'
    )
  }
  out.push(
    `  this daemon's node: ${d.self.run === 'new' ? 'runs the new version' : 'runs the old version'} (${d.self.why})`
  )
  return out
}

async function cmdList(opts: { daemon: string; json?: boolean }): Promise<void> {
  const all = await new DaemonClient(opts.daemon).json<RolloutSummary[]>('/api/rollouts')
  sayList(all, opts.json, 'no rollouts in the desired config', r => {
    const passed = r.waves.filter(w => w.passed).length
    return `${r.id.padEnd(28)} ${r.state.padEnd(11)} waves ${passed}/${r.waves.length}  switched ${r.executed}  failed ${r.failed}  waiting for ${r.waiting}`
  })
}

const detailOf = (client: DaemonClient, name: string): Promise<RolloutDetail> =>
  client.json<RolloutDetail>(`/api/rollouts/${encodeURIComponent(name)}`)

async function cmdStatus(name: string, opts: { daemon: string; json?: boolean }): Promise<void> {
  const d = await detailOf(new DaemonClient(opts.daemon), name)
  if (opts.json === true) say(JSON.stringify(d, null, 2))
  else for (const l of rolloutLines(d)) say(l)
}

/** Sign the change that sets a rollout's state, after checking the move makes sense. */
async function setState(
  want: RolloutState,
  name: string,
  opts: { daemon: string; key?: string; passphraseFile?: string }
): Promise<void> {
  const client = new DaemonClient(opts.daemon)
  const d = await detailOf(client, name)
  if (d.state === 'aborted') {
    if (want === RolloutState.Aborted) {
      say(`${d.id} is already aborted (${d.abortReason ?? 'aborted'})`)
      return
    }
    throw new UsageError(
      `${d.id} is aborted (${d.abortReason ?? 'aborted'}) and an aborted rollout stays aborted on every node; to try again, give the rollout a new name or a new change in the fleet file`
    )
  }
  if (d.state === 'completed') {
    throw new UsageError(
      `${d.id} has completed: its change is what its nodes run. To take it back, remove the rollout from the fleet file (its nodes go back to the document's own config) or put the old version in a new rollout`
    )
  }
  const replica = await client.localReplica([d.doc])
  try {
    const doc = await replica.open<{ rollouts?: Record<string, { state?: string }> }>(d.doc)
    const held = doc.value.rollouts?.[d.name]
    if (held === undefined) {
      throw new UsageError(`document "${d.doc}" holds no rollout "${d.name}" any more`)
    }
    if ((held.state ?? RolloutState.Running) === want) {
      say(`${d.id} is already ${want}`)
      return
    }
    const signer = Replica.signer(await loadSigningKey(opts))
    const batch = await doc.change(
      signer,
      x => {
        x.rollouts![d.name]!.state = want
      },
      `rollout ${want === RolloutState.Running ? 'resume' : want === RolloutState.Paused ? 'pause' : 'abort'} ${d.name}`
    )
    if (batch === undefined) return
    const r = await client.postBatch(batch)
    say(
      `${d.id}: ${want}; ${d.doc} ${r.status}, revision ${r.heads.map(h => h.slice(0, 12)).join(',')}`
    )
  } finally {
    await replica.close()
  }
}

/** `rhizome rollout list|status|pause|resume|abort` on the program. */
export function registerRolloutCommands(p: Command): void {
  const r = p
    .command('rollout')
    .description(
      'staged rollouts: progress by wave, who is healthy or waited for; pause, resume, abort'
    )
  r.command('list')
    .description('every rollout in the desired config: state, waves through, switched, failed')
    .option('--json', 'machine-readable output (GET /api/rollouts)')
    .addOption(daemonOption())
    .addHelpText('after', EXIT_HELP)
    .action(cmdList)
  r.command('status')
    .description(
      "one rollout as this daemon's evidence shows it: waves, who switched, who is healthy, who rolled back and why, who is waited for"
    )
    .argument('<name>', 'the rollout: its name, or <document>:<name>')
    .option('--json', 'machine-readable output (GET /api/rollouts/:id)')
    .addOption(daemonOption())
    .addHelpText('after', EXIT_HELP)
    .action(cmdStatus)
  const verbs: Array<[string, RolloutState, string]> = [
    [
      'pause',
      RolloutState.Paused,
      'sign a change that pauses a rollout: no more nodes switch; switched ones stay'
    ],
    ['resume', RolloutState.Running, 'sign a change that resumes a paused rollout'],
    [
      'abort',
      RolloutState.Aborted,
      'sign a change that aborts a rollout for good: every switched node goes back'
    ]
  ]
  for (const [verb, state, description] of verbs) {
    r.command(verb)
      .description(description)
      .argument('<name>', 'the rollout: its name, or <document>:<name>')
      .addOption(keyOption())
      .addOption(passphraseOption())
      .addOption(daemonOption())
      .addHelpText('after', EXIT_HELP)
      .action((name: string, opts: { daemon: string; key?: string; passphraseFile?: string }) =>
        setState(state, name, opts)
      )
  }
}
