/**
 * This node's status, in the shape crdt/fleet-status.ts defines: the body it publishes (from
 * the reconciler, the appliers and the mesh, kept under MAX_STATUS_BYTES), published soon after
 * anything in it changes (coalesced) and every `intervalMs` whatever changed, and the fleet as
 * this daemon sees it (`GET /api/status`).
 *
 * Why the interval publishes an unchanged body and nothing else does: a peer reads a node's
 * freshness from its records alone (stale after no newer record for a while; silent in a
 * rollout, and "updating" budget claims expiring, against the time the records held have
 * reached, `evidenceClock` in `crdt/rollout-gate.ts`), so records must keep coming at that
 * pace. Every other trigger (each reconcile pass, a workload's state, files put back) asks for
 * one "soon", which is published only when something another node reads changed: at 30 daemons
 * a record per pass that said nothing new crossed the mesh ~100 times.
 */
import { logger } from '@libp2p/logger'
import { enrolledDevicesOf } from '../crdt/devices.ts'
import {
  fleetNodes,
  type FleetStatus,
  type ArtifactStatus,
  type StatusBody,
  type TryModeStatus,
  type FreshnessStatus,
  type FilesStatus,
  type WorkloadStatus
} from '../crdt/fleet-status.ts'
import type { Replica } from '../crdt/replica.ts'
import type { RolloutReport } from '../crdt/rollout-gate.ts'
import { MAX_STATUS_BYTES, type Mesh, type StatusRecord } from '../mesh/types.ts'
import { peerIdOfPublicKey } from './identity.ts'
import type { Reconciler } from './reconciler.ts'

const log = logger('rhizome:node:status')

/** How long a burst of changes is collected into one published record, ms. */
const COALESCE_MS = 200

export interface StatusReporterComponents {
  replica: Replica
  mesh: Mesh | undefined
  reconciler: Pick<Reconciler, 'identity' | 'revision' | 'last'>
  workloads: () => Record<string, WorkloadStatus>
  files: () => FilesStatus
  /** Referenced artifacts by digest (node/artifacts/). */
  artifacts?: () => Record<string, ArtifactStatus>
  /** What this node did about each rollout, and try mode's last rollback (node/rollout-agent.ts). */
  rollouts?: () => Record<string, RolloutReport>
  tryMode?: () => TryModeStatus
  /** Whether a freeze beacon says this node may be kept on old state (node/trust-daemon.ts). */
  freshness?: () => FreshnessStatus | undefined
  /** This node's public key (hex) and PeerId. */
  key: string
  peerId: string
  startedAt: number
  /** Publish at least this often, ms. */
  intervalMs: number
}

const size = (v: unknown): number => new TextEncoder().encode(JSON.stringify(v)).length

/** What a body says, its time aside: two bodies with the same content say the same. */
function contentOf(body: StatusBody): string {
  const { at: _at, ...rest } = body
  return JSON.stringify(rest)
}

/** Trim logs (then peers and errors) until the body fits in a status record. */
export function fitStatus(body: StatusBody): StatusBody {
  if (size(body) <= MAX_STATUS_BYTES - 1024) return body
  const b: StatusBody = structuredClone(body)
  for (const keep of [10, 3, 0]) {
    for (const w of Object.values(b.workloads)) w.log = w.log.slice(-keep).map(l => l.slice(0, 200))
    if (size(b) <= MAX_STATUS_BYTES - 1024) return b
  }
  b.peers = b.peers.slice(0, 50)
  b.errors = b.errors.slice(0, 3)
  return b
}

export class StatusReporter {
  private readonly c: StatusReporterComponents
  private timer: ReturnType<typeof setInterval> | undefined
  private soon: ReturnType<typeof setTimeout> | undefined
  private stopped = false
  /** Our own record when there is no mesh to hold it. */
  private own: StatusRecord | undefined
  /** The last body published, without its time (`contentOf`). */
  private lastContent: string | undefined

  constructor(components: StatusReporterComponents) {
    this.c = components
  }

  start(): void {
    this.timer = setInterval(() => {
      void this.publish()
    }, this.c.intervalMs)
    this.timer.unref()
  }

  stop(): void {
    this.stopped = true
    clearInterval(this.timer)
    clearTimeout(this.soon)
  }

  /**
   * Publish soon if anything in the body changed: several calls within COALESCE_MS make one
   * record, none if the body is the one last published (its time aside).
   */
  schedule(): void {
    if (this.soon !== undefined || this.stopped) return
    this.soon = setTimeout(() => {
      this.soon = undefined
      void this.publish({ ifChanged: true })
    }, COALESCE_MS)
    this.soon.unref()
  }

  async body(): Promise<StatusBody> {
    const id = await this.c.reconciler.identity()
    const last = this.c.reconciler.last
    const body: StatusBody = {
      name: id.name,
      labels: id.labels,
      revision: await this.c.reconciler.revision(),
      applied: last?.applied ?? {},
      workloads: this.c.workloads(),
      files: this.c.files(),
      // Sorted: the same peers in another order are no change.
      peers: (this.c.mesh?.peers().map(p => p.peerId) ?? []).sort(),
      errors: (last?.errors ?? []).slice(0, 20),
      startedAt: this.c.startedAt,
      at: Date.now()
    }
    const artifacts = this.c.artifacts?.()
    if (artifacts !== undefined && Object.keys(artifacts).length > 0) body.artifacts = artifacts
    const rollouts = this.c.rollouts?.()
    if (rollouts !== undefined && Object.keys(rollouts).length > 0) body.rollouts = rollouts
    const tryMode = this.c.tryMode?.()
    if (tryMode?.rolledBack !== undefined) body.tryMode = tryMode
    const freshness = this.c.freshness?.()
    if (freshness !== undefined) body.freshness = freshness
    return fitStatus(body)
  }

  /**
   * Sign and send this node's status now (the interval, and a rollout step that must go at once);
   * with `ifChanged`, only if the body differs from the last published in more than its time.
   */
  async publish(opts: { ifChanged?: boolean } = {}): Promise<void> {
    if (this.stopped) return
    try {
      const body = await this.body()
      const content = contentOf(body)
      if (opts.ifChanged === true && content === this.lastContent) return
      this.lastContent = content
      const json = body as unknown as Record<string, unknown>
      if (this.c.mesh !== undefined) {
        await this.c.mesh.publishStatus(json)
      } else {
        this.own = {
          node: this.c.key,
          peerId: this.c.peerId,
          seq: body.at,
          body: json,
          receivedAt: body.at,
          stale: false
        }
      }
    } catch (err) {
      // The next call publishes whatever the body is then.
      this.lastContent = undefined
      log.error('publishing status failed: %e', err)
    }
  }

  /** Status records: the mesh's, or only our own without a mesh. */
  records(): StatusRecord[] {
    if (this.c.mesh !== undefined) return this.c.mesh.statuses()
    return this.own === undefined ? [] : [this.own]
  }

  async fleet(): Promise<FleetStatus> {
    const replica = this.c.replica
    const latest = await this.c.reconciler.revision()
    const docs = new Map(
      await Promise.all(
        replica.documentIds().map(async id => [id, await replica.open(id)] as const)
      )
    )
    return {
      fleet: replica.trust.latest.fleet,
      fleetId: replica.fleetId,
      self: this.c.peerId,
      mesh: this.c.mesh !== undefined,
      latest,
      nodes: fleetNodes({
        enrolled: await enrolledDevicesOf(replica),
        records: this.records(),
        latest,
        holds: (id, heads) => docs.get(id)?.has(heads) ?? false,
        peerIdOf: peerIdOfPublicKey,
        self: this.c.key
      })
    }
  }
}
