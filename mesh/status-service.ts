/**
 * The status service: signed status records (`status-record.ts`), one last-writer-wins register
 * per enrolled node, gossiped over the sync streams and kept in the store's meta so a restarted
 * daemon still knows when each node was last seen.
 *
 * - `publish` signs this node's record (sequence: its clock in ms, strictly increasing) and sends
 *   it to every peer.
 * - A record from a peer is verified (enrolled key, signature, fleet), kept if newer than the one
 *   held, and relayed to every other peer.
 * - A peer's first hello and every anti-entropy round with it send it every record held.
 */
import { TypedEventEmitter } from '@libp2p/interface'
import { logger } from '@libp2p/logger'
import type { AbortOptions, Startable, TypedEventTarget } from '@libp2p/interface'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { fromHex, toHex } from '../crdt/bytes.ts'
import type { KeyPair } from '../crdt/keys.ts'
import type { Replica } from '../crdt/replica.ts'
import {
  decodeStoredStatus,
  encodeStoredStatus,
  signStatus,
  verifyStatus,
  type SignedStatus
} from './status-record.ts'
import type { SyncEvents, StatusReceiver } from './sync-service.ts'
import type { SyncStream } from './sync-stream.ts'
import type { StatusBody, StatusRecord } from './types.ts'

const log = logger('rhizome:mesh:status')
const STATUS_META_PREFIX = 'mesh/status/'

export interface StatusComponents {
  /** The streams status records travel on. */
  sync: TypedEventTarget<SyncEvents> & {
    streams(): Iterable<SyncStream>
    setStatusReceiver(receiver: StatusReceiver): void
  }
  admission: { isEnrolledKey(keyHex: string): boolean }
}

export interface StatusInit {
  replica: Replica
  identity: KeyPair
  /** A record with no newer one for this long is stale, ms. */
  staleAfterMs: number
}

export interface StatusEvents {
  /** A newer record arrived or was published. */
  status: CustomEvent<StatusRecord>
}

interface HeldStatus {
  signed: SignedStatus
  peerId: string
  receivedAt: number
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

function peerIdOfKey(keyHex: string): string {
  try {
    return peerIdFromPublicKey(publicKeyFromRaw(fromHex(keyHex))).toString()
  } catch {
    return ''
  }
}

export class StatusService extends TypedEventEmitter<StatusEvents> implements Startable {
  private readonly components: StatusComponents
  private readonly init: StatusInit
  private readonly held = new Map<string, HeldStatus>()
  private readonly ownKey: string
  private ownSeq = 0
  private readonly onGreeted = (e: CustomEvent<SyncStream>): void => {
    this.sendAll(e.detail)
  }
  private readonly onResync = (e: CustomEvent<SyncStream>): void => {
    this.sendAll(e.detail)
  }

  constructor(components: StatusComponents, init: StatusInit) {
    super()
    this.components = components
    this.init = init
    this.ownKey = toHex(init.identity.publicKey)
  }

  readonly [Symbol.toStringTag] = '@rhizome/status'

  async start(): Promise<void> {
    await this.load()
    const sync = this.components.sync
    sync.setStatusReceiver((record, from) => this.receive(record, from))
    sync.addEventListener('stream:greeted', this.onGreeted)
    sync.addEventListener('stream:resync', this.onResync)
  }

  async stop(): Promise<void> {
    const sync = this.components.sync
    sync.removeEventListener('stream:greeted', this.onGreeted)
    sync.removeEventListener('stream:resync', this.onResync)
  }

  get size(): number {
    return this.held.size
  }

  /** The newest record per node, stale ones included. */
  records(): StatusRecord[] {
    return [...this.held.values()].map(h => this.toRecord(h))
  }

  /** Sign this node's status and send it to every peer. */
  async publish(body: StatusBody, options: AbortOptions = {}): Promise<StatusRecord> {
    options.signal?.throwIfAborted()
    const replica = this.init.replica
    const seq = Math.max(Date.now(), this.ownSeq + 1)
    this.ownSeq = seq
    const signed = await signStatus(this.init.identity, replica.fleetId, seq, body, replica.ed)
    const held: HeldStatus = { signed, peerId: peerIdOfKey(this.ownKey), receivedAt: Date.now() }
    await this.keep(held)
    for (const s of this.components.sync.streams()) s.sendStatus(signed.bytes)
    return this.toRecord(held)
  }

  /** A record from a peer: verify, keep if newer, relay to every other peer. */
  async receive(record: Uint8Array, from: SyncStream): Promise<void> {
    const replica = this.init.replica
    const signed = await verifyStatus(record, replica.fleetId, replica.ed, k =>
      this.components.admission.isEnrolledKey(k)
    )
    if (signed === undefined) return
    const held = this.held.get(signed.node)
    if (held !== undefined && held.signed.seq >= signed.seq) return
    if (signed.node === this.ownKey) this.ownSeq = Math.max(this.ownSeq, signed.seq)
    await this.keep({ signed, peerId: peerIdOfKey(signed.node), receivedAt: Date.now() })
    for (const s of this.components.sync.streams()) if (s !== from) s.sendStatus(signed.bytes)
  }

  private sendAll(to: SyncStream): void {
    for (const h of this.held.values()) to.sendStatus(h.signed.bytes)
  }

  private async keep(h: HeldStatus): Promise<void> {
    this.held.set(h.signed.node, h)
    try {
      await this.init.replica.store.putMeta(
        STATUS_META_PREFIX + h.signed.node,
        encodeStoredStatus(h.signed.bytes, h.receivedAt)
      )
    } catch (err) {
      log.error('could not persist status of %s: %s', h.signed.node.slice(0, 16), errMessage(err))
    }
    this.safeDispatchEvent('status', { detail: this.toRecord(h) })
  }

  private async load(): Promise<void> {
    const replica = this.init.replica
    for (const [, bytes] of await replica.store.listMeta(STATUS_META_PREFIX)) {
      try {
        const { record, receivedAt } = decodeStoredStatus(bytes)
        const signed = await verifyStatus(
          record,
          replica.fleetId,
          replica.ed,
          k => this.components.admission.isEnrolledKey(k) || k === this.ownKey
        )
        if (signed === undefined) continue
        this.held.set(signed.node, { signed, peerId: peerIdOfKey(signed.node), receivedAt })
        if (signed.node === this.ownKey) this.ownSeq = signed.seq
      } catch (err) {
        log.error('stored status record skipped: %s', errMessage(err))
      }
    }
  }

  private toRecord(h: HeldStatus): StatusRecord {
    return {
      node: h.signed.node,
      peerId: h.peerId,
      seq: h.signed.seq,
      body: h.signed.body,
      receivedAt: h.receivedAt,
      stale: Date.now() - h.receivedAt > this.init.staleAfterMs
    }
  }
}

/** The status service, for `services:` in createLibp2p. */
export function status(init: StatusInit): (components: StatusComponents) => StatusService {
  return components => new StatusService(components, init)
}
