/**
 * The reconcile loop: desired config (the replica's documents) → this node's effective config
 * (crdt/effective-config.ts, with the name and labels of its enrolment, else of its config
 * file) → appliers (files, workloads, manifests) → observed state. Runs one pass at a time;
 * triggers that arrive during a pass coalesce into one more pass. Once started it triggers
 * itself on every new revision of any document and every `intervalMs`.
 *
 * Effective config shape (what the appliers read):
 * ```yaml
 * files:     { <absolute path>: { content: "...", mode: "0644" } }
 * workloads: { <name>: { command: [..], env: {..}, cwd, version, health: { http | tcp | command, intervalMs } } }
 * manifests: { <name>: <YAML string or object> }
 * ```
 */
import { TypedEventEmitter } from '@libp2p/interface'
import { logger } from '@libp2p/logger'
import {
  effectiveConfig,
  type ConfigDocument,
  type ConfigObject,
  type NodeIdentity
} from '../crdt/effective-config.ts'
import { DEVICES_DOC, documentReach, enrolledDevicesOf } from '../crdt/devices.ts'
import type { ChangeEventDetail, Replica } from '../crdt/replica.ts'
import type { FilesApplier } from './appliers/files.ts'
import type { ProcessesApplier } from './appliers/processes.ts'
import type { ManifestsApplier } from './appliers/manifests.ts'
import type { ArtifactApplier } from './artifacts/apply.ts'
import { isMap } from '../crdt/config-shape.ts'

const log = logger('rhizome:node:reconciler')

export interface ReconcileResult {
  reason: string
  applied: Record<string, string[]>
  identity: NodeIdentity & { enrolled: boolean }
  config: ConfigObject
  errors: string[]
  durationMs: number
}

/** A finished pass: its result, and the workloads it started and stopped. */
export interface ReconciledDetail extends ReconcileResult {
  started: string[]
  stopped: string[]
}

export interface ReconcilerEvents {
  reconciled: CustomEvent<ReconciledDetail>
}

export interface ReconcilerComponents {
  replica: Replica
  files: FilesApplier
  processes: ProcessesApplier
  manifests: ManifestsApplier
  /** Artifact files and workloads (node/artifacts/apply.ts): resolved before the other appliers. */
  artifacts?: ArtifactApplier
  /**
   * Staged rollouts (node/rollout-agent.ts): the effective config with each switched rollout's
   * change on top, or the last known-good config; applied instead of the effective config.
   */
  rollouts?: {
    configFor(
      docs: ConfigDocument[],
      identity: NodeIdentity,
      config: ConfigObject
    ): Promise<{ config: ConfigObject; errors: string[] }>
  }
  /** The node's own public key, hex. */
  key: string
  fallback: NodeIdentity
  /** A pass runs at least this often, ms (default 30 s). */
  intervalMs?: number
}

/**
 * The config documents of a replica as effective-config.ts reads them (every document but
 * `devices`), each with its writers' scopes and the devices it may not reach (crdt/devices.ts
 * `documentReach`): operators' documents reach only the nodes in their scope. What a node computes its config from, and what `rhizome describe` computes it from.
 */
export async function configDocuments(
  replica: Replica,
  ids: readonly string[] = replica.documentIds()
): Promise<ConfigDocument[]> {
  const docs: ConfigDocument[] = []
  const devices = replica.documentIds().includes(DEVICES_DOC)
    ? (await replica.open(DEVICES_DOC)).value
    : undefined
  for (const id of ids) {
    if (id === DEVICES_DOC) continue
    const doc = await replica.open(id)
    docs.push({ id, value: doc.value, ...documentReach(doc.writerKeys(), replica.trust, devices) })
  }
  return docs
}

export class Reconciler extends TypedEventEmitter<ReconcilerEvents> {
  private readonly c: ReconcilerComponents
  private running: Promise<void> | undefined
  private again: string | undefined
  private timer: ReturnType<typeof setInterval> | undefined
  /** Heads of every document as of its last change event, for `lag()` (read synchronously). */
  private readonly heads = new Map<string, string[]>()
  last: ReconcileResult | undefined

  constructor(components: ReconcilerComponents) {
    super()
    this.c = components
  }

  private readonly onChange = (e: CustomEvent<ChangeEventDetail>): void => {
    this.heads.set(e.detail.docId, e.detail.heads)
    void this.trigger(`revision ${e.detail.docId}`)
  }

  /** Run a first pass, then one on every new revision and every `intervalMs`. */
  async start(): Promise<void> {
    for (const [id, heads] of Object.entries(await this.revision())) this.heads.set(id, heads)
    this.c.replica.addEventListener('change', this.onChange)
    this.timer = setInterval(() => {
      void this.trigger('timer')
    }, this.c.intervalMs ?? 30_000)
    this.timer.unref()
    await this.trigger('start')
  }

  /** No more passes; resolves when the one running (if any) has finished. */
  async stop(): Promise<void> {
    this.c.replica.removeEventListener('change', this.onChange)
    clearInterval(this.timer)
    await this.running
  }

  /** Documents whose newest revision is not what the last pass applied. */
  lag(): number {
    const applied = this.last?.applied ?? {}
    let lag = 0
    for (const [id, heads] of this.heads) {
      if (JSON.stringify(applied[id] ?? []) !== JSON.stringify(heads)) lag++
    }
    return lag
  }

  /** Name and labels: from the node's enrolment if enrolled, else from its config file. */
  async identity(): Promise<NodeIdentity & { enrolled: boolean }> {
    const me = (await enrolledDevicesOf(this.c.replica)).get(this.c.key)
    return me === undefined
      ? { ...this.c.fallback, key: this.c.key, enrolled: false }
      : { name: me.name, labels: me.labels, key: this.c.key, enrolled: true }
  }

  /** The heads of every document this node holds. */
  async revision(): Promise<Record<string, string[]>> {
    const out: Record<string, string[]> = {}
    for (const id of this.c.replica.documentIds()) out[id] = (await this.c.replica.open(id)).heads
    return out
  }

  /** Ask for a pass; resolves when a pass that started after this call has finished. */
  trigger(reason: string): Promise<void> {
    if (this.running !== undefined) {
      this.again = reason
      return this.running.then(() => this.running ?? Promise.resolve())
    }
    this.running = (async () => {
      let r: string | undefined = reason
      while (r !== undefined) {
        this.again = undefined
        try {
          await this.pass(r)
        } catch (err) {
          log.error('reconcile (%s) failed: %e', r, err)
        }
        r = this.again
      }
    })().finally(() => {
      this.running = undefined
    })
    return this.running
  }

  private async pass(reason: string): Promise<void> {
    const t0 = performance.now()
    const applied = await this.revision()
    const docs = await configDocuments(this.c.replica, Object.keys(applied))
    const identity = await this.identity()
    const errors: string[] = []
    const base = effectiveConfig(docs, identity)
    const shaped = (await this.c.rollouts?.configFor(docs, identity, base)) ?? {
      config: base,
      errors: []
    }
    const config = shaped.config
    errors.push(...shaped.errors)
    const art = (await this.c.artifacts?.resolve(config)) ?? { config, errors: [] }
    errors.push(...art.errors)
    const files = await this.c.files.apply(isMap(art.config.files) ? art.config.files : {})
    errors.push(...files.errors)
    if (this.c.artifacts !== undefined) errors.push(...(await this.c.artifacts.applyFiles()).errors)
    const p = await this.c.processes.apply(isMap(art.config.workloads) ? art.config.workloads : {})
    errors.push(...p.errors)
    const m = await this.c.manifests.apply(isMap(config.manifests) ? config.manifests : {})
    errors.push(...m.errors)
    this.last = { reason, applied, identity, config, errors, durationMs: performance.now() - t0 }
    log(
      'reconciled (%s) in %d ms; started %o stopped %o',
      reason,
      Math.round(this.last.durationMs),
      p.started,
      p.stopped
    )
    this.safeDispatchEvent('reconciled', {
      detail: { ...this.last, started: p.started, stopped: p.stopped }
    })
  }
}
