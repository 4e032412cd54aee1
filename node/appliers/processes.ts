/**
 * Supervised workloads. Each workload is a command the daemon starts and keeps running:
 * restarted when its spec changes (command, env, cwd, version, health, user), restarted with
 * bounded exponential back-off after it exits, probed for health (HTTP, TCP or a command), and
 * its recent output kept in a bounded ring buffer.
 *
 * A workload runs as an unprivileged user (accounts.ts: its `user:`, else the daemon's
 * `workloadUser`), in a process group of its own, with a clean environment: PATH, HOME, USER and
 * LOGNAME, the RHIZOME_* identity variables, and what its spec's `env` gives; nothing of the
 * daemon's own (RHIZOME_PASSPHRASE, NODE_OPTIONS, …). Its health command runs the same way (same
 * account, environment, cwd and capability dropping, a group of its own killed after the probe),
 * never as the daemon. Every group the daemon started is stopped
 * (SIGTERM, then SIGKILL) when its workload is dropped or the daemon shuts down; the groups
 * still running are recorded (pid and start time) so that a daemon that was killed stops them
 * before it starts anything when it runs again, whoever triggers its first pass.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import {
  accountPolicy,
  defaultWorkloadUser,
  launchAs,
  lookupAccount,
  switchMethod,
  type Account,
  type AccountPolicy,
  type Launch,
  type SwitchMethod
} from './accounts.ts'
import type { WorkloadState, WorkloadStatus } from '../../crdt/fleet-status.ts'
import { logger } from '@libp2p/logger'
import { canonicalJson } from '../../crdt/canonical-json.ts'
import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from '../backoff.ts'
import { DEFAULT_LOG_LINES, LineSplitter, RingBuffer } from '../ring-buffer.ts'
import { isAlive } from '../child-processes.ts'

const log = logger('rhizome:node:processes')

export const MAX_WORKLOADS = 64
export const STOP_GRACE_MS = 5000
export const PROBE_TIMEOUT_MS = 2000
export const DEFAULT_PROBE_INTERVAL_MS = 5000
export const STATUS_LOG_LINES = 20
/** Probes come every 250 ms for this long after a start, so "up" is seen at once; then at intervalMs. */
export const FAST_PROBE_WINDOW_MS = 5000
/** The PATH a workload gets unless its spec's env sets one. */
export const WORKLOAD_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
/** Sent with HTTP probes, so a workload can leave them out of its access log. */
export const PROBE_USER_AGENT = 'rhizome-health-probe'

export interface HealthSpec {
  http?: string
  tcp?: string
  command?: string[]
  intervalMs?: number
}
export interface WorkloadSpec {
  command: string[]
  env?: Record<string, string>
  cwd?: string
  version?: string
  health?: HealthSpec
  /** The account to run as (a name or `uid[:gid]`); else the daemon's workloadUser. */
  user?: string
}

function toSpec(name: string, raw: unknown): WorkloadSpec {
  const r = raw as Record<string, unknown>
  if (typeof r !== 'object' || r === null) {
    throw new Error(`workload "${name}": expected { command, env?, cwd?, version?, health? }`)
  }
  if (!Array.isArray(r.command) || r.command.length === 0) {
    throw new Error(`workload "${name}": command must be a non-empty list`)
  }
  const env: Record<string, string> = {}
  if (typeof r.env === 'object' && r.env !== null) {
    for (const [k, v] of Object.entries(r.env)) if (v !== null) env[k] = String(v)
  }
  const spec: WorkloadSpec = { command: r.command.map(String), env }
  if (typeof r.cwd === 'string') spec.cwd = r.cwd
  if (typeof r.user === 'string' && r.user !== '') spec.user = r.user
  if (r.version !== undefined && r.version !== null) {
    spec.version = typeof r.version === 'string' ? r.version : JSON.stringify(r.version)
  }
  if (typeof r.health === 'object' && r.health !== null) {
    const h = r.health as Record<string, unknown>
    spec.health = {}
    if (typeof h.http === 'string') spec.health.http = h.http
    if (typeof h.tcp === 'string') spec.health.tcp = h.tcp
    if (Array.isArray(h.command)) spec.health.command = h.command.map(String)
    if (typeof h.intervalMs === 'number') spec.health.intervalMs = Math.max(100, h.intervalMs)
  }
  return spec
}

/**
 * Starts a process exactly as its workload runs: as the workload's account (through the same
 * `Launch` as its command, so capabilities are dropped the same way), with the workload's clean
 * environment and cwd, and as the leader of a process group of its own.
 */
type Spawner = (launch: Launch, stdio: 'ignore' | 'pipe') => ChildProcess

/**
 * One probe; resolves true if healthy. A command probe is started by `spawner` as its workload
 * runs (never as the daemon: it could read the device key and the daemon's environment), and its
 * whole process group is killed when it exits, times out (PROBE_TIMEOUT_MS) or is aborted, so a
 * probe leaves nothing running behind it.
 */
export async function probe(
  h: HealthSpec,
  signal: AbortSignal,
  command?: { launch: Launch; spawner: Spawner }
): Promise<boolean> {
  if (h.http !== undefined) {
    try {
      const res = await fetch(h.http, {
        headers: { 'user-agent': PROBE_USER_AGENT },
        signal: AbortSignal.any([signal, AbortSignal.timeout(PROBE_TIMEOUT_MS)])
      })
      await res.body?.cancel()
      return res.ok
    } catch {
      return false
    }
  }
  if (h.tcp !== undefined) {
    const i = h.tcp.lastIndexOf(':')
    const host = h.tcp.slice(0, i) || '127.0.0.1'
    const port = Number(h.tcp.slice(i + 1))
    return new Promise(resolve => {
      const s = connect({ host, port, timeout: PROBE_TIMEOUT_MS })
      const done = (ok: boolean): void => {
        s.destroy()
        resolve(ok)
      }
      // Closed with a FIN, not reset: a server logs no "connection reset" for every probe.
      s.once('connect', () => {
        s.end()
        resolve(true)
      })
      s.once('close', () => s.destroy())
      s.once('error', () => done(false))
      s.once('timeout', () => done(false))
    })
  }
  if (command !== undefined) {
    if (signal.aborted) return false
    let c: ChildProcess
    try {
      c = command.spawner(command.launch, 'ignore')
    } catch {
      return false
    }
    return new Promise(resolve => {
      const kill = (): void => {
        if (c.pid !== undefined) signalGroup(c.pid, 'SIGKILL')
      }
      const timer = setTimeout(kill, PROBE_TIMEOUT_MS)
      signal.addEventListener('abort', kill, { once: true })
      const done = (ok: boolean): void => {
        clearTimeout(timer)
        signal.removeEventListener('abort', kill)
        resolve(ok)
      }
      c.once('error', () => {
        kill()
        done(false)
      })
      c.once('exit', code => {
        // What the probe left behind in its group (a background job) goes with it.
        kill()
        done(code === 0)
      })
    })
  }
  return true
}

/** Start `launch` with a workload's environment and cwd, as a process group leader. */
function spawnLaunch(
  launch: Launch,
  opts: { cwd: string | undefined; env: Record<string, string> },
  stdio: 'ignore' | 'pipe'
): ChildProcess {
  return spawn(launch.command, launch.args, {
    cwd: opts.cwd,
    env: opts.env,
    uid: launch.uid,
    gid: launch.gid,
    // A process group of its own: stopping it stops what it started too.
    detached: true,
    stdio: ['ignore', stdio, stdio]
  })
}

/** Signal a workload's whole process group (it was started as a group leader). */
function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal)
  } catch {
    try {
      process.kill(pid, signal)
    } catch {}
  }
}

/** When a process started, in clock ticks since boot (/proc/PID/stat field 22): a pid is reused, this is not. */
function startTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const v = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19])
    return Number.isFinite(v) ? v : undefined
  } catch {
    return undefined
  }
}

/** How a workload's processes (its command, its health command) are started. */
interface Run {
  account: Account
  launch: Launch
  probe: Launch | undefined
  identityEnv: Record<string, string>
}

class Workload {
  readonly name: string
  readonly spec: WorkloadSpec
  readonly key: string
  readonly logs: RingBuffer
  state: Exclude<WorkloadState, 'unknown'> = 'stopped'
  healthy: boolean | null = null
  restarts = 0
  started = 0
  private child: ChildProcess | undefined
  private startedAt = 0
  private attempt = 0
  private restartTimer: NodeJS.Timeout | undefined
  private probeTimer: NodeJS.Timeout | undefined
  private readonly abort = new AbortController()
  private stopping = false
  private readonly onState: () => void
  private readonly backoff: BackoffOptions
  private readonly env: Record<string, string>
  private readonly launch: Launch
  /** The health command, started as the workload is (see `probe`). */
  private readonly probeLaunch: Launch | undefined
  private readonly spawner: Spawner

  constructor(
    name: string,
    spec: WorkloadSpec,
    run: Run,
    onState: () => void,
    backoff: BackoffOptions,
    logLines: number
  ) {
    this.name = name
    this.spec = spec
    this.key = canonicalJson(spec)
    this.onState = onState
    this.backoff = backoff
    this.launch = run.launch
    this.probeLaunch = run.probe
    this.logs = new RingBuffer(logLines)
    // Nothing of the daemon's own environment: only what identifies the workload and its spec gives.
    this.env = {
      PATH: WORKLOAD_PATH,
      HOME: run.account.home,
      USER: run.account.name,
      LOGNAME: run.account.name,
      ...run.identityEnv,
      RHIZOME_WORKLOAD: name,
      RHIZOME_WORKLOAD_VERSION: spec.version ?? '',
      ...spec.env
    }
    const env = this.env
    this.spawner = (launch, stdio) => spawnLaunch(launch, { cwd: spec.cwd, env }, stdio)
  }

  get pid(): number | undefined {
    return this.child?.pid
  }

  start(): void {
    if (this.stopping) return
    const cmd = this.spec.command[0] as string
    this.state = 'starting'
    this.healthy = this.spec.health === undefined ? null : false
    this.startedAt = Date.now()
    this.started++
    let child: ChildProcess
    try {
      child = this.spawner(this.launch, 'pipe')
    } catch (err) {
      this.logs.push(`[rhizome] cannot start ${cmd}: ${(err as Error).message}`)
      this.crashed()
      return
    }
    this.child = child
    const out = new LineSplitter(l => this.logs.push(l))
    const err = new LineSplitter(l => this.logs.push(l))
    child.stdout?.setEncoding('utf8').on('data', (d: string) => out.write(d))
    child.stderr?.setEncoding('utf8').on('data', (d: string) => err.write(d))
    child.once('error', e => {
      this.logs.push(`[rhizome] ${cmd}: ${e.message}`)
      if (child.pid === undefined) {
        this.child = undefined
        this.crashed()
      }
    })
    child.once('spawn', () => {
      this.logs.push(
        `[rhizome] started ${this.name}${this.spec.version === undefined ? '' : ` version ${this.spec.version}`} (pid ${child.pid})`
      )
      if (this.spec.health === undefined) this.state = 'running'
      this.onState()
      this.scheduleProbe(0)
    })
    child.once('exit', (code, signal) => {
      out.flush()
      err.flush()
      if (this.child === child) this.child = undefined
      this.logs.push(`[rhizome] ${this.name} exited (${signal ?? `code ${code}`})`)
      if (!this.stopping) this.crashed()
    })
  }

  /** Pid and start time of the running process, for the pid file. */
  record(): { pid: number; start: number; cmd: string } | undefined {
    const pid = this.child?.pid
    if (pid === undefined) return undefined
    return { pid, start: startTicks(pid) ?? 0, cmd: this.spec.command[0] as string }
  }

  private crashed(): void {
    clearTimeout(this.probeTimer)
    this.state = 'crashed'
    this.healthy = this.spec.health === undefined ? null : false
    if (Date.now() - this.startedAt > this.backoff.resetAfterMs) this.attempt = 0
    this.attempt++
    this.restarts++
    const delay = backoffDelay(this.attempt, this.backoff)
    this.logs.push(`[rhizome] restarting ${this.name} in ${delay} ms (restart ${this.restarts})`)
    this.onState()
    this.restartTimer = setTimeout(() => {
      this.start()
    }, delay)
  }

  private scheduleProbe(delay: number): void {
    const h = this.spec.health
    if (h === undefined || this.stopping) return
    clearTimeout(this.probeTimer)
    this.probeTimer = setTimeout(() => {
      const command =
        this.probeLaunch === undefined
          ? undefined
          : { launch: this.probeLaunch, spawner: this.spawner }
      void probe(h, this.abort.signal, command).then(ok => {
        if (this.stopping || this.child === undefined) return
        const changed = ok !== this.healthy || (ok && this.state === 'starting')
        this.healthy = ok
        if (ok) this.state = 'running'
        if (changed) this.onState()
        // Probe quickly just after a start so "up" is reported promptly, then at the set
        // interval, also when the workload never comes up (each probe may cost it a log line).
        const interval = h.intervalMs ?? DEFAULT_PROBE_INTERVAL_MS
        const fast = this.state === 'starting' && Date.now() - this.startedAt < FAST_PROBE_WINDOW_MS
        this.scheduleProbe(fast ? Math.min(250, interval) : interval)
      })
    }, delay)
  }

  async stop(): Promise<void> {
    this.stopping = true
    this.abort.abort()
    clearTimeout(this.restartTimer)
    clearTimeout(this.probeTimer)
    const child = this.child
    const pid = child?.pid
    if (
      child !== undefined &&
      pid !== undefined &&
      child.exitCode === null &&
      child.signalCode === null
    ) {
      const exited = new Promise<void>(resolve => child.once('exit', () => resolve()))
      signalGroup(pid, 'SIGTERM')
      const t = setTimeout(() => {
        signalGroup(pid, 'SIGKILL')
      }, STOP_GRACE_MS)
      await exited
      clearTimeout(t)
    }
    this.child = undefined
    this.state = 'stopped'
    this.healthy = null
  }

  status(): WorkloadStatus {
    const s: WorkloadStatus = {
      state: this.state,
      healthy: this.healthy,
      restarts: this.restarts,
      log: this.logs.last(STATUS_LOG_LINES)
    }
    if (this.spec.version !== undefined) s.version = this.spec.version
    if (this.pid !== undefined) s.pid = this.pid
    return s
  }
}

export interface ProcessesOptions {
  onState?: () => void
  backoff?: BackoffOptions
  /** RHIZOME_* identity variables every workload gets (RHIZOME_NODE_NAME). */
  env?: Record<string, string>
  /**
   * Where the pids of running workloads are recorded, so a daemon that was killed (no graceful
   * shutdown) stops its orphaned workloads when it starts again (`reapOrphans`).
   */
  pidFile?: string
  /** The daemon config's workloadUser (undefined: the default, accounts.ts). */
  user?: string
  /** Lines kept per workload. */
  logLines?: number
}

export class ProcessesApplier {
  /** Running workloads; a removed workload's log lines go with it (`logs` no longer knows it). */
  private readonly workloads = new Map<string, Workload>()
  private readonly onState: () => void
  private readonly backoff: BackoffOptions
  private readonly identityEnv: Record<string, string>
  private readonly defaultUser: string
  /** Root, group 0, the daemon's own account only by the device owner's word (accounts.ts). */
  private readonly policy: AccountPolicy
  private readonly method: SwitchMethod
  private readonly logLines: number
  private errors: string[] = []
  private readonly pidFile: string | undefined
  /** The one pass over the pid file a previous daemon left; nothing starts before it is done. */
  private reaping: Promise<number[]> | undefined

  constructor(opts: ProcessesOptions = {}) {
    this.pidFile = opts.pidFile
    const onState = opts.onState ?? (() => {})
    this.onState = () => {
      this.recordPids()
      onState()
    }
    this.backoff = opts.backoff ?? DEFAULT_BACKOFF
    this.identityEnv = opts.env ?? {}
    this.method = switchMethod()
    this.defaultUser = defaultWorkloadUser(opts.user, this.method)
    this.policy = accountPolicy(opts.user)
    this.logLines = opts.logLines ?? DEFAULT_LOG_LINES
  }

  /** Make the running workloads equal `desired` (name → spec). */
  async apply(
    desired: Record<string, unknown>
  ): Promise<{ started: string[]; stopped: string[]; errors: string[] }> {
    // "Stop orphans, then start" holds whoever asks for the first pass, and however early.
    await this.reapOrphans()
    const specs = new Map<string, WorkloadSpec>()
    const errors: string[] = []
    for (const [name, raw] of Object.entries(desired).slice(0, MAX_WORKLOADS)) {
      try {
        specs.set(name, toSpec(name, raw))
      } catch (err) {
        errors.push((err as Error).message)
      }
    }
    if (Object.keys(desired).length > MAX_WORKLOADS) {
      errors.push(`more than ${MAX_WORKLOADS} workloads configured; the rest are ignored`)
    }
    const started: string[] = []
    const stopped: string[] = []
    for (const [name, w] of [...this.workloads]) {
      const spec = specs.get(name)
      if (spec === undefined || canonicalJson(spec) !== w.key) {
        await w.stop()
        this.workloads.delete(name)
        stopped.push(name)
      }
    }
    for (const [name, spec] of specs) {
      if (this.workloads.has(name)) continue
      let run: Run
      try {
        const account = lookupAccount(spec.user ?? this.defaultUser)
        const as = (argv: string[]): Launch =>
          launchAs(argv as [string, ...string[]], account, this.method, this.policy)
        const check = spec.health?.command
        run = {
          account,
          launch: as(spec.command),
          probe: check !== undefined && check.length > 0 ? as(check) : undefined,
          identityEnv: this.identityEnv
        }
      } catch (err) {
        errors.push(`workload "${name}": ${(err as Error).message}`)
        continue
      }
      const w = new Workload(name, spec, run, this.onState, this.backoff, this.logLines)
      this.workloads.set(name, w)
      w.start()
      started.push(name)
    }
    this.errors = errors
    if (started.length + stopped.length > 0) log('started %o stopped %o', started, stopped)
    return { started, stopped, errors }
  }

  status(): Record<string, WorkloadStatus> {
    const out: Record<string, WorkloadStatus> = {}
    for (const [name, w] of this.workloads) out[name] = w.status()
    return out
  }

  logs(name: string): string[] | undefined {
    return this.workloads.get(name)?.logs.last()
  }

  pids(): number[] {
    return [...this.workloads.values()].map(w => w.pid).filter((p): p is number => p !== undefined)
  }

  get configErrors(): string[] {
    return [...this.errors]
  }

  private recorded = ''
  private recordPids(): void {
    if (this.pidFile === undefined) return
    const list = [...this.workloads.values()].flatMap(w => w.record() ?? [])
    const text = JSON.stringify(list)
    if (text === this.recorded) return
    try {
      writeFileSync(this.pidFile, text, { mode: 0o600 })
      this.recorded = text
    } catch (err) {
      log.error('cannot record workload pids: %e', err)
    }
  }

  /**
   * Stop the workloads a previous daemon process left running (it did not shut down cleanly),
   * once: each recorded process group is signalled only if its leader still has the recorded
   * start time, so a pid reused by an unrelated process is left alone. Resolves with the pids
   * stopped, after they have exited (bounded), so their replacements can bind the same ports.
   */
  reapOrphans(): Promise<number[]> {
    this.reaping ??= this.reap()
    return this.reaping
  }

  private async reap(): Promise<number[]> {
    if (this.pidFile === undefined) return []
    let list: Array<{ pid: number; start?: number; cmd: string }> = []
    try {
      list = JSON.parse(readFileSync(this.pidFile, 'utf8')) as typeof list
    } catch {
      return []
    }
    const stopped: number[] = []
    for (const { pid, start, cmd } of Array.isArray(list) ? list.slice(0, MAX_WORKLOADS) : []) {
      if (!Number.isInteger(pid) || pid <= 1 || typeof cmd !== 'string') continue
      const ticks = startTicks(pid)
      if (ticks === undefined) continue
      if (typeof start === 'number' && start > 0) {
        if (ticks !== start) continue
      } else {
        // A pid file from before start times were recorded: the command must still match.
        let argv0 = ''
        try {
          argv0 = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0] ?? ''
        } catch {}
        if (argv0 !== cmd) continue
      }
      signalGroup(pid, 'SIGTERM')
      stopped.push(pid)
    }
    try {
      writeFileSync(this.pidFile, '[]', { mode: 0o600 })
    } catch {}
    for (let i = 0; i < 50 && stopped.some(isAlive); i++) {
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    const stubborn = stopped.filter(isAlive)
    for (const pid of stubborn) signalGroup(pid, 'SIGKILL')
    // SIGKILL is not instant either: the replacements may want the same ports.
    for (let i = 0; i < 20 && stubborn.some(isAlive); i++) {
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    return stopped
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.workloads.values()].map(w => w.stop()))
    this.workloads.clear()
    this.recordPids()
  }
}
