/**
 * The reconcile loop: desired config (the replica's documents) → this node's effective config
 * (crdt/effective-config.ts, with the name and labels of its enrolment, else of its config
 * file) → appliers (files, workloads, manifests) → observed state. Runs one pass at a time;
 * triggers that arrive during a pass coalesce into one more pass.
 *
 * Effective config shape (what the appliers read):
 * ```yaml
 * files:     { <absolute path>: { content: "...", mode: "0644" } }
 * workloads: { <name>: { command: [..], env: {..}, cwd, version, health: { http | tcp | command, intervalMs } } }
 * manifests: { <name>: <YAML string or object> }
 * ```
 */
import { logger } from '@libp2p/logger'
import { effectiveConfig, type ConfigObject, type NodeIdentity } from '../crdt/effective-config.ts'
import { DEVICES_DOC, enrolledDevices } from '../crdt/devices.ts'
import type { Replica } from '../crdt/replica.ts'
import type { FilesApplier } from './appliers/files.ts'
import type { ProcessesApplier } from './appliers/processes.ts'
import type { ManifestsApplier } from './appliers/manifests.ts'
import type { ArtifactApplier } from './artifacts/apply.ts'

const log = logger('rhizome:node:reconciler')

export interface ReconcileResult {
  reason: string
  applied: Record<string, string[]>
  identity: NodeIdentity & { enrolled: boolean }
  config: ConfigObject
  errors: string[]
  durationMs: number
}

export interface ReconcilerComponents {
  replica: Replica
  files: FilesApplier
  processes: ProcessesApplier
  manifests: ManifestsApplier
  /** Artifact files and workloads (node/artifacts/apply.ts): resolved before the other appliers. */
  artifacts?: ArtifactApplier
  /** The node's own public key, hex. */
  key: string
  fallback: NodeIdentity
}

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

export class Reconciler extends EventTarget {
  private readonly c: ReconcilerComponents
  private running: Promise<void> | undefined
  private again: string | undefined
  last: ReconcileResult | undefined

  constructor(components: ReconcilerComponents) {
    super()
    this.c = components
  }

  /** Name and labels: from the node's enrolment if enrolled, else from its config file. */
  async identity(): Promise<NodeIdentity & { enrolled: boolean }> {
    const devices = this.c.replica.documentIds().includes(DEVICES_DOC)
      ? (await this.c.replica.open(DEVICES_DOC)).value
      : undefined
    const me = enrolledDevices(this.c.replica.trust, devices).get(this.c.key)
    return me === undefined
      ? { ...this.c.fallback, enrolled: false }
      : { name: me.name, labels: me.labels, enrolled: true }
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
    const docs = []
    for (const id of Object.keys(applied)) {
      if (id === DEVICES_DOC) continue
      docs.push({ id, value: (await this.c.replica.open(id)).value })
    }
    const identity = await this.identity()
    const config = effectiveConfig(docs, identity)
    const errors: string[] = []
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
    this.dispatchEvent(
      new CustomEvent('reconciled', {
        detail: { ...this.last, started: p.started, stopped: p.stopped }
      })
    )
  }
}
