/**
 * The daemon's side of the trust lifecycle (docs/trust.md): it raises the alarms a replica
 * announces (a fork of the trust chain, a leaked key caught equivocating, held changes dropped by
 * a new cut) as log events and metrics, keeps the recently dropped changes for their authors to
 * sign again, and serves the trust state over HTTP:
 *
 *   GET  /api/trust/state     TrustState: the chain, forks, equivocations, recently dropped changes,
 *                             freshness
 *   GET  /api/equivocations   JSON array of hex-encoded equivocation evidence (crdt/equivocation.ts)
 *   POST /api/equivocations   application/octet-stream evidence → {added}
 *   GET  /api/beacon          the newest freeze beacon held, hex (404 when none)
 *   POST /api/beacon          application/octet-stream beacon (crdt/beacon.ts) → {added}
 *
 * Freshness (crdt/beacon.ts): judged against a time that never goes back — the larger of the
 * clock, a persisted floor plus the time since it was read (a clock set back, or a device
 * booted with no clock, cannot make an expired beacon look valid), and the newest beacon's own
 * issue time. Judged every second; `behind` counts only once it lasted BEHIND_GRACE_MS (a beacon
 * usually arrives just before the changes it names). Stale: a `trust.stale` event, the metric
 * `rhizome_stale`, the status body's `freshness`; workloads keep running.
 */
import { Gauge, type Registry } from 'prom-client'
import { ByteReader, ByteWriter } from '../crdt/bytes.ts'
import { freshness, type Freshness } from '../crdt/beacon.ts'
import type { FreshnessStatus } from '../crdt/fleet-status.ts'
import type { Store } from '../crdt/store.ts'
import { toHex } from '../crdt/bytes.ts'
import type { InvalidatedChange } from '../crdt/document.ts'
import { encodeEquivocation, MAX_EQUIVOCATION_BYTES } from '../crdt/equivocation.ts'
import type { Replica } from '../crdt/replica.ts'
import { statementHash, type SignedTrustStatement, type TrustFork } from '../crdt/trust.ts'
import { HttpError, type Route } from './http-api.ts'
import type { EventLog } from './logger.ts'

/** Dropped changes remembered for `rhizome trust invalidated` / `rhizome resign`, newest kept. */
export const MAX_INVALIDATED_KEPT = 256
/** How often freshness is judged, and the time floor persisted (every 60th time). */
export const FRESHNESS_CHECK_MS = 1000
/** A beacon naming heads this node lacks makes it stale only once that lasted this long. */
export const BEHIND_GRACE_MS = 10_000
const TIME_FLOOR_KEY = 'time-floor'

/**
 * A time that never goes back: the larger of the clock and the persisted floor plus the time
 * since it was read, raised by the signed issue times of beacons.
 */
export class TimeFloor {
  private floor: number
  private readonly readAt = performance.now()
  private readonly store: Store

  private constructor(store: Store, floor: number) {
    this.store = store
    this.floor = floor
  }

  static async open(store: Store): Promise<TimeFloor> {
    const bytes = await store.getMeta(TIME_FLOOR_KEY)
    let floor = 0
    if (bytes !== undefined) {
      try {
        floor = new ByteReader(bytes, 'time floor').varint()
      } catch {
        floor = 0
      }
    }
    return new TimeFloor(store, floor)
  }

  now(): number {
    return Math.max(Date.now(), this.floor + (performance.now() - this.readAt))
  }

  /** A signed time seen (a beacon's issue time): now is at least that. */
  raise(t: number): void {
    const elapsed = performance.now() - this.readAt
    if (t - elapsed > this.floor) this.floor = Math.ceil(t - elapsed)
  }

  async persist(): Promise<void> {
    await this.store.putMeta(
      TIME_FLOOR_KEY,
      new ByteWriter().varint(Math.floor(this.now())).finish()
    )
  }
}

export interface TrustStatementSummary {
  version: number
  hash: string
  /** On the chain (in force or before it), or held beside it (a fork's other branch). */
  onChain: boolean
  issued: string
  signatures: number
}

export interface EquivocationSummary {
  docId: string
  actor: string
  key: string
  /** Who the trust chain says the key is or was. */
  name: string | null
  seq: number
  hashes: [string, string]
}

export interface InvalidatedRecord extends InvalidatedChange {
  docId: string
  /** When this daemon dropped it (its clock; informational). */
  at: string
}

export interface FreshnessView extends Freshness {
  /** Since when the current state holds (this node's time floor, ms). */
  since: number
  now: number
}

export interface TrustState {
  fleet: string
  fleetId: string
  version: number
  /** The statement in force. */
  latest: SignedTrustStatement['statement']
  statements: TrustStatementSummary[]
  /** An unresolved fork: trust changes are halted until a statement extends one branch. */
  forked: TrustFork | null
  forks: readonly TrustFork[]
  equivocations: EquivocationSummary[]
  invalidated: InvalidatedRecord[]
  freshness: FreshnessView
}

export class TrustWatch {
  private readonly replica: Replica
  private readonly events: EventLog
  private readonly invalidated: InvalidatedRecord[] = []
  private invalidatedTotal = 0
  private readonly time: TimeFloor
  private current: FreshnessView
  private behindSince: number | undefined
  private timer: ReturnType<typeof setInterval> | undefined
  private ticks = 0

  constructor(replica: Replica, events: EventLog, registry: Registry, time: TimeFloor) {
    this.replica = replica
    this.events = events
    this.time = time
    const now = time.now()
    this.current = { state: 'unknown', since: now, now }
    replica.addEventListener('beacon', ev => {
      this.time.raise(ev.detail.issued)
      this.judge()
    })
    replica.addEventListener('trust', ev => {
      events('info', 'trust.statement', {
        version: ev.detail.version,
        inForce: replica.trust.version
      })
    })
    replica.addEventListener('fork', ev => {
      events('error', 'trust.fork', {
        version: ev.detail.version,
        statements: ev.detail.hashes,
        note: `two statements signed by root keys claim version ${ev.detail.version}: trust changes are halted until a threshold of root keys signs version ${ev.detail.version + 1} extending one of them (rhizome trust propose, sign, publish)`
      })
    })
    replica.addEventListener('equivocation', ev => {
      const e = ev.detail
      const key = e.actor.slice(0, 64)
      events('error', 'trust.equivocation', {
        doc: e.docId,
        key,
        name: replica.trust.describe(key)?.name ?? null,
        seq: e.seq,
        changes: e.hashes,
        note: 'one key signed two different changes with the same sequence number: it has leaked. That session is cut; revoke the key (rhizome trust propose --remove KEY, sign, publish)'
      })
    })
    replica.addEventListener('invalidated', ev => {
      const at = new Date().toISOString()
      for (const c of ev.detail.changes) {
        this.invalidated.push({ ...c, docId: ev.detail.docId, at })
      }
      this.invalidatedTotal += ev.detail.changes.length
      this.invalidated.splice(0, Math.max(0, this.invalidated.length - MAX_INVALIDATED_KEPT))
      events('warn', 'trust.invalidated', {
        doc: ev.detail.docId,
        changes: ev.detail.changes.length,
        reasons: [...new Set(ev.detail.changes.map(c => c.reason))],
        note: 'held changes are no longer valid and were dropped; honest ones can be signed again (rhizome trust invalidated, rhizome resign)'
      })
    })
    const gauge = (name: string, help: string, value: () => number): void => {
      void new Gauge({
        name,
        help,
        registers: [registry],
        collect() {
          this.set(value())
        }
      })
    }
    gauge('rhizome_trust_version', 'Version of the trust statement in force', () => {
      return replica.trust.version
    })
    gauge('rhizome_trust_forked', '1 while the trust chain has an unresolved fork', () =>
      replica.trust.forked === undefined ? 0 : 1
    )
    gauge(
      'rhizome_trust_equivocations',
      'Actors caught using one sequence number for two changes (leaked keys)',
      () => replica.equivocations().length
    )
    gauge(
      'rhizome_trust_invalidated_changes_total',
      'Held changes dropped because a cut or evidence made them invalid',
      () => this.invalidatedTotal
    )
    gauge(
      'rhizome_stale',
      '1 while this node may be kept on old state: its newest freeze beacon expired or names what it lacks',
      () => (this.current.state === 'stale' ? 1 : 0)
    )
    gauge(
      'rhizome_beacon_expires_seconds',
      'Seconds until the newest freeze beacon held expires (negative: expired; absent beacon: 0)',
      () =>
        this.current.beacon === undefined
          ? 0
          : (this.current.beacon.expires - this.time.now()) / 1000
    )
  }

  /** Start judging freshness every second (and persisting the time floor every minute). */
  start(): void {
    const b = this.replica.beacon
    if (b !== undefined) this.time.raise(b.issued)
    this.judge()
    this.timer = setInterval(() => {
      this.judge()
      if (++this.ticks % 60 === 0) {
        void this.time.persist().catch(() => {})
      }
    }, FRESHNESS_CHECK_MS)
    this.timer.unref()
  }

  async stop(): Promise<void> {
    if (this.timer !== undefined) clearInterval(this.timer)
    await this.time.persist().catch(() => {})
  }

  /** This node's freshness as its status body carries it (absent: no beacon held). */
  freshnessStatus(): FreshnessStatus | undefined {
    const f = this.current
    if (f.state === 'unknown' || f.beacon === undefined) return undefined
    return {
      state: f.state,
      expires: f.beacon.expires,
      ...(f.reason === undefined ? {} : { reason: f.reason })
    }
  }

  private judge(): void {
    const now = this.time.now()
    let f = freshness(this.replica.beacon, now, this.replica.heldState())
    if (f.reason === 'behind') {
      this.behindSince ??= now
      if (now - this.behindSince < BEHIND_GRACE_MS) {
        // Not yet: judge it as if the beacon named nothing this node lacks.
        const b = this.replica.beacon
        f =
          b === undefined || now <= b.expires
            ? { state: 'fresh', ...(f.beacon === undefined ? {} : { beacon: f.beacon }) }
            : {
                state: 'stale',
                reason: 'expired',
                ...(f.beacon === undefined ? {} : { beacon: f.beacon })
              }
      }
    } else {
      this.behindSince = undefined
    }
    const prev = this.current
    const changed = prev.state !== f.state || prev.reason !== f.reason
    this.current = { ...f, since: changed ? now : prev.since, now }
    if (!changed) return
    if (f.state === 'stale') {
      this.events('warn', 'trust.stale', {
        reason: f.reason,
        beaconIssued: f.beacon?.issued,
        beaconExpires: f.beacon?.expires,
        lacking: f.lacking,
        note:
          f.reason === 'expired'
            ? 'the newest freeze beacon this node holds has expired: no peer brought a newer one. It may be cut off, or kept on old state by a peer; it keeps running its last valid config'
            : 'a freeze beacon names changes or a trust version this node does not have: its peers are not giving it what was issued; it keeps running its last valid config'
      })
    } else if (prev.state === 'stale') {
      this.events('info', 'trust.fresh', { beaconExpires: f.beacon?.expires })
    }
  }

  state(): TrustState {
    const trust = this.replica.trust
    const chain = new Set(trust.all.map(s => statementHash(s.statement)))
    return {
      fleet: trust.latest.fleet,
      fleetId: trust.fleetId,
      version: trust.version,
      latest: trust.latest,
      statements: trust.held.map(s => {
        const hash = statementHash(s.statement)
        return {
          version: s.statement.version,
          hash,
          onChain: chain.has(hash),
          issued: s.statement.issued,
          signatures: s.signatures.length
        }
      }),
      forked: trust.forked ?? null,
      forks: trust.forks,
      freshness: { ...this.current, now: this.time.now() },
      equivocations: this.replica.equivocations().map(e => ({
        docId: e.docId,
        actor: e.actor,
        key: e.actor.slice(0, 64),
        name: trust.describe(e.actor.slice(0, 64))?.name ?? null,
        seq: e.seq,
        hashes: e.hashes
      })),
      invalidated: [...this.invalidated]
    }
  }

  routes(): Route[] {
    return [
      {
        method: 'GET',
        pattern: /^\/api\/trust\/state$/,
        handler: async () => ({ json: this.state() })
      },
      {
        method: 'GET',
        pattern: /^\/api\/equivocations$/,
        handler: async () => ({
          json: this.replica
            .equivocations()
            .map(encodeEquivocation)
            .filter(b => b.length <= MAX_EQUIVOCATION_BYTES)
            .map(toHex)
        })
      },
      {
        method: 'GET',
        pattern: /^\/api\/beacon$/,
        handler: async () => {
          const b = this.replica.beacon
          if (b === undefined) {
            throw new HttpError(
              404,
              'NotFound',
              'this daemon holds no freeze beacon (rhizome beacon issues one)'
            )
          }
          return { json: { beacon: toHex(b.bytes) } }
        }
      },
      {
        method: 'POST',
        pattern: /^\/api\/beacon$/,
        handler: async (_m, _r, _u, body) => {
          const added = await this.replica.acceptBeacon(await body())
          this.judge()
          return { json: { added } }
        }
      },
      {
        method: 'POST',
        pattern: /^\/api\/equivocations$/,
        handler: async (_m, _r, _u, body) => ({
          json: { added: await this.replica.acceptEquivocation(await body()) }
        })
      }
    ]
  }
}
