/**
 * The Rhizome daemon: one per device. Opens its store (LevelStore in the data directory) and
 * the fleet's trust chain, joins the mesh, reconciles the device from the signed desired config
 * (reconciler.ts), publishes its status, and serves the HTTP API (http-api.ts).
 *
 * @example
 * ```ts
 * const daemon = await Daemon.start({ config: loadDaemonConfig('rhizome.yaml') })
 * process.once('SIGTERM', () => { void daemon.stop() })
 * ```
 */
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import type { AddressInfo } from 'node:net'
import type { Server } from 'node:http'
import { logger } from '@libp2p/logger'
import { decodeBatch, encodeBatch } from '../crdt/signed-change.ts'
import { decodeTrustStatement, type SignedTrustStatement } from '../crdt/trust.ts'
import { LevelStore } from '../crdt/level-store.ts'
import { Replica } from '../crdt/replica.ts'
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { DEVICES_DOC, enrolledDevices } from '../crdt/devices.ts'
import { utf8 } from '../crdt/bytes.ts'
import type { Mesh, StatusRecord } from '../mesh/types.ts'
import { FilesApplier } from './appliers/files.ts'
import { ProcessesApplier } from './appliers/processes.ts'
import { ManifestsApplier } from './appliers/manifests.ts'
import { Reconciler } from './reconciler.ts'
import { DaemonMetrics } from './metrics.ts'
import { createApiServer, HttpError, type Route } from './http-api.ts'
import { createMesh } from '../mesh/index.ts'
import { loadOrCreateIdentity, peerIdOfPublicKey, type DeviceIdentity } from './identity.ts'
import { eventLogger, type EventLog } from './logger.ts'
import { fitStatus, type NodeStatusBody } from './status-body.ts'
import { diffMaps, plainValue } from '../crdt/config-diff.ts'
import type { DaemonConfig } from './config.ts'
import { InvalidConfigError } from './errors.ts'
import { Artifacts } from './artifacts/manager.ts'
import { ArtifactApplier } from './artifacts/apply.ts'
import { artifactRoutes } from './artifacts/http-routes.ts'
import { registerArtifactMetrics } from './artifacts/metrics.ts'

const log = logger('rhizome:node:daemon')

export const TRUST_COPY = 'trust.json'
export const STORE_DIR = 'store'
export const MAX_HISTORY_ENTRIES = 1000
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
  const first = Array.isArray(parsed) ? parsed[0] : parsed
  const genesis = decodeTrustStatement(utf8(JSON.stringify(first)))
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
  readonly metrics: DaemonMetrics
  readonly artifacts: Artifacts
  private readonly artifactApplier: ArtifactApplier
  readonly startedAt = Date.now()
  private readonly store: LevelStore
  private readonly events: EventLog
  private server: Server | undefined
  private timers: NodeJS.Timeout[] = []
  private statusTimer: NodeJS.Timeout | undefined
  private ownStatus: StatusRecord | undefined
  /** Latest heads per document, kept from 'change' events (for the lag metric, read synchronously). */
  private readonly heads = new Map<string, string[]>()
  private stopping: Promise<void> | undefined
  httpUrl = ''

  private constructor(init: {
    config: DaemonConfig
    identity: DeviceIdentity
    store: LevelStore
    replica: Replica
    mesh: Mesh | undefined
    events: EventLog
    artifacts: Artifacts
  }) {
    this.config = init.config
    this.identity = init.identity
    this.store = init.store
    this.replica = init.replica
    this.mesh = init.mesh
    this.events = init.events
    this.artifacts = init.artifacts
    this.artifactApplier = new ArtifactApplier({
      artifacts: this.artifacts,
      root: this.config.filesRoot,
      allowedRoots: this.config.allowedRoots
    })
    this.files = new FilesApplier({
      root: this.config.filesRoot,
      allowedRoots: this.config.allowedRoots,
      onDrift: p => {
        this.events('warn', 'files.drift', { path: p, action: 'put back' })
      }
    })
    this.processes = new ProcessesApplier({
      onState: () => {
        this.scheduleStatus()
      },
      env: { RHIZOME_NODE_NAME: this.config.name },
      pidFile: join(this.config.dataDir, 'workloads.pids')
    })
    this.reconciler = new Reconciler({
      replica: this.replica,
      files: this.files,
      processes: this.processes,
      manifests: new ManifestsApplier(this.config.manifestDir),
      artifacts: this.artifactApplier,
      key: this.identity.publicKeyHex,
      fallback: { name: this.config.name, labels: this.config.labels }
    })
    this.metrics = new DaemonMetrics({
      mesh: () => this.mesh?.metrics(),
      revisionLag: () => this.revisionLag(),
      workloads: () => this.processes.status()
    })
    registerArtifactMetrics(this.metrics.registry, this.artifacts)
  }

  static async start(opts: DaemonOptions): Promise<Daemon> {
    const config = opts.config
    const events = opts.events ?? eventLogger()
    await mkdir(config.dataDir, { recursive: true, mode: 0o700 })
    const { identity, created } = await loadOrCreateIdentity(config.dataDir)
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
    let mesh: Mesh | undefined
    if (opts.mesh !== false) {
      try {
        mesh = await createMesh({
          replica,
          identity: identity.pair,
          listen: config.listen,
          bootstrap: config.bootstrap,
          mdns: config.mdns
        })
        await mesh.start()
      } catch (err) {
        await replica.close()
        await store.close()
        throw err
      }
    }
    const artifacts = await Artifacts.open({
      dir: join(config.dataDir, 'artifacts'),
      fetchBytesPerSecond: config.artifactFetchRate,
      diskBudgetBytes: config.artifactDiskBudget,
      gcGraceMs: config.artifactGcGraceMs
    })
    const d = new Daemon({ config, identity, store, replica, mesh, events, artifacts })
    await d.run()
    return d
  }

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
    }
    this.replica.addEventListener('change', ev => {
      const d = (ev as CustomEvent<{ docId: string; heads: string[]; source: string }>).detail
      this.heads.set(d.docId, d.heads)
      e('info', 'revision', { doc: d.docId, heads: d.heads, source: d.source })
      void this.reconciler.trigger(`revision ${d.docId}`)
    })
    this.reconciler.addEventListener('reconciled', ev => {
      const d = (
        ev as CustomEvent<{
          reason: string
          durationMs: number
          started: string[]
          stopped: string[]
          errors: string[]
          identity: { name: string }
        }>
      ).detail
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
      this.scheduleStatus()
    })
    this.artifacts.addEventListener('complete', ev => {
      e('info', 'artifact.complete', (ev as CustomEvent<Record<string, unknown>>).detail)
      void this.reconciler.trigger('artifact complete')
    })
    const orphans = await this.processes.reapOrphans()
    if (orphans.length > 0) {
      e('warn', 'workloads.orphans-stopped', {
        pids: orphans,
        note: 'left running by a daemon that did not shut down cleanly'
      })
    }
    for (const [id, heads] of Object.entries(await this.reconciler.revision())) {
      this.heads.set(id, heads)
    }
    await this.listenHttp()
    await this.reconciler.trigger('start')
    this.timers.push(
      setInterval(() => {
        void this.reconciler.trigger('timer')
      }, this.config.reconcileIntervalMs)
    )
    this.timers.push(
      setInterval(() => {
        void this.files.checkDrift().then(put => {
          if (put.length > 0) this.scheduleStatus()
        })
      }, this.config.driftCheckMs)
    )
    this.timers.push(
      setInterval(() => {
        void this.publishStatus()
      }, this.config.statusIntervalMs)
    )
    this.timers.push(
      setInterval(() => {
        void this.artifacts.gc().catch(err => log.error('artifact gc: %e', err))
      }, ARTIFACT_GC_INTERVAL_MS)
    )
    for (const t of this.timers) t.unref()
    if (this.mesh !== undefined) {
      const token = this.mesh.issueViewerToken()
      // The page needs a WebSocket address to join the mesh through; prefer a loopback one, as the
      // dashboard is opened from this machine's HTTP address.
      const ws = this.mesh.addresses().filter(a => a.includes('/ws/'))
      const addr = ws.find(a => a.startsWith('/ip4/127.')) ?? ws[0]
      const hash = `token=${encodeURIComponent(token)}${addr === undefined ? '' : `&addr=${encodeURIComponent(addr)}`}`
      e('info', 'dashboard', { url: `${this.httpUrl}/#${hash}`, note: 'one-time viewer token' })
    } else {
      e('info', 'dashboard', {
        url: `${this.httpUrl}/`,
        note: 'no mesh: the dashboard cannot join as a peer'
      })
    }
    e('info', 'daemon.ready', { http: this.httpUrl })
  }

  private async listenHttp(): Promise<void> {
    const server = createApiServer(this.routes())
    await new Promise<void>((resolve, reject) => {
      server.once('error', err =>
        reject(
          new InvalidConfigError(
            `cannot listen on http ${this.config.http.host}:${this.config.http.port}: ${err.message}; choose another http.port`
          )
        )
      )
      server.listen(this.config.http.port, this.config.http.host, () => resolve())
    })
    this.server = server
    const a = server.address() as AddressInfo
    const host = a.family === 'IPv6' ? `[${a.address}]` : a.address
    this.httpUrl = `http://${host}:${a.port}`
    this.events('info', 'http.listening', { url: this.httpUrl })
  }

  private revisionLag(): number {
    const applied = this.reconciler.last?.applied ?? {}
    let lag = 0
    for (const [id, heads] of this.heads) {
      if (JSON.stringify(applied[id] ?? []) !== JSON.stringify(heads)) lag++
    }
    return lag
  }

  private scheduleStatus(): void {
    if (this.statusTimer !== undefined) return
    this.statusTimer = setTimeout(() => {
      this.statusTimer = undefined
      void this.publishStatus()
    }, 200)
    this.statusTimer.unref()
  }

  async statusBody(): Promise<NodeStatusBody> {
    const id = await this.reconciler.identity()
    const f = this.files.status()
    const errors = [...(this.reconciler.last?.errors ?? [])].slice(0, 20)
    const body: NodeStatusBody = {
      name: id.name,
      labels: id.labels,
      revision: await this.reconciler.revision(),
      applied: this.reconciler.last?.applied ?? {},
      workloads: this.processes.status(),
      files: { ok: f.ok, drifted: f.drifted },
      peers: this.mesh?.peers().map(p => p.peerId) ?? [],
      startedAt: this.startedAt,
      at: Date.now()
    }
    if (errors.length > 0) body.errors = errors
    const artifacts = this.artifacts.statuses()
    if (Object.keys(artifacts).length > 0) body.artifacts = artifacts
    return fitStatus(body)
  }

  async publishStatus(): Promise<void> {
    if (this.stopping !== undefined) return
    try {
      const body = await this.statusBody()
      if (this.mesh !== undefined) {
        this.ownStatus = await this.mesh.publishStatus(body as unknown as Record<string, unknown>)
      } else {
        this.ownStatus = {
          node: this.identity.publicKeyHex,
          peerId: this.identity.peerId,
          seq: body.at,
          body: body as unknown as Record<string, unknown>,
          receivedAt: body.at,
          stale: false
        }
      }
    } catch (err) {
      log.error('publishing status failed: %e', err)
    }
  }

  /** Status records: the mesh's, or only our own without a mesh. */
  statuses(): StatusRecord[] {
    if (this.mesh !== undefined) return this.mesh.statuses()
    return this.ownStatus === undefined ? [] : [this.ownStatus]
  }

  async fleetStatus(): Promise<unknown> {
    const devicesValue = this.replica.documentIds().includes(DEVICES_DOC)
      ? (await this.replica.open(DEVICES_DOC)).value
      : undefined
    const enrolled = enrolledDevices(this.replica.trust, devicesValue)
    const latest = await this.reconciler.revision()
    const records = new Map(this.statuses().map(r => [r.node, r]))
    const keys = new Set([...enrolled.keys(), this.identity.publicKeyHex])
    const nodes = [...keys]
      .map(key => {
        const dev = enrolled.get(key)
        const rec = records.get(key)
        const body = rec?.body as Partial<NodeStatusBody> | undefined
        const applied = body?.applied ?? {}
        const upToDate =
          rec === undefined
            ? null
            : Object.entries(latest).every(
                ([id, heads]) =>
                  id === DEVICES_DOC || JSON.stringify(applied[id] ?? []) === JSON.stringify(heads)
              )
        return {
          key,
          peerId: rec?.peerId ?? peerIdOfPublicKey(key),
          name: dev?.name ?? body?.name ?? null,
          labels: dev?.labels ?? body?.labels ?? {},
          enrolled: dev !== undefined,
          self: key === this.identity.publicKeyHex,
          online: key === this.identity.publicKeyHex || (rec !== undefined && !rec.stale),
          stale: rec?.stale ?? null,
          lastSeen: rec?.receivedAt ?? null,
          upToDate,
          status: rec?.body ?? null
        }
      })
      .sort((a, b) => String(a.name).localeCompare(String(b.name)))
    return {
      fleet: this.replica.trust.latest.fleet,
      fleetId: this.replica.fleetId,
      self: this.identity.peerId,
      mesh: this.mesh !== undefined,
      latest,
      nodes
    }
  }

  private routes(): Route[] {
    const docId = (raw: string): string => decodeURIComponent(raw)
    const needDoc = async (id: string) => {
      if (!this.replica.documentIds().includes(id)) {
        throw new HttpError(
          404,
          'NotFound',
          `this daemon holds no document "${id}"; GET /api/docs lists the ones it holds`
        )
      }
      return this.replica.open(id)
    }
    return [
      ...artifactRoutes(this.artifacts, this.config.artifactDiskBudget),
      {
        method: 'GET',
        pattern: /^\/api\/health$/,
        handler: async () => ({
          json: {
            ok: true,
            peerId: this.identity.peerId,
            name: this.reconciler.last?.identity.name ?? this.config.name,
            uptimeMs: Date.now() - this.startedAt,
            mesh: this.mesh !== undefined
          }
        })
      },
      {
        method: 'GET',
        pattern: /^\/metrics$/,
        handler: async () => ({
          text: await this.metrics.registry.metrics(),
          type: this.metrics.registry.contentType
        })
      },
      {
        method: 'GET',
        pattern: /^\/api\/status$/,
        handler: async () => ({ json: await this.fleetStatus() })
      },
      {
        method: 'GET',
        pattern: /^\/api\/trust$/,
        handler: async () => ({ json: this.replica.trust.all })
      },
      {
        method: 'POST',
        pattern: /^\/api\/trust$/,
        handler: async (_m, _r, _u, body) => {
          const added = await this.replica.addTrustStatement(decodeTrustStatement(await body()))
          return { json: { added, version: this.replica.trust.version } }
        }
      },
      {
        method: 'GET',
        pattern: /^\/api\/docs$/,
        handler: async () => ({
          json: await Promise.all(
            this.replica
              .documentIds()
              .map(async id => ({ id, heads: (await this.replica.open(id)).heads }))
          )
        })
      },
      {
        method: 'GET',
        pattern: /^\/api\/docs\/(.+)\/batch$/,
        handler: async m => {
          const id = docId(m[1] as string)
          const doc = this.replica.documentIds().includes(id)
            ? await this.replica.open(id)
            : undefined
          const batch =
            doc === undefined
              ? { docId: id, chunks: [], signatures: [] }
              : doc.batchFor(doc.history().map(h => h.hash))
          return { bytes: encodeBatch(batch), type: 'application/octet-stream' }
        }
      },
      {
        method: 'GET',
        pattern: /^\/api\/docs\/(.+)$/,
        handler: async m => {
          const doc = await needDoc(docId(m[1] as string))
          return { json: { id: doc.id, heads: doc.heads, value: plainValue(doc.value) } }
        }
      },
      {
        method: 'POST',
        pattern: /^\/api\/batches$/,
        handler: async (_m, _r, _u, body) => {
          try {
            const batch = decodeBatch(await body())
            const r = await this.replica.accept(batch)
            this.metrics.apiChanges.inc({ result: r.status })
            this.events('info', 'batch.accepted', {
              doc: batch.docId,
              status: r.status,
              applied: r.applied,
              via: 'http'
            })
            return { json: { status: r.status, heads: r.heads, applied: r.applied } }
          } catch (err) {
            this.metrics.apiChanges.inc({ result: 'rejected' })
            this.events('warn', 'batch.rejected', { error: err as Error, via: 'http' })
            throw err
          }
        }
      },
      {
        method: 'GET',
        pattern: /^\/api\/history$/,
        handler: async (_m, _r, url) => {
          const only = url.searchParams.get('doc')
          const limit = Math.min(
            MAX_HISTORY_ENTRIES,
            Math.max(1, Number(url.searchParams.get('limit') ?? 100) || 100)
          )
          const ids = only === null ? this.replica.documentIds() : [only]
          const out = []
          for (const id of ids) {
            const doc = await needDoc(id)
            for (const h of doc.history().slice(-limit)) {
              // A diff of values (set leaves, deleted keys) reads better than Automerge's patches.
              const before = plainValue(doc.valueAt(h.deps)) as Record<string, unknown>
              const after = plainValue(doc.valueAt([h.hash])) as Record<string, unknown>
              out.push({
                doc: id,
                hash: h.hash,
                signer: h.signer,
                signerName: h.signerInfo?.name ?? null,
                role: h.signerInfo?.role ?? null,
                time: h.time,
                message: h.message,
                deps: h.deps,
                diff: diffMaps(before, after)
              })
            }
          }
          out.sort((a, b) => a.time - b.time)
          return { json: out.slice(-limit) }
        }
      },
      {
        method: 'GET',
        pattern: /^\/api\/workloads\/([^/]+)\/logs$/,
        handler: async m => {
          const name = decodeURIComponent(m[1] as string)
          const lines = this.processes.logs(name)
          if (lines === undefined) {
            throw new HttpError(404, 'NotFound', `no workload "${name}" runs on this node`)
          }
          return { json: { name, lines } }
        }
      }
    ]
  }

  /** Stop workloads, snapshot, close the mesh, the HTTP server and the store. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.events('info', 'daemon.stopping', {})
      for (const t of this.timers) clearInterval(t)
      clearTimeout(this.statusTimer)
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
