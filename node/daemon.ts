/**
 * The Rhizome daemon: one per device, and the composition root that wires its parts. Opens its
 * store (LevelStore in the data directory) and the fleet's trust chain, joins the mesh, runs the
 * reconciler (reconciler.ts) over the appliers, reports status (status-report.ts) and serves
 * the HTTP API (http-routes.ts on http-api.ts). Each part owns its own timers and triggers.
 *
 * @example
 * ```ts
 * const daemon = await Daemon.start({ config: loadDaemonConfig('rhizome.yaml') })
 * process.once('SIGTERM', () => { void daemon.stop() })
 * ```
 */
import { chmod, copyFile, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { AddressInfo } from 'node:net'
import type { Server } from 'node:http'
import { logger } from '@libp2p/logger'
import { trustStatementFromJson, type SignedTrustStatement } from '../crdt/trust.ts'
import { LevelStore } from '../crdt/level-store.ts'
import { Replica } from '../crdt/replica.ts'
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { PeerGoneError } from '../mesh/errors.ts'
import { createMesh } from '../mesh/index.ts'
import type { Mesh } from '../mesh/types.ts'
import { FilesApplier } from './appliers/files.ts'
import { ProcessesApplier } from './appliers/processes.ts'
import { ProtectedPaths } from './appliers/protected-paths.ts'
import { ManifestsApplier } from './appliers/manifests.ts'
import { Reconciler } from './reconciler.ts'
import { DaemonMetrics } from './metrics.ts'
import { createApiServer } from './http-api.ts'
import { apiRoutes, type DashboardReply } from './http-routes.ts'
import { loadOrCreateIdentity, type DeviceIdentity } from './identity.ts'
import { eventLogger, type EventLog } from './logger.ts'
import { StatusReporter } from './status-report.ts'
import { ApiAccess, loadOrCreateApiToken, tokenHint } from './http-access.ts'
import { VIEWER_TOKEN_TTL_MS } from '../mesh/limits.ts'
import { STORE_DIR, TRUST_COPY, type DaemonConfig } from './config.ts'
import { InvalidConfigError, ListenError, listenReason, meshListenError } from './errors.ts'
import { Artifacts } from './artifacts/manager.ts'
import { ArtifactApplier } from './artifacts/apply.ts'
import { artifactRoutes } from './artifacts/http-routes.ts'
import { registerArtifactMetrics } from './artifacts/metrics.ts'
import { enrolledDevicesOf } from '../crdt/devices.ts'
import { RolloutAgent } from './rollout-agent.ts'
import { rolloutRoutes } from './rollout-routes.ts'
import { registerRolloutMetrics } from './rollout-metrics.ts'
import { TimeFloor, TrustWatch } from './trust-daemon.ts'

const log = logger('rhizome:node:daemon')

/** How often unreferenced artifacts are looked for (they go after a grace period of hours). */
const ARTIFACT_GC_INTERVAL_MS = 10 * 60_000

export interface DaemonOptions {
  config: DaemonConfig
  events?: EventLog
  /** false: run without networking (the status and API then cover this node only). */
  mesh?: boolean
}

/** Read the fleet's genesis: the configured trust file, else the copy in the data directory. */
async function readGenesis(config: DaemonConfig): Promise<SignedTrustStatement | undefined> {
  const copy = join(config.dataDir, TRUST_COPY)
  const file = config.trustFile ?? copy
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    if (config.trustFile !== undefined) {
      throw new InvalidConfigError(
        `cannot read the fleet trust file ${file}: ${(err as Error).message}; it is written by \`rhizome init\``
      )
    }
    return undefined
  }
  const parsed: unknown = JSON.parse(text)
  const genesis = trustStatementFromJson(Array.isArray(parsed) ? parsed[0] : parsed)
  if (config.trustFile !== undefined && resolve(config.trustFile) !== resolve(copy)) {
    await copyFile(config.trustFile, copy)
  }
  return genesis
}

export class Daemon {
  readonly config: DaemonConfig
  readonly identity: DeviceIdentity
  readonly replica: Replica
  readonly mesh: Mesh | undefined
  readonly reconciler: Reconciler
  readonly processes: ProcessesApplier
  readonly files: FilesApplier
  readonly status: StatusReporter
  readonly metrics: DaemonMetrics
  readonly artifacts: Artifacts
  readonly rollouts: RolloutAgent
  readonly trustWatch: TrustWatch
  private readonly artifactApplier: ArtifactApplier
  readonly startedAt = Date.now()
  private readonly store: LevelStore
  private readonly events: EventLog
  private server: Server | undefined
  private readonly access: ApiAccess
  private readonly tokenFile: string
  private driftTimer: NodeJS.Timeout | undefined
  private gcTimer: NodeJS.Timeout | undefined
  private stopping: Promise<void> | undefined
  httpUrl = ''

  private constructor(init: {
    config: DaemonConfig
    identity: DeviceIdentity
    store: LevelStore
    replica: Replica
    mesh: Mesh | undefined
    events: EventLog
    apiToken: { token: string; file: string }
    artifacts: Artifacts
    time: TimeFloor
  }) {
    const { config, identity, replica, mesh, events, artifacts } = init
    this.config = config
    this.identity = identity
    this.store = init.store
    this.replica = replica
    this.mesh = mesh
    this.events = events
    this.access = new ApiAccess(init.apiToken.token, init.apiToken.file)
    this.tokenFile = init.apiToken.file
    this.artifacts = artifacts
    const protect = new ProtectedPaths([
      { path: config.configFile, what: 'config file' },
      { path: config.trustFile, what: 'trust file' },
      { path: config.dataDir, what: 'data directory' }
    ])
    this.artifactApplier = new ArtifactApplier({
      artifacts,
      root: config.filesRoot,
      allowedRoots: config.allowedRoots,
      protect
    })
    this.files = new FilesApplier({
      root: config.filesRoot,
      allowedRoots: config.allowedRoots,
      protect,
      allowUnsafeModes: config.allowUnsafeModes,
      onDrift: p => {
        events('warn', 'files.drift', { path: p, action: 'put back' })
      }
    })
    this.processes = new ProcessesApplier({
      onState: () => {
        this.status.schedule()
        this.rollouts.poke()
      },
      env: { RHIZOME_NODE_NAME: config.name },
      pidFile: join(config.dataDir, 'workloads.pids'),
      user: config.workloadUser
    })
    this.rollouts = new RolloutAgent({
      key: identity.publicKeyHex,
      dataDir: config.dataDir,
      statuses: () => this.status.records(),
      enrolled: async () =>
        new Map([...(await enrolledDevicesOf(replica))].map(([k, d]) => [k, d.labels])),
      workloads: () => this.processes.status(),
      connected: () => (mesh?.metrics().syncSessions ?? 0) > 0,
      reconcile: reason => void this.reconciler.trigger(reason),
      publish: () => void this.status.publish(),
      events,
      options: { tryModeMs: mesh === undefined ? 0 : config.tryModeMs }
    })
    this.reconciler = new Reconciler({
      replica,
      files: this.files,
      processes: this.processes,
      manifests: new ManifestsApplier(config.manifestDir),
      artifacts: this.artifactApplier,
      rollouts: this.rollouts,
      key: identity.publicKeyHex,
      fallback: { name: config.name, labels: config.labels },
      intervalMs: config.reconcileIntervalMs
    })
    this.status = new StatusReporter({
      replica,
      mesh,
      reconciler: this.reconciler,
      workloads: () => this.processes.status(),
      files: () => {
        const f = this.files.status()
        return { ok: f.ok, drifted: f.drifted, putBackAt: f.putBackAt }
      },
      artifacts: () => artifacts.statuses(),
      rollouts: () => this.rollouts.reports(),
      tryMode: () => this.rollouts.tryMode(),
      freshness: () => this.trustWatch.freshnessStatus(),
      key: identity.publicKeyHex,
      peerId: identity.peerId,
      startedAt: this.startedAt,
      intervalMs: config.statusIntervalMs
    })
    this.metrics = new DaemonMetrics({
      mesh: () => mesh?.metrics(),
      revisionLag: () => this.reconciler.lag(),
      workloads: () => this.processes.status()
    })
    registerArtifactMetrics(this.metrics.registry, artifacts)
    registerRolloutMetrics(this.metrics.registry, this.rollouts)
    this.trustWatch = new TrustWatch(replica, events, this.metrics.registry, init.time)
  }

  static async start(opts: DaemonOptions): Promise<Daemon> {
    const config = opts.config
    const events = opts.events ?? eventLogger()
    // Others may pass through the data directory but not list it (0711): a workload, running as
    // another user, reaches the artifacts it runs from (artifacts/b, artifacts/u, by digest);
    // the device key, the API token and the store are the daemon's alone (0600, 0700), also in
    // a directory made by hand with a looser mode.
    await mkdir(config.dataDir, { recursive: true, mode: 0o711 })
    await chmod(config.dataDir, 0o711).catch((err: Error) =>
      events('warn', 'data-dir.mode', { dir: config.dataDir, error: err })
    )
    await mkdir(join(config.dataDir, STORE_DIR), { recursive: true, mode: 0o700 })
    await chmod(join(config.dataDir, STORE_DIR), 0o700)
    const { identity, created } = await loadOrCreateIdentity(config.dataDir)
    const apiToken = await loadOrCreateApiToken(config.dataDir)
    if (created) {
      events('info', 'identity.created', {
        publicKey: identity.publicKeyHex,
        fingerprint: identity.fingerprint
      })
    }
    const genesis = await readGenesis(config)
    const store = await LevelStore.open(join(config.dataDir, STORE_DIR))
    let replica: Replica
    try {
      replica = await Replica.open({ store, ed: nodeCryptoEd25519, genesis })
    } catch (err) {
      await store.close()
      throw err
    }
    if (genesis === undefined) {
      await writeFile(
        join(config.dataDir, TRUST_COPY),
        JSON.stringify(replica.trust.all[0], null, 2)
      )
    }
    const artifacts = await Artifacts.open({
      dir: join(config.dataDir, 'artifacts'),
      fetchBytesPerSecond: config.artifactFetchRate,
      serveBytesPerSecond: config.artifactServeRate,
      diskBudgetBytes: config.artifactDiskBudget,
      gcGraceMs: config.artifactGcGraceMs
    })
    let mesh: Mesh | undefined
    // The rollout agent, made with the daemon below, answers once it exists.
    let budgeted = (_rolloutId: string): boolean => true
    if (opts.mesh !== false) {
      try {
        mesh = await createMesh({
          rolloutBudgeted: id => budgeted(id),
          replica,
          identity: identity.pair,
          listen: config.listen,
          bootstrap: config.bootstrap,
          mdns: config.mdns,
          extraPeers: config.extraPeers,
          artifacts: artifacts.holder(),
          artifactPort: config.artifactPort
        })
        await mesh.start()
        const ex = mesh.artifacts
        artifacts.setSources(
          () => ex.sources(),
          (source, err) => ex.faulty(source.id, err)
        )
        mesh.addEventListener('peer:connect', () => artifacts.poke())
      } catch (err) {
        await artifacts.stop()
        await replica.close()
        await store.close()
        throw meshListenError(err)
      }
    }
    const time = await TimeFloor.open(store)
    const d = new Daemon({
      config,
      identity,
      store,
      replica,
      mesh,
      events,
      apiToken,
      artifacts,
      time
    })
    budgeted = id => d.rollouts.budgeted(id)
    try {
      await d.run()
    } catch (err) {
      // Stop what did start (mesh, workloads, store), so the process can exit and say why
      // rather than run on half started, without its HTTP API.
      await d.stop().catch((e: unknown) => log.error('stopping after a failed start: %e', e))
      throw err
    }
    return d
  }

  /** Wire the parts' events to the event log, then start them in order. */
  private async run(): Promise<void> {
    const e = this.events
    e('info', 'daemon.identity', {
      peerId: this.identity.peerId,
      publicKey: this.identity.publicKeyHex,
      fingerprint: this.identity.fingerprint,
      fleet: this.replica.trust.latest.fleet,
      fleetId: this.replica.fleetId
    })
    if (this.mesh !== undefined) {
      e('info', 'mesh.listening', { addresses: this.mesh.addresses() })
      this.mesh.addEventListener('peer:connect', ev => {
        e('info', 'peer.connect', { peerId: ev.detail.peerId })
      })
      this.mesh.addEventListener('peer:disconnect', ev => {
        e('info', 'peer.disconnect', { peerId: ev.detail.peerId })
      })
      this.mesh.addEventListener('rejected', ev => {
        e('warn', 'peer.rejected', { ...ev.detail })
      })
      this.mesh.addEventListener('status', ev => this.rollouts.onStatus(ev.detail))
      this.mesh.serveLogs((name, lines) => this.processes.logs(name)?.slice(-lines))
    }
    this.replica.addEventListener('change', ev => {
      const d = ev.detail
      e('info', 'revision', { doc: d.docId, heads: d.heads, source: d.source })
    })
    this.reconciler.addEventListener('reconciled', ev => {
      const d = ev.detail
      this.metrics.reconcileSeconds.observe(d.durationMs / 1000)
      if (d.started.length + d.stopped.length > 0 || d.errors.length > 0 || d.reason === 'start') {
        e(d.errors.length > 0 ? 'warn' : 'info', 'reconciled', {
          reason: d.reason,
          name: d.identity.name,
          started: d.started,
          stopped: d.stopped,
          errors: d.errors,
          ms: Math.round(d.durationMs)
        })
      }
      this.rollouts.afterReconcile()
      this.status.schedule()
    })
    this.artifacts.addEventListener('complete', ev => {
      e('info', 'artifact.complete', ev.detail)
      void this.reconciler.trigger('artifact complete')
    })
    const orphans = await this.processes.reapOrphans()
    if (orphans.length > 0) {
      e('warn', 'workloads.orphans-stopped', {
        pids: orphans,
        note: 'left running by a daemon that did not shut down cleanly'
      })
    }
    await this.listenHttp()
    await this.rollouts.load()
    await this.reconciler.start()
    this.driftTimer = setInterval(() => {
      void this.files.checkDrift().then(put => {
        if (put.length > 0) this.status.schedule()
      })
    }, this.config.driftCheckMs)
    this.driftTimer.unref()
    this.gcTimer = setInterval(() => {
      void this.artifacts.gc().catch(err => log.error('artifact gc: %e', err))
    }, ARTIFACT_GC_INTERVAL_MS)
    this.gcTimer.unref()
    this.trustWatch.start()
    this.status.start()
    e('info', 'dashboard', {
      url: `${this.httpUrl}/`,
      note:
        this.mesh === undefined
          ? 'no mesh: the dashboard cannot join as a peer'
          : '`rhizome dashboard` prints a URL with a one-time viewer token'
    })
    e('info', 'daemon.ready', { http: this.httpUrl })
  }

  private async listenHttp(): Promise<void> {
    const server = createApiServer(
      [
        ...artifactRoutes(this.artifacts, this.config.artifactDiskBudget),
        ...rolloutRoutes(
          this.rollouts,
          async () =>
            new Map([...(await enrolledDevicesOf(this.replica))].map(([k, d]) => [k, d.name]))
        ),
        ...this.trustWatch.routes(),
        ...apiRoutes({
          peerId: this.identity.peerId,
          name: () => this.reconciler.last?.identity.name ?? this.config.name,
          startedAt: this.startedAt,
          mesh: this.mesh !== undefined,
          replica: this.replica,
          metrics: this.metrics,
          fleetStatus: () => this.status.fleet(),
          workloadLogs: name => this.processes.logs(name),
          nodeLogs: (node, name, lines) =>
            this.mesh === undefined
              ? Promise.reject(
                  new PeerGoneError('this daemon runs without a mesh: it cannot reach other nodes')
                )
              : this.mesh.fetchLogs(node, name, { lines }),
          events: this.events,
          access: this.access,
          dashboard: () => this.dashboardUrl()
        })
      ],
      this.access
    )
    await new Promise<void>((resolve, reject) => {
      server.once('error', err =>
        reject(
          new ListenError(
            `cannot listen on http://${this.config.http.host}:${this.config.http.port} for the HTTP API: ${listenReason(err)}; choose another http.port in the daemon config (or RHIZOME_HTTP_PORT), or stop the program that holds it`
          )
        )
      )
      server.listen(this.config.http.port, this.config.http.host, () => resolve())
    })
    this.server = server
    const a = server.address() as AddressInfo
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address
    this.httpUrl = `http://${host}:${a.port}`
    this.access.bound(a)
    this.events('info', 'http.listening', { url: this.httpUrl, tokenFile: this.tokenFile })
  }

  /**
   * A dashboard URL with a fresh one-time viewer token (and the WebSocket address the page joins
   * the mesh through, a loopback one first, as the page is opened from this machine's HTTP
   * address); undefined without a mesh. Logged with a hint of the token only.
   */
  private dashboardUrl(): DashboardReply | undefined {
    if (this.mesh === undefined) return undefined
    const token = this.mesh.issueViewerToken()
    this.access.dashboardToken(token)
    const ws = this.mesh.addresses().filter(a => a.includes('/ws/'))
    const addr = ws.find(a => a.startsWith('/ip4/127.')) ?? ws[0]
    const hash = `token=${encodeURIComponent(token)}${addr === undefined ? '' : `&addr=${encodeURIComponent(addr)}`}`
    this.events('info', 'dashboard.issued', { token: tokenHint(token) })
    return {
      url: `${this.httpUrl}/#${hash}`,
      expiresAt: Date.now() + VIEWER_TOKEN_TTL_MS,
      joinsThrough: addr ?? null
    }
  }

  /** Stop workloads, snapshot, close the mesh, the HTTP server and the store. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.events('info', 'daemon.stopping', {})
      clearInterval(this.driftTimer)
      clearInterval(this.gcTimer)
      this.status.stop()
      await this.trustWatch.stop()
      await this.rollouts.stop()
      await this.reconciler.stop()
      await this.processes.stopAll()
      await this.artifacts.stop()
      try {
        await this.mesh?.stop()
      } catch (err) {
        log.error('mesh stop: %e', err)
      }
      await new Promise<void>(resolve => {
        if (this.server === undefined) {
          resolve()
          return
        }
        this.server.close(() => resolve())
        this.server.closeAllConnections()
      })
      await this.replica.close()
      await this.store.close()
      this.events('info', 'daemon.stopped', {})
    })()
    return this.stopping
  }
}
