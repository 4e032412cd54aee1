/**
 * `rhizome describe NODE`: one node in full, read from any daemon. What the node reports about
 * itself comes from its signed status record, which every daemon holds (`GET /api/status`); its
 * effective config is computed here from the documents the daemon holds, the way the node's
 * own reconciler computes it (node/reconciler.ts `configDocuments`, crdt/node-config.ts), with
 * the change of every rollout the node reports running layered on top. Also the status lines `rhizome status` shares with it: files put
 * back and config errors, short.
 */
import type { Command } from 'commander'
import { stringify } from 'yaml'
import type { ConfigObject } from '../crdt/effective-config.ts'
import { nodeConfig } from '../crdt/node-config.ts'
import {
  ago,
  recentPutBacks,
  shortHeads,
  SYNC_LABEL,
  type FleetNode,
  type PutBack,
  type StatusBody,
  type FleetStatus
} from '../crdt/fleet-status.ts'
import { UnknownNodeError } from '../mesh/errors.ts'
import { artifactLines } from './cli-artifacts.ts'
import { daemonOption, say } from './cli-common.ts'
import { DaemonClient } from './daemon-client.ts'
import { UsageError } from './errors.ts'
import { configDocuments } from './reconciler.ts'

/** A key prefix must be at least this long to name a node. */
const MIN_KEY_PREFIX = 8
/** `rhizome status` shows this many errors of a node, each cut to ERROR_CHARS. */
const STATUS_ERRORS = 3
const ERROR_CHARS = 120

/** A time of day on the reader's clock, HH:MM:SS. */
export function clock(ms: number): string {
  return new Date(ms).toTimeString().slice(0, 8)
}

/** "put back at 14:02:11: /etc/a, /etc/b" (paths put back in the same second together). */
export function putBackText(list: readonly PutBack[]): string {
  const byTime = new Map<string, string[]>()
  for (const p of list) {
    const when = p.at === null ? 'put back' : `put back at ${clock(p.at)}`
    byTime.set(when, [...(byTime.get(when) ?? []), p.path])
  }
  return [...byTime].map(([when, paths]) => `${when}: ${paths.join(', ')}`).join('; ')
}

const cut = (s: string, n: number): string => (s.length <= n ? s : s.slice(0, n - 1) + '…')

/** The lines under a node in `rhizome status`: its config errors, short. */
export function errorLines(n: FleetNode): string[] {
  const errors = n.status?.errors ?? []
  const out = errors.slice(0, STATUS_ERRORS).map(e => `error: ${cut(e, ERROR_CHARS)}`)
  if (errors.length > STATUS_ERRORS) {
    out.push(`… ${errors.length - STATUS_ERRORS} more: rhizome describe ${n.name}`)
  }
  return out
}

/**
 * The node `ref` names among `nodes`: its name, its PeerId, or a prefix of its key (at least
 * MIN_KEY_PREFIX hex characters). Throws UnknownNodeError (exit 1) when none does, UsageError
 * when several do.
 */
export function findNode(nodes: readonly FleetNode[], ref: string): FleetNode {
  const r = ref.trim()
  const lower = r.toLowerCase()
  const byKey = /^[0-9a-f]+$/.test(lower) && lower.length >= MIN_KEY_PREFIX
  let found = nodes.filter(n => n.name === r)
  if (found.length === 0) found = nodes.filter(n => n.peerId === r)
  if (found.length === 0 && byKey) found = nodes.filter(n => n.key.startsWith(lower))
  if (found.length === 1) return found[0] as FleetNode
  if (found.length > 1) {
    throw new UsageError(
      `"${r}" names ${found.length} nodes (${found.map(n => `${n.name} ${n.key.slice(0, 12)}`).join(', ')}); give more of the key`
    )
  }
  const names = nodes.map(n => n.name)
  throw new UnknownNodeError(
    `no node is called "${r}" (a name, PeerId or a key prefix of at least ${MIN_KEY_PREFIX} hex characters); this daemon knows ${names.slice(0, 20).join(', ') || 'none'}${names.length > 20 ? ', …' : ''} (rhizome status lists them)`
  )
}

/** Everything `rhizome describe --json` prints. */
export interface NodeDescription {
  name: string
  key: string
  peerId: string
  labels: Record<string, string>
  enrolled: boolean
  /** The PeerId of the daemon this was read through. */
  via: string
  /** It is that daemon. */
  self: boolean
  online: boolean
  /** When its newest status record arrived (the daemon's clock); null when none has. */
  lastSeen: number | null
  /** No newer record came within the stale period (null: none seen). */
  recordStale: boolean | null
  sync: FleetNode['sync']
  upToDate: boolean | null
  /** The node's own report, as it signed it; null when none has been seen. */
  status: StatusBody | null
  /** Files it put back within DRIFT_SHOWN_MS, newest first (the reader's clock). */
  putBack: PutBack[]
  /** Rollouts whose change it runs, in the order it layers them. */
  rolloutsApplied: string[]
  /** Its effective config, computed from the documents the daemon holds. */
  config: ConfigObject
  /**
   * Documents that do not reach it whatever its labels say: an operator who wrote them moved
   * its labels into the operator's own scope (crdt/devices.ts `outOfReach`).
   */
  outOfReach: string[]
  /** Problems found computing it here (rollout specs that do not parse). */
  configErrors: string[]
}

export async function describeNode(client: DaemonClient, ref: string): Promise<NodeDescription> {
  const fleet = await client.json<FleetStatus>('/api/status')
  const n = findNode(fleet.nodes, ref)
  const docs = await configDocuments(await client.localReplica())
  const { config, rollouts, errors } = nodeConfig(docs, {
    name: n.name,
    labels: n.labels,
    key: n.key,
    rollouts: n.status?.rollouts
  })
  return {
    name: n.name,
    key: n.key,
    peerId: n.peerId,
    labels: n.labels,
    enrolled: n.enrolled,
    via: fleet.self,
    self: n.self,
    online: n.online,
    lastSeen: n.lastSeen,
    recordStale: n.stale,
    sync: n.sync,
    upToDate: n.upToDate,
    status: n.status,
    putBack: recentPutBacks(n, Date.now()),
    rolloutsApplied: rollouts,
    config,
    outOfReach: docs.filter(d => d.unreachable?.includes(n.key) === true).map(d => d.id),
    configErrors: errors
  }
}

/** `rhizome describe` for people. */
export function describeLines(d: NodeDescription, now: number): string[] {
  const s = d.status
  const out: string[] = []
  const row = (k: string, v: string): void => {
    out.push(`${k.padEnd(10)} ${v}`)
  }
  const labels = Object.entries(d.labels).map(([k, v]) => `${k}=${v}`)
  row('node', `${d.name}${d.enrolled ? '' : ' (not enrolled)'}${d.self ? ' (this daemon)' : ''}`)
  row('key', d.key)
  row('peer id', d.peerId)
  row('labels', labels.join(' ') || '(none)')
  if (d.outOfReach.length > 0) {
    row(
      'scope',
      `not reached by ${d.outOfReach.join(', ')}: an operator who wrote them moved this node's labels into its own scope (only an admin may do that)`
    )
  }
  const seen =
    d.lastSeen === null
      ? 'never heard from'
      : `${d.online ? 'online' : 'down'}, last record ${ago(d.lastSeen, now)} (${clock(d.lastSeen)})${d.recordStale === true ? ', stale: no newer record came in time' : ''}`
  row('seen', d.self ? 'online (the daemon answering)' : seen)
  if (s === null) {
    row('status', 'no status record from this node yet: it has not been online since enrolment')
  } else {
    row('started', `${clock(s.startedAt)} (${ago(s.startedAt, now)})`)
    const applied = Object.entries(s.applied)
      .map(([id, h]) => `${id}@${shortHeads(h)}`)
      .join(' ')
    row('sync', `${SYNC_LABEL[d.sync]}; applied ${applied || '(nothing yet)'}`)
    if (s.freshness !== undefined) {
      row(
        'freshness',
        s.freshness.state === 'fresh'
          ? `fresh (beacon until ${clock(s.freshness.expires)})`
          : `STALE: ${s.freshness.reason === 'behind' ? 'its peers withhold what was issued' : 'its newest beacon expired'}`
      )
    }
    row('peers', String(s.peers.length))
  }
  out.push('', 'workloads')
  const ws = Object.entries(s?.workloads ?? {})
  if (ws.length === 0) out.push('  (none)')
  for (const [name, w] of ws) {
    const health = w.healthy === null ? '' : w.healthy ? ' healthy' : ' UNHEALTHY'
    out.push(
      `  ${name.padEnd(16)} ${w.state}${health}${w.version === undefined ? '' : ` version ${w.version}`}${w.restarts > 0 ? `, ${w.restarts} restarts` : ''}${w.pid === undefined ? '' : `, pid ${w.pid}`}`
    )
  }
  out.push('', 'files')
  const files = d.config.files
  const paths = typeof files === 'object' && files !== null ? Object.keys(files) : []
  if (paths.length === 0) out.push('  (none)')
  const putBack = new Map(d.putBack.map(p => [p.path, p]))
  for (const p of paths) {
    const back = putBack.get(p)
    out.push(`  ${p}${back === undefined ? '' : `  ${putBackText([back])}`}`)
  }
  const gone = d.putBack.filter(p => !paths.includes(p.path))
  if (gone.length > 0) out.push(`  no longer managed, ${putBackText(gone)}`)
  const reports = Object.entries(s?.rollouts ?? {})
  if (reports.length > 0 || s?.tryMode !== undefined) {
    out.push('', 'rollouts')
    for (const [id, r] of reports) {
      const steps = [
        r.switchedAt === undefined ? 'waiting' : `switched ${clock(r.switchedAt)}`,
        r.soakedAt === undefined ? '' : `soaked ${clock(r.soakedAt)}`,
        r.failedAt === undefined ? '' : `FAILED ${clock(r.failedAt)}`,
        r.revertedAt === undefined ? '' : `went back ${clock(r.revertedAt)}`,
        r.reason === undefined ? '' : `(${r.reason})`
      ].filter(x => x !== '')
      out.push(`  ${id}  ${steps.join(', ')}${d.rolloutsApplied.includes(id) ? ' [runs it]' : ''}`)
    }
    const back = s?.tryMode?.rolledBack
    if (back !== undefined) {
      out.push(
        `  try mode rolled back config ${back.digest.slice(0, 12)} at ${clock(back.at)} (${back.reason}): the node runs its last known-good config, not the one below`
      )
    }
  }
  const arts = artifactLines(s?.artifacts)
  const held = Object.keys(s?.artifacts ?? {}).length
  if (held > 0) {
    out.push('', 'artifacts', ...arts.map(l => `  ${l}`))
    if (arts.length < held) out.push(`  ${held - arts.length} complete`)
  }
  const errors = [...(s?.errors ?? []), ...d.configErrors]
  out.push('', 'errors')
  if (errors.length === 0) out.push('  (none)')
  for (const e of errors) out.push(`  ${e}`)
  out.push('', `effective config (computed from the documents the daemon ${d.via} holds)`)
  const yaml = stringify(d.config, { lineWidth: 0 }).trimEnd()
  out.push(...(yaml === '{}' ? ['  (empty)'] : yaml.split('\n').map(l => `  ${l}`)))
  return out
}

async function cmdDescribe(ref: string, opts: { daemon: string; json?: boolean }): Promise<void> {
  const d = await describeNode(new DaemonClient(opts.daemon), ref)
  if (opts.json === true) {
    say(JSON.stringify(d, null, 2))
    return
  }
  for (const l of describeLines(d, Date.now())) say(l)
}

/** Register `describe` on the program. */
export function registerDescribeCommand(program: Command, exitHelp: string): void {
  program
    .command('describe')
    .description(
      "one node in full: its labels, effective config, workloads, files, rollouts, artifacts, errors, last seen and sync state, read from any daemon (the node's signed status record)"
    )
    .argument('<node>', 'its name, PeerId, or a prefix of its key')
    .option('--json', 'machine-readable output')
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdDescribe)
}
