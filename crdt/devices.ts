/**
 * Enrolment. A device is enrolled when its public key appears in the trust statement's `nodes`
 * (root-signed) or in the `devices` document, which admin keys and operators scoped to
 * `devices` write (`rhizome enrol`): the Automerge change that adds the entry, signed by the
 * operator, is the voucher. Document shape:
 *
 * ```yaml
 * devices:
 *   <32-byte ed25519 public key, hex>:
 *     name: till-7
 *     labels: { site: berlin-3, role: pos }
 *     enrolledBy: <signer key hex>
 *     enrolledAt: 2026-11-23T21:00:00.000Z
 *     revoked: false        # true: revoked (`rhizome revoke-device`), for good
 * ```
 *
 * Revocation is final as a function of the document's history, not of its current value: a key
 * whose entry any held change marked `revoked: true` stays revoked (`revokedDevices`), whatever
 * later changes write. A revoked device is refused as a peer by every daemon that holds the entry, even one that has
 * it as a bootstrap peer, its sessions are closed and its status records ignored; a revoked key is
 * never enrolled again (give the device a new identity). Devices write no documents, so there is
 * nothing of theirs to cut.
 */
import * as Automerge from '@automerge/automerge'
import type { Replica } from './replica.ts'
import type { TrustChain } from './trust.ts'

export const DEVICES_DOC = 'devices'
const DEVICE_KEY = /^[0-9a-f]{64}$/

/** The `devices` document as a replica holds it: its value, with its history. */
export type DevicesDocument = Automerge.Doc<{ devices?: unknown }>

export interface DeviceEntry {
  name: string
  labels: Record<string, string>
  enrolledBy?: string
  enrolledAt?: string
  revoked?: boolean
}

export interface EnrolledDevice extends DeviceEntry {
  key: string
  source: 'trust' | 'devices'
}

function isEntry(v: unknown): v is DeviceEntry {
  const e = v as Partial<DeviceEntry>
  return (
    typeof e === 'object' &&
    e !== null &&
    typeof e.name === 'string' &&
    typeof e.labels === 'object' &&
    e.labels !== null
  )
}

/**
 * What one change of the `devices` document says about revocation, read from its operations.
 * An operation's id is its change's `startOp` plus its position (Automerge's change format
 * numbers operations implicitly), and an object's id is the id of the operation that made it.
 */
interface ChangeFacts {
  /** Maps made at the document's root key `devices` (the genesis change makes the first). */
  readonly devicesMaps: readonly string[]
  /** Maps made at a device key (hex) of some map: [object id, parent map id, key]. */
  readonly entries: readonly (readonly [string, string, string])[]
  /** Objects this change set `revoked` to true in. */
  readonly marks: readonly string[]
}

/**
 * Changes already read, by hash (a hash names a change's content, so an entry never goes
 * stale). When full it is emptied: the next read decodes the changes again.
 */
export const MAX_REVOCATION_MEMO = 65_536
const factsByHash = new Map<string, ChangeFacts>()
const revokedOf = new WeakMap<object, ReadonlySet<string>>()
/** Above this many changes not read yet, all changes are decoded in one pass (cheaper). */
const BULK_DECODE_FROM = 64

function factsOf(change: Automerge.DecodedChange): ChangeFacts {
  const devicesMaps: string[] = []
  const entries: [string, string, string][] = []
  const marks: string[] = []
  change.ops.forEach((op, i) => {
    if (op.action === 'makeMap' && op.key !== undefined) {
      const id = `${change.startOp + i}@${change.actor}`
      if (op.obj === '_root' && op.key === 'devices') devicesMaps.push(id)
      else if (DEVICE_KEY.test(op.key)) entries.push([id, op.obj, op.key])
    } else if (op.action === 'set' && op.key === 'revoked' && op.value === true) {
      marks.push(op.obj)
    }
  })
  return { devicesMaps, entries, marks }
}

function remember(hash: string, facts: ChangeFacts): void {
  if (factsByHash.size >= MAX_REVOCATION_MEMO) factsByHash.clear()
  factsByHash.set(hash, facts)
}

/**
 * The public keys (hex) of revoked devices: every key whose entry any change the `devices`
 * document holds marked `revoked: true`, whatever later changes say. The document holds valid
 * changes only (crdt/validity.ts), so this is a pure function of the signed changes held, the
 * same on every peer whatever order they came in, and a key once revoked stays revoked: a later
 * change setting `revoked: false`, deleting the entry or enrolling the key again (a rollback of
 * the document, a careless or hostile writer) readmits nothing.
 *
 * Each change's operations are read once (memoised by hash), so a new change costs a read of
 * that change only; the first read of a document of n changes decodes all n (about 0.1 ms each).
 */
export function revokedDevices(devicesDoc: DevicesDocument | undefined): Set<string> {
  if (devicesDoc === undefined) return new Set()
  const memo = revokedOf.get(devicesDoc)
  if (memo !== undefined) return new Set(memo)
  const metas = Automerge.getChangesMetaSince(devicesDoc, [])
  const unread = metas.filter(m => !factsByHash.has(m.hash))
  const read = new Map<string, ChangeFacts>()
  if (unread.length > BULK_DECODE_FROM) {
    for (const bytes of Automerge.getAllChanges(devicesDoc)) {
      const c = Automerge.decodeChange(bytes)
      read.set(c.hash, factsOf(c))
    }
  } else {
    for (const m of unread) {
      const c = Automerge.inspectChange(devicesDoc, m.hash)
      if (c !== null) read.set(m.hash, factsOf(c))
    }
  }
  for (const [hash, facts] of read) remember(hash, facts)
  const maps = new Set<string>()
  const entries = new Map<string, string>()
  const marked: string[] = []
  for (const { hash } of metas) {
    const f = read.get(hash) ?? factsByHash.get(hash)
    if (f === undefined) continue
    for (const id of f.devicesMaps) maps.add(id)
    marked.push(...f.marks)
    for (const [id, parent, key] of f.entries) entries.set(id, `${parent} ${key}`)
  }
  const out = new Set<string>()
  for (const obj of marked) {
    const at = entries.get(obj)
    if (at === undefined) continue
    const [parent, key] = at.split(' ') as [string, string]
    if (maps.has(parent)) out.add(key)
  }
  revokedOf.set(devicesDoc, new Set(out))
  return out
}

/**
 * Every enrolled, unrevoked device, by public key hex. The `devices` document wins over the
 * trust statement for a key in both; a key `revokedDevices` names is left out, wherever it is
 * enrolled.
 */
export function enrolledDevices(
  trust: TrustChain,
  devicesDoc: DevicesDocument | undefined
): Map<string, EnrolledDevice> {
  const revoked = revokedDevices(devicesDoc)
  const out = new Map<string, EnrolledDevice>()
  for (const n of trust.latest.nodes) {
    if (revoked.has(n.key)) continue
    out.set(n.key, { key: n.key, name: n.name, labels: { ...n.labels }, source: 'trust' })
  }
  const devices = devicesDoc?.devices
  if (typeof devices === 'object' && devices !== null) {
    for (const [key, v] of Object.entries(devices)) {
      if (!DEVICE_KEY.test(key) || !isEntry(v) || revoked.has(key)) continue
      const labels: Record<string, string> = {}
      // Labels come from a signed document, not from a type: keep scalar values, as text.
      for (const [k, l] of Object.entries(v.labels as Record<string, unknown>)) {
        if (typeof l === 'string' || typeof l === 'number' || typeof l === 'boolean') {
          labels[k] = String(l)
        }
      }
      out.set(key, {
        key,
        name: v.name,
        labels,
        enrolledBy: v.enrolledBy,
        enrolledAt: v.enrolledAt,
        source: 'devices'
      })
    }
  }
  return out
}

/** Every enrolled, unrevoked device of a replica's fleet: its trust chain and `devices` document. */
export async function enrolledDevicesOf(replica: Replica): Promise<Map<string, EnrolledDevice>> {
  const devices = replica.documentIds().includes(DEVICES_DOC)
    ? (await replica.open(DEVICES_DOC)).value
    : undefined
  return enrolledDevices(replica.trust, devices)
}
