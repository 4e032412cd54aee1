/**
 * The daemon's side of the trust lifecycle (docs/trust.md): it raises the alarms a replica
 * announces (a fork of the trust chain, a leaked key caught equivocating, held changes dropped by
 * a new cut) as log events and metrics, keeps the recently dropped changes for their authors to
 * sign again, and serves the trust state over HTTP:
 *
 *   GET  /api/trust/state     TrustState: the chain, forks, equivocations, recently dropped changes
 *   GET  /api/equivocations   JSON array of hex-encoded equivocation evidence (crdt/equivocation.ts)
 *   POST /api/equivocations   application/octet-stream evidence → {added}
 */
import { Gauge, type Registry } from 'prom-client'
import { toHex } from '../crdt/bytes.ts'
import type { InvalidatedChange } from '../crdt/document.ts'
import { encodeEquivocation, MAX_EQUIVOCATION_BYTES } from '../crdt/equivocation.ts'
import type { Replica } from '../crdt/replica.ts'
import { statementHash, type SignedTrustStatement, type TrustFork } from '../crdt/trust.ts'
import type { Route } from './http-api.ts'
import type { EventLog } from './logger.ts'

/** Dropped changes remembered for `rhizome trust invalidated` / `rhizome resign`, newest kept. */
export const MAX_INVALIDATED_KEPT = 256

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
}

export class TrustWatch {
  private readonly replica: Replica
  private readonly invalidated: InvalidatedRecord[] = []
  private invalidatedTotal = 0

  constructor(replica: Replica, events: EventLog, registry: Registry) {
    this.replica = replica
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
        method: 'POST',
        pattern: /^\/api\/equivocations$/,
        handler: async (_m, _r, _u, body) => ({
          json: { added: await this.replica.acceptEquivocation(await body()) }
        })
      }
    ]
  }
}
