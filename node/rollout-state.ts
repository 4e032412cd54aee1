/**
 * What a daemon keeps on disk about rollouts, so that going back works offline and across a
 * reboot, and so that what it reported stays reported (status records are last-writer-wins:
 * a fact dropped from the newest record is gone for everyone).
 *
 * File format: `<dataDir>/rollouts.json`, written whole (temp file, fsync, rename), JSON:
 *
 * ```ts
 * { version: 1,
 *   reports: { '<doc>:<name>': RolloutReport },   // what this node reports (crdt/rollout-gate.ts)
 *   bad: ['<rollout digest>', ...],               // rollouts this node failed: never again
 *   badConfigs: ['<config digest>', ...],         // configs try mode rolled back: never again
 *   lastKnownGood?: { digest, at, config },       // the last config that proved good here
 *   tryMode?: { digest, at, reason } }            // the last rollback by try mode
 * ```
 *
 * A file that does not parse is set aside (renamed `.corrupt`) and the daemon starts afresh,
 * saying so: losing it loses this node's memory of bad versions, never its desired config.
 */
import { open, readFile, rename } from 'node:fs/promises'
import type { ConfigObject } from '../crdt/effective-config.ts'
import type { RolloutReport } from '../crdt/rollout-gate.ts'
import { isMap } from '../crdt/config-shape.ts'

export const ROLLOUT_STATE_FILE = 'rollouts.json'
/** Reports kept (and published) at most; the oldest of rollouts no longer configured go first. */
export const MAX_REPORTS = 32
/** Bad rollout and config digests remembered at most each; the oldest are forgotten first. */
export const MAX_BAD = 256

export interface RolloutState {
  version: 1
  reports: Record<string, RolloutReport>
  bad: string[]
  badConfigs: string[]
  lastKnownGood?: { digest: string; at: number; config: ConfigObject }
  tryMode?: { digest: string; at: number; reason: string }
}

export function emptyState(): RolloutState {
  return { version: 1, reports: {}, bad: [], badConfigs: [] }
}

const strings = (v: unknown): string[] =>
  Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string').slice(-MAX_BAD) : []

/** Read the state file; `{ state, problem }` where problem says why it was set aside. */
export async function loadRolloutState(
  file: string
): Promise<{ state: RolloutState; problem?: string }> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state: emptyState() }
    throw err
  }
  try {
    const v: unknown = JSON.parse(text)
    if (!isMap(v) || v.version !== 1 || !isMap(v.reports)) throw new Error('not a version 1 state')
    const state: RolloutState = {
      version: 1,
      reports: v.reports as Record<string, RolloutReport>,
      bad: strings(v.bad),
      badConfigs: strings(v.badConfigs)
    }
    if (isMap(v.lastKnownGood) && isMap(v.lastKnownGood.config)) {
      state.lastKnownGood = v.lastKnownGood as RolloutState['lastKnownGood']
    }
    if (isMap(v.tryMode)) state.tryMode = v.tryMode as RolloutState['tryMode']
    return { state }
  } catch (err) {
    await rename(file, `${file}.corrupt`).catch(() => {})
    return {
      state: emptyState(),
      problem: `${file} could not be read (${(err as Error).message}); set aside as ${file}.corrupt, starting with no memory of failed rollouts`
    }
  }
}

/** Write the state durably: temp file, fsync, rename (a crash leaves the old or the new file). */
export async function saveRolloutState(file: string, state: RolloutState): Promise<void> {
  const tmp = `${file}.tmp`
  const fh = await open(tmp, 'w', 0o600)
  try {
    await fh.writeFile(JSON.stringify(state))
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, file)
}
