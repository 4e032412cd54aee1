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
 * whose entry a held change marked `revoked: true` stays revoked (`revokedDevices`), whatever
 * later changes write, provided the change's signer could reach the device when it made the mark
 * (an admin, or an operator whose selector the device's labels matched then). A revoked device is
 * refused as a peer by every daemon that holds the entry, even one that has it as a bootstrap
 * peer, its sessions are closed and its status records ignored; a revoked key is never enrolled
 * again (give the device a new identity). Devices write no documents, so there is nothing of
 * theirs to cut.
 *
 * Writes are scoped like documents: an operator's change to the entry of a device outside its
 * selector (in the change's own past) counts for nothing, and every entry is read from the writes
 * that count (`deviceWrites`), so such an operator cannot relabel, rename, delete or re-add it.
 */
import * as Automerge from '@automerge/automerge'
import { selectorMatches, writerScopes, type ConfigDocument } from './effective-config.ts'
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

type Labels = Record<string, string>

/** Labels come from a signed document, not from a type: keep scalar values, as text. */
function scalarLabels(raw: unknown): Labels {
  const labels: Labels = {}
  if (typeof raw !== 'object' || raw === null) return labels
  for (const [k, l] of Object.entries(raw as Record<string, unknown>)) {
    if (typeof l === 'string' || typeof l === 'number' || typeof l === 'boolean') {
      labels[k] = String(l)
    }
  }
  return labels
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
  /** Every object it made: [object id, parent object id, map key or '' in a list or text]. */
  readonly made: readonly (readonly [string, string, string])[]
  /** Where its operations write: `<object id> <map key>` (no key in a list or text), once each. */
  readonly writes: readonly string[]
}

/**
 * Changes already read, by hash (a hash names a change's content, so an entry never goes
 * stale). When full it is emptied: the next read decodes the changes again.
 */
export const MAX_REVOCATION_MEMO = 65_536
const factsByHash = new Map<string, ChangeFacts>()
/** Above this many changes not read yet, all changes are decoded in one pass (cheaper). */
const BULK_DECODE_FROM = 64

function factsOf(change: Automerge.DecodedChange): ChangeFacts {
  const devicesMaps: string[] = []
  const entries: [string, string, string][] = []
  const marks: string[] = []
  const made: [string, string, string][] = []
  const writes = new Set<string>()
  change.ops.forEach((op, i) => {
    // Decoded list and text operations carry an element id, not a key, whatever the type says.
    const key = (op.key as string | undefined) ?? ''
    writes.add(`${op.obj} ${key}`)
    const id = `${change.startOp + i}@${change.actor}`
    if (op.action.startsWith('make')) made.push([id, op.obj, key])
    if (op.action === 'makeMap' && key !== '') {
      if (op.obj === '_root' && key === 'devices') devicesMaps.push(id)
      else if (DEVICE_KEY.test(key)) entries.push([id, op.obj, key])
    } else if (op.action === 'set' && key === 'revoked' && op.value === true) {
      marks.push(op.obj)
    }
  })
  return { devicesMaps, entries, marks, made, writes: [...writes] }
}

function remember(hash: string, facts: ChangeFacts): void {
  if (factsByHash.size >= MAX_REVOCATION_MEMO) factsByHash.clear()
  factsByHash.set(hash, facts)
}

type ReadChanges = { metas: Automerge.ChangeMetadata[]; read: Map<string, ChangeFacts> }
/** Per document value: `revokedDevices` and `outOfReach` read the same value one after the other. */
const changesOf = new WeakMap<object, ReadChanges>()

/** The document's changes and what each says, decoding only the changes not read before. */
function readChanges(devicesDoc: DevicesDocument): ReadChanges {
  const held = changesOf.get(devicesDoc)
  if (held !== undefined) return held
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
  for (const { hash } of metas) {
    const f = factsByHash.get(hash)
    if (f !== undefined && !read.has(hash)) read.set(hash, f)
  }
  changesOf.set(devicesDoc, { metas, read })
  return { metas, read }
}

/** A revocation mark a change held made: the device, the change, and the key that signed it. */
interface Mark {
  readonly device: string
  readonly hash: string
  readonly signer: string
}

/** Per document value: every mark its changes made, whoever signed them (trust not asked yet). */
const marksOf = new WeakMap<object, readonly Mark[]>()

function marksIn(devicesDoc: DevicesDocument): readonly Mark[] {
  const held = marksOf.get(devicesDoc)
  if (held !== undefined) return held
  const { metas, read } = readChanges(devicesDoc)
  const maps = new Set<string>()
  const entries = new Map<string, string>()
  const marked: (readonly [string, Automerge.ChangeMetadata])[] = []
  for (const m of metas) {
    const f = read.get(m.hash)
    if (f === undefined) continue
    for (const id of f.devicesMaps) maps.add(id)
    for (const obj of f.marks) marked.push([obj, m])
    for (const [id, parent, key] of f.entries) entries.set(id, `${parent} ${key}`)
  }
  const out: Mark[] = []
  for (const [obj, m] of marked) {
    const at = entries.get(obj)
    if (at === undefined) continue
    const [parent, device] = at.split(' ') as [string, string]
    if (maps.has(parent)) out.push({ device, hash: m.hash, signer: m.actor.slice(0, 64) })
  }
  marksOf.set(devicesDoc, out)
  return out
}

/** What `revokedDevices` and `outOfReach` ask of the trust chain. */
type ScopeTrust = Pick<TrustChain, 'scopeOf' | 'latest' | 'epoch'>

const revokedOf = new WeakMap<object, { trust: object; epoch: number; out: ReadonlySet<string> }>()

/**
 * The public keys (hex) of revoked devices: every key whose entry some change the `devices`
 * document holds marked `revoked: true`, whatever later changes say, provided the change's
 * signer could reach the device when it made the mark (`markCounts`): an admin always, an
 * operator when every set of labels the device had in the change's own past (see `LabelMove`;
 * with no entry there, its trust-statement labels; a key the fleet never knew: always) matched
 * the operator's selector, and no change of the operator's own in that past moved the device
 * into its scope (`outOfReach`). So a leaked operator key for one site cannot cut off a device
 * of another, and cannot relabel a device into its scope to revoke it either.
 *
 * A pure function of the signed objects held, the same on every peer whatever order they came
 * in: the document holds valid changes only (crdt/validity.ts), a change's signer is the key its
 * actor id names, "before" is the change's own dependencies (never arrival order), and the
 * selector is the one `TrustChain.scopeOf` gives: the operator's latest grant on the chain, which
 * is itself a function of the statements held (forks included: a branch grants nothing until it
 * is the chain). A new statement can change the verdict, but only by joining the chain, so the
 * same way on every peer that holds it; narrowing an operator discounts its marks outside the new
 * selector (authority lost applies to the past too, as for node scope: an admin revokes such a
 * device again if it must stay out). Once a mark counts, later changes cannot undo it: setting
 * `revoked: false`, deleting the entry or enrolling the key again (a rollback of the document, a
 * careless or hostile writer) readmits nothing.
 *
 * Each change's operations are read once (memoised by hash), so a new change costs a read of
 * that change only; the first read of a document of n changes decodes all n (about 0.1 ms each).
 * An admin's mark costs nothing more; an operator's reads the document's history as `outOfReach`
 * does (shared, memoised per document value and trust epoch).
 */
export function revokedDevices(
  trust: ScopeTrust,
  devicesDoc: DevicesDocument | undefined
): Set<string> {
  if (devicesDoc === undefined) return new Set()
  const memo = revokedOf.get(devicesDoc)
  if (memo !== undefined && memo.trust === trust && memo.epoch === trust.epoch) {
    return new Set(memo.out)
  }
  const out = new Set<string>()
  for (const mark of marksIn(devicesDoc)) {
    if (!out.has(mark.device) && markCounts(trust, devicesDoc, mark)) out.add(mark.device)
  }
  revokedOf.set(devicesDoc, { trust, epoch: trust.epoch, out: new Set(out) })
  return out
}

/** A device's labels before a change, by `<change hash> <device>` (a change's past is fixed). */
const beforeByChange = new Map<string, readonly Labels[]>()

/** `labelsBefore`, memoised (a change not in the history, `m.hash` '', is not remembered). */
function beforeOf(h: History, device: string, m: Automerge.ChangeMetadata): readonly Labels[] {
  if (m.hash === '') return labelsBefore(h, device, m)
  const id = `${m.hash} ${device}`
  const held = beforeByChange.get(id)
  if (held !== undefined) return held
  const before = labelsBefore(h, device, m)
  if (beforeByChange.size >= MAX_REVOCATION_MEMO) beforeByChange.clear()
  beforeByChange.set(id, before)
  return before
}

/** Does this mark revoke its device: could its signer reach the device when it made it? */
function markCounts(trust: ScopeTrust, devicesDoc: DevicesDocument, mark: Mark): boolean {
  const scope = trust.scopeOf(mark.signer)
  if (scope.all) return true
  if (scope.selector === undefined) return false
  // A mark in a write to the entry that does not count (`deviceWrites`) does not count either.
  if (deviceWrites(trust, devicesDoc).voided.get(mark.device)?.has(mark.hash) === true) return false
  const h = history(devicesDoc)
  const m = h.metas.get(mark.hash)
  if (m === undefined) return false
  let before = beforeOf(h, mark.device, m)
  if (before.length === 0) {
    const fromStatement = trust.latest.nodes.find(n => n.key === mark.device)
    // A key the fleet never knew: revoking it harms nobody.
    if (fromStatement === undefined) return true
    before = [fromStatement.labels]
  }
  const selector = scope.selector
  if (!before.every(b => selectorMatches(selector, b))) return false
  const moves = movesInto(trust, devicesDoc).get(mark.signer)?.get(mark.device) ?? []
  return !moves.some(x => inPast(h, x, m))
}

/**
 * Would a `revoked: true` on `device`'s entry, signed by `signer` on top of the document as it
 * is, revoke it (`revokedDevices`)? What `rhizome revoke-device` asks before it signs.
 */
export function mayRevoke(
  trust: ScopeTrust,
  devicesDoc: DevicesDocument | undefined,
  signer: string,
  device: string
): boolean {
  const scope = trust.scopeOf(signer)
  if (scope.all) return true
  if (scope.selector === undefined) return false
  const entry = (devicesDoc?.devices as Record<string, unknown> | undefined)?.[device]
  const labels = isEntry(entry)
    ? scalarLabels(entry.labels)
    : trust.latest.nodes.find(n => n.key === device)?.labels
  if (labels !== undefined && !selectorMatches(scope.selector, labels)) return false
  if (!mayWrite(trust, devicesDoc, signer, device, labels)) return false
  return outOfReach(trust, devicesDoc).get(signer)?.has(device) !== true
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
  const revoked = revokedDevices(trust, devicesDoc)
  const out = new Map<string, EnrolledDevice>()
  for (const n of trust.latest.nodes) {
    if (revoked.has(n.key)) continue
    out.set(n.key, { key: n.key, name: n.name, labels: { ...n.labels }, source: 'trust' })
  }
  const devices = devicesDoc?.devices
  if (typeof devices === 'object' && devices !== null) {
    for (const [key, v] of Object.entries(devices)) {
      if (!DEVICE_KEY.test(key) || !isEntry(v) || revoked.has(key)) continue
      const labels = scalarLabels(v.labels)
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
  if (devicesDoc === undefined) return out
  // An entry some write did not count for: as the writes that count made it (`deviceWrites`).
  for (const [key, e] of deviceWrites(trust, devicesDoc).entries) {
    out.delete(key)
    if (revoked.has(key)) continue
    const n = trust.latest.nodes.find(x => x.key === key)
    if (e !== undefined) {
      const { name, labels, enrolledBy, enrolledAt } = e
      out.set(key, { key, name, labels, enrolledBy, enrolledAt, source: 'devices' })
    } else if (n !== undefined) {
      out.set(key, { key, name: n.name, labels: { ...n.labels }, source: 'trust' })
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

/**
 * What one change did to one device's labels: the labels the device last had before it, in the
 * change's own past (the document at the change's dependencies; for an entry deleted there, the
 * labels it had where it was last seen on each path back, so deleting and re-adding launders
 * nothing; none: the key never had an entry there), and the labels it has after it.
 */
interface LabelMove {
  readonly device: string
  readonly before: readonly Labels[]
  /** Not read for a key new here (no `before`): only a trust-statement node needs it. */
  readonly after?: Labels
}

/** Moves already worked out, by change hash (a change's past never changes, nor do they). */
const movesByHash = new Map<string, readonly LabelMove[]>()
/** Objects nested deeper than this under a device entry are not traced back to it. */
const MAX_ENTRY_DEPTH = 64

/** Which device entries each change touched, for one document (built once per document value). */
interface History {
  readonly metas: ReadonlyMap<string, Automerge.ChangeMetadata>
  /**
   * Each change's place in the document's history, which Automerge keeps in causal order (a
   * change comes after everything it depends on): a change placed after another is not in its
   * past.
   */
  readonly order: ReadonlyMap<string, number>
  readonly facts: ReadonlyMap<string, ChangeFacts>
  /** Device key → changes that wrote in its entry (or in the map holding it). */
  readonly touchers: ReadonlyMap<string, ReadonlySet<string>>
  /** Changes that replaced the whole `devices` map: they touch every entry. */
  readonly replacers: ReadonlySet<string>
  /** Change → the device keys it touched. */
  readonly touched: ReadonlyMap<string, ReadonlySet<string>>
  /** Every map made at the document's root key `devices`. */
  readonly devicesMaps: ReadonlySet<string>
  /** The device entry an object sits in, if any. */
  readonly deviceOf: (obj: string) => string | undefined
  readonly backend: ReturnType<typeof Automerge.getBackend>
}
const historyOf = new WeakMap<object, History>()

function history(devicesDoc: DevicesDocument): History {
  const held = historyOf.get(devicesDoc)
  if (held !== undefined) return held
  const { metas, read } = readChanges(devicesDoc)
  const devicesMaps = new Set<string>()
  const parentOf = new Map<string, readonly [string, string]>()
  for (const f of read.values()) {
    for (const id of f.devicesMaps) devicesMaps.add(id)
    for (const [id, parent, key] of f.made) parentOf.set(id, [parent, key])
  }
  const deviceOfObj = new Map<string, string | undefined>()
  // The device entry an object sits in, whatever its depth: walk up to a `devices` map.
  const deviceOf = (obj: string): string | undefined => {
    if (deviceOfObj.has(obj)) return deviceOfObj.get(obj)
    let at = obj
    let found: string | undefined
    for (let i = 0; i < MAX_ENTRY_DEPTH; i++) {
      const up = parentOf.get(at)
      if (up === undefined) break
      if (devicesMaps.has(up[0])) {
        if (DEVICE_KEY.test(up[1])) found = up[1]
        break
      }
      at = up[0]
    }
    deviceOfObj.set(obj, found)
    return found
  }
  const touchers = new Map<string, Set<string>>()
  const replacers = new Set<string>()
  const touched = new Map<string, Set<string>>()
  for (const [hash, f] of read) {
    const mine = new Set<string>()
    for (const w of f.writes) {
      const cut = w.indexOf(' ')
      const obj = w.slice(0, cut)
      const key = w.slice(cut + 1)
      if (obj === '_root') {
        if (key === 'devices') replacers.add(hash)
        continue
      }
      const device = devicesMaps.has(obj) ? (DEVICE_KEY.test(key) ? key : undefined) : deviceOf(obj)
      if (device !== undefined) mine.add(device)
    }
    touched.set(hash, mine)
    for (const d of mine) {
      const t = touchers.get(d) ?? new Set<string>()
      t.add(hash)
      touchers.set(d, t)
    }
  }
  const h: History = {
    metas: new Map(metas.map(m => [m.hash, m])),
    order: new Map(metas.map((m, i) => [m.hash, i])),
    facts: read,
    touchers,
    replacers,
    touched,
    devicesMaps,
    deviceOf,
    backend: Automerge.getBackend(devicesDoc)
  }
  historyOf.set(devicesDoc, h)
  return h
}

/** A device's labels in the document as of `heads`; undefined when it has no entry there. */
function labelsAt(h: History, device: string, heads: string[]): Labels | undefined {
  const devices = h.backend.getWithType('_root', 'devices', heads)
  if (devices?.[0] !== 'map') return undefined
  const entry = h.backend.getWithType(devices[1], device, heads)
  if (entry?.[0] !== 'map') return undefined
  const labels = h.backend.getWithType(entry[1], 'labels', heads)
  return labels?.[0] === 'map' ? scalarLabels(h.backend.materialize(labels[1], heads)) : {}
}

/** The labels a device last had before a change, in that change's past (see `LabelMove`). */
function labelsBefore(h: History, device: string, m: Automerge.ChangeMetadata): Labels[] {
  // No change placed before this one wrote at its key (an entry, even in a new `devices` map, is
  // made by a write there): a key new here, read without asking Automerge (most enrolments).
  const place = h.order.get(m.hash) ?? Infinity
  let first = Infinity
  for (const t of h.touchers.get(device) ?? []) first = Math.min(first, h.order.get(t) ?? Infinity)
  if (first >= place) return []
  const at = labelsAt(h, device, m.deps)
  if (at !== undefined) return [at]
  // Deleted before this change: on each path back, the labels where the entry was last seen.
  // Only the latest changes that touched the entry count: one an ancestor of another such change
  // is seen through it (a change's dependencies also name its actor's previous change, which is
  // often an ancestor of another dependency). The change's past is visited latest first (the
  // history is in causal order), and whatever lies behind a touching change is covered by it.
  const past: Automerge.ChangeMetadata[] = []
  const seen = new Set<string>()
  const stack = [...m.deps]
  while (stack.length > 0) {
    const x = h.metas.get(stack.pop() as string)
    // Nothing placed before the first change that wrote the entry can say anything of it.
    if (x === undefined || seen.has(x.hash) || (h.order.get(x.hash) ?? 0) < first) continue
    seen.add(x.hash)
    past.push(x)
    stack.push(...x.deps)
  }
  past.sort((x, y) => (h.order.get(y.hash) ?? 0) - (h.order.get(x.hash) ?? 0))
  const out: Labels[] = []
  const covered = new Set<string>()
  for (const x of past) {
    if (covered.has(x.hash)) {
      for (const d of x.deps) covered.add(d)
      continue
    }
    if (h.replacers.has(x.hash) || h.touched.get(x.hash)?.has(device) === true) {
      const last = labelsAt(h, device, [x.hash]) ?? labelsAt(h, device, x.deps)
      if (last !== undefined) {
        out.push(last)
        for (const d of x.deps) covered.add(d)
      }
    }
  }
  return out
}

/** The device entries a change wrote in: a new `devices` map writes every entry before or after it. */
const writtenByHash = new Map<string, readonly string[]>()

function devicesWritten(h: History, m: Automerge.ChangeMetadata): readonly string[] {
  if (!h.replacers.has(m.hash)) return [...(h.touched.get(m.hash) ?? [])]
  const held = writtenByHash.get(m.hash)
  if (held !== undefined) return held
  const all = new Set<string>(h.touched.get(m.hash))
  for (const heads of [m.deps, [m.hash]]) {
    const map = h.backend.getWithType('_root', 'devices', heads)
    if (map?.[0] === 'map') for (const k of h.backend.keys(map[1], heads)) all.add(k)
  }
  const out = [...all].filter(k => DEVICE_KEY.test(k))
  if (writtenByHash.size >= MAX_REVOCATION_MEMO) writtenByHash.clear()
  writtenByHash.set(m.hash, out)
  return out
}

function sameLabels(a: Labels, b: Labels): boolean {
  const ka = Object.keys(a)
  return ka.length === Object.keys(b).length && ka.every(k => a[k] === b[k])
}

function movesOf(h: History, m: Automerge.ChangeMetadata): readonly LabelMove[] {
  const held = movesByHash.get(m.hash)
  if (held !== undefined) return held
  const out: LabelMove[] = []
  for (const device of devicesWritten(h, m)) {
    const before = beforeOf(h, device, m)
    if (before.length === 0) {
      out.push({ device, before })
      continue
    }
    const after = labelsAt(h, device, [m.hash])
    if (after === undefined) continue
    if (before.length === 1 && sameLabels(before[0] as Labels, after)) continue
    out.push({ device, before, after })
  }
  if (movesByHash.size >= MAX_REVOCATION_MEMO) movesByHash.clear()
  movesByHash.set(m.hash, out)
  return out
}

/** Per operator key, per device: the changes of its own that moved the device into its scope. */
type Moves = ReadonlyMap<string, ReadonlyMap<string, readonly string[]>>

const outOfReachOf = new WeakMap<
  object,
  { trust: object; epoch: number; moves: Moves; out: ReadonlyMap<string, ReadonlySet<string>> }
>()

/**
 * Node scope, read from the `devices` document's history: for each operator key, the devices it
 * may not reach because one of its own changes moved them into its scope. A change signed by
 * operator O moves device D into O's scope when D's labels after it match O's selector and the
 * labels D last had before it (in the change's own past, see `LabelMove`; a key with no entry
 * there: its trust-statement labels, if any) did not. Creating the entry of a key never seen,
 * relabelling inside the scope and moving out of it are fine; changes by admins or by other
 * operators never count against O. O's selector is the one `TrustChain.scopeOf` gives (the same
 * the scope check uses), and the document holds valid changes only, so this is a pure function
 * of the signed objects held, the same on every peer whatever order they came in.
 *
 * Cost: each change is read once (`revokedDevices` shares the decoding); an operator's change
 * that touches an entry other changes touched reads that entry at the change's dependencies
 * (and walks back through the history if it had been deleted), memoised by change hash.
 */
export function outOfReach(
  trust: ScopeTrust,
  devicesDoc: DevicesDocument | undefined
): ReadonlyMap<string, ReadonlySet<string>> {
  if (devicesDoc === undefined) return new Map()
  return scopeMoves(trust, devicesDoc).out
}

/** `outOfReach`, with the changes that made each move (`revokedDevices` asks which came first). */
function movesInto(trust: ScopeTrust, devicesDoc: DevicesDocument): Moves {
  return scopeMoves(trust, devicesDoc).moves
}

function scopeMoves(
  trust: ScopeTrust,
  devicesDoc: DevicesDocument
): { moves: Moves; out: ReadonlyMap<string, ReadonlySet<string>> } {
  const memo = outOfReachOf.get(devicesDoc)
  if (memo !== undefined && memo.trust === trust && memo.epoch === trust.epoch) return memo
  const h = history(devicesDoc)
  const statementLabels = new Map(trust.latest.nodes.map(n => [n.key, n.labels]))
  const moves = new Map<string, Map<string, string[]>>()
  for (const m of h.metas.values()) {
    const signer = m.actor.slice(0, 64)
    const scope = trust.scopeOf(signer)
    // An admin reaches every node anyway; an operator without a selector reaches none.
    if (scope.all || scope.selector === undefined) continue
    const selector = scope.selector
    for (const move of movesOf(h, m)) {
      const fromStatement = statementLabels.get(move.device)
      const before =
        move.before.length > 0 ? move.before : fromStatement === undefined ? [] : [fromStatement]
      if (!before.some(b => !selectorMatches(selector, b))) continue
      const after = move.after ?? labelsAt(h, move.device, [m.hash])
      if (after === undefined || !selectorMatches(selector, after)) continue
      const mine = moves.get(signer) ?? new Map<string, string[]>()
      mine.set(move.device, [...(mine.get(move.device) ?? []), m.hash])
      moves.set(signer, mine)
    }
  }
  const out = new Map([...moves].map(([signer, ds]) => [signer, new Set(ds.keys())]))
  const held = { trust, epoch: trust.epoch, moves, out }
  outOfReachOf.set(devicesDoc, held)
  return held
}

/**
 * Is change `ancestor` in the past of change `m` (reachable through its dependencies)? The walk
 * stops at changes placed before `ancestor` in the history (causal order: they cannot lead to
 * it), so it visits at most the changes between the two.
 */
function inPast(h: History, ancestor: string, m: Automerge.ChangeMetadata): boolean {
  const floor = h.order.get(ancestor)
  if (floor === undefined || floor >= (h.order.get(m.hash) ?? Infinity)) return false
  const seen = new Set<string>()
  const stack = [...m.deps]
  while (stack.length > 0) {
    const x = stack.pop() as string
    if (x === ancestor) return true
    if (seen.has(x) || (h.order.get(x) ?? -1) < floor) continue
    seen.add(x)
    stack.push(...(h.metas.get(x)?.deps ?? []))
  }
  return false
}

// ---- writes to a device entry: only a writer that reaches the device counts ----------------------

/** One operation at a map key in a device's entry, or at the `devices` keys that hold the entry. */
interface KeyOp {
  /** Its id (`counter@actor`); for a make operation, the id of the object it made. */
  readonly id: string
  readonly counter: number
  readonly actor: string
  readonly obj: string
  readonly key: string
  /** `map`, `text`: it made that object; `set`: a scalar; `del`: a deletion; `other`: the rest. */
  readonly kind: 'map' | 'text' | 'set' | 'del' | 'other'
  readonly value?: unknown
  /** The change it is in. */
  readonly change: string
}

/** A change's map-key operations, by device (`''`: at the root key `devices`), by change hash. */
const keyOpsByHash = new Map<string, ReadonlyMap<string, readonly KeyOp[]>>()

function keyOpsOf(h: History, hash: string, device: string): readonly KeyOp[] {
  let held = keyOpsByHash.get(hash)
  if (held === undefined) {
    const bytes = h.backend.getChangeByHash(hash)
    const byDevice = new Map<string, KeyOp[]>()
    if (bytes !== null) {
      const c = Automerge.decodeChange(bytes)
      c.ops.forEach((op, i) => {
        const key = op.key as string | undefined
        if (key === undefined) return
        const at =
          op.obj === '_root'
            ? key === 'devices'
              ? ''
              : undefined
            : h.devicesMaps.has(op.obj)
              ? DEVICE_KEY.test(key)
                ? key
                : undefined
              : h.deviceOf(op.obj)
        if (at === undefined) return
        const kind =
          op.action === 'makeMap'
            ? 'map'
            : op.action === 'makeText'
              ? 'text'
              : op.action === 'set' || op.action === 'del'
                ? op.action
                : 'other'
        const counter = c.startOp + i
        const list = byDevice.get(at) ?? []
        list.push({
          id: `${counter}@${c.actor}`,
          counter,
          actor: c.actor,
          obj: op.obj,
          key,
          kind,
          value: op.value,
          change: hash
        })
        byDevice.set(at, list)
      })
    }
    held = byDevice
    if (keyOpsByHash.size >= MAX_REVOCATION_MEMO) keyOpsByHash.clear()
    keyOpsByHash.set(hash, held)
  }
  return [...(held.get('') ?? []), ...(held.get(device) ?? [])]
}

/** Automerge's order of concurrent writes to one key: the larger id wins (counter, then actor). */
function later(a: KeyOp, b: KeyOp): boolean {
  return a.counter !== b.counter ? a.counter > b.counter : a.actor > b.actor
}

/**
 * A device's entry as the `counted` changes alone made it, read by path (`name`, `labels.site`,
 * …) rather than by object, so a write that counts lands even in an entry or labels map a write
 * that does not count had made. Each path holds the value of the latest write to it among them
 * (the largest operation id, which is how Automerge itself orders writes: one made after another
 * has the larger id), provided it came after the latest making or deletion of the entry (of the
 * labels map, for a label); a new `devices` map deletes the entries it does not make again. So a
 * change left out undoes nothing it did not write and hides nothing written after it. With
 * `lastSeen`, a deleted entry is read as it was where it was last made. Text is read as the change
 * that made it wrote it (edits inside it are not followed). `all`: every change that wrote in the
 * entry, counted or not (they made the objects the paths run through).
 */
function entryFrom(
  h: History,
  device: string,
  all: readonly string[],
  counted: ReadonlySet<string>,
  lastSeen = false
): DeviceEntry | undefined {
  const entries = new Set<string>()
  const labelMaps = new Set<string>()
  const ops: KeyOp[] = []
  const every: KeyOp[] = []
  for (const c of new Set(all)) {
    for (const op of keyOpsOf(h, c, device)) {
      if (op.kind === 'map' && op.key === device && h.devicesMaps.has(op.obj)) entries.add(op.id)
      every.push(op)
      if (counted.has(c)) ops.push(op)
    }
  }
  for (const op of every) {
    if (op.kind === 'map' && op.key === 'labels' && entries.has(op.obj)) labelMaps.add(op.id)
  }
  const latest = (ok: (op: KeyOp) => boolean, after?: KeyOp): KeyOp | undefined => {
    let w: KeyOp | undefined
    for (const op of ops) {
      if (
        ok(op) &&
        (after === undefined || later(op, after)) &&
        (w === undefined || later(op, w))
      ) {
        w = op
      }
    }
    return w
  }
  const entry = latest(op =>
    op.key === device && h.devicesMaps.has(op.obj)
      ? !lastSeen || op.kind === 'map'
      : op.obj === '_root' && !lastSeen
  )
  if (entry?.kind !== 'map' || entry.key !== device) return undefined
  const value = (w: KeyOp | undefined): string | undefined => {
    if (w?.kind === 'text') {
      const t = h.backend.materialize(w.id, [w.change])
      return typeof t === 'string' ? t : undefined
    }
    const v = w?.kind === 'set' ? w.value : undefined
    return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean'
      ? String(v)
      : undefined
  }
  const field = (key: string): string | undefined =>
    value(latest(op => op.key === key && entries.has(op.obj), entry))
  const name = field('name')
  const labelsMap = latest(op => op.key === 'labels' && entries.has(op.obj), entry)
  if (name === undefined || labelsMap?.kind !== 'map') return undefined
  const labels: Labels = {}
  const keys = new Set(ops.filter(op => labelMaps.has(op.obj)).map(op => op.key))
  for (const k of keys) {
    const v = value(latest(op => op.key === k && labelMaps.has(op.obj), labelsMap))
    if (v !== undefined) labels[k] = v
  }
  const out: DeviceEntry = { name, labels }
  const enrolledBy = field('enrolledBy')
  const enrolledAt = field('enrolledAt')
  if (enrolledBy !== undefined) out.enrolledBy = enrolledBy
  if (enrolledAt !== undefined) out.enrolledAt = enrolledAt
  if (field('revoked') === 'true') out.revoked = true
  return out
}

/** The changes in `m`'s past (its dependencies, theirs, and so on). */
function pastOf(h: History, m: Automerge.ChangeMetadata): Set<string> {
  const seen = new Set<string>()
  const stack = [...m.deps]
  while (stack.length > 0) {
    const x = stack.pop() as string
    if (seen.has(x)) continue
    seen.add(x)
    stack.push(...(h.metas.get(x)?.deps ?? []))
  }
  return seen
}

/** The changes that may say something of a device's entry: those that wrote in it, and new `devices` maps. */
function writersOf(h: History, device: string): string[] {
  return [...new Set([...(h.touchers.get(device) ?? []), ...h.replacers])]
}

/**
 * Does a write by an operator with `selector` to `device`'s entry, made by change `m`, count? It
 * does when the labels the device had in the change's own past, as the changes that counted made
 * them (see `LabelMove` for an entry deleted there), match the selector; with no entry there,
 * its trust-statement labels, or for a key the fleet never knew the labels the change wrote
 * (`written`). `voided` are the changes already found not to count for the device.
 */
function writeCounts(
  h: History,
  selector: unknown,
  statement: Labels | undefined,
  voided: ReadonlySet<string> | undefined,
  device: string,
  m: Automerge.ChangeMetadata,
  written: () => Labels | undefined
): boolean {
  if (selector === undefined) return false
  let before: readonly Labels[]
  let after = written
  if (voided === undefined || ![...voided].some(v => inPast(h, v, m))) {
    // Every write in its past counted: the document as of its past is what they made.
    before = beforeOf(h, device, m)
  } else {
    const past = pastOf(h, m)
    const all = writersOf(h, device).filter(c => past.has(c))
    const counted = new Set(all.filter(c => !voided.has(c)))
    const was = entryFrom(h, device, all, counted) ?? entryFrom(h, device, all, counted, true)
    before = was === undefined ? [] : [was.labels]
    if (m.hash !== '') {
      after = () => entryFrom(h, device, [...all, m.hash], counted.add(m.hash))?.labels
    }
  }
  if (before.length > 0) return before.every(b => selectorMatches(selector, b))
  if (statement !== undefined) return selectorMatches(selector, statement)
  const labels = after()
  return labels === undefined || selectorMatches(selector, labels)
}

interface DeviceWrites {
  /** Per device: the changes whose writes to its entry do not count. */
  readonly voided: ReadonlyMap<string, ReadonlySet<string>>
  /** Per device with such changes: its entry as the changes that count made it (none: undefined). */
  readonly entries: ReadonlyMap<string, DeviceEntry | undefined>
}

const writesOf = new WeakMap<object, { trust: object; epoch: number; out: DeviceWrites }>()

/**
 * Whether a change's write to a device counts, by `<change hash> <device>`, and the entries read
 * from the writes that count, for one trust chain at one epoch: a change's past never changes,
 * so neither does its verdict until the chain does (then both are emptied).
 */
const verdicts = {
  trust: undefined as object | undefined,
  epoch: -1,
  counts: new Map<string, boolean>(),
  entries: new Map<string, DeviceEntry | undefined>()
}

/**
 * Which writes to device entries count: every admin's; an operator's only to a device inside its
 * selector in the change's own past (`writeCounts`). A pure function of the changes held (their
 * signers and dependencies) and the trust chain's selectors, the same on every replica whatever
 * order the changes came in: a change is judged by its past alone, which holds only changes
 * judged before it (the history is in causal order).
 *
 * Cost: an admin's change costs nothing; an operator's reads, per device it wrote, the labels
 * before it (shared with `outOfReach` and `revokedDevices`, memoised by change hash); only a device
 * some write did not count for is read again from the operations of the changes that wrote it.
 */
function deviceWrites(trust: ScopeTrust, devicesDoc: DevicesDocument): DeviceWrites {
  const memo = writesOf.get(devicesDoc)
  if (memo !== undefined && memo.trust === trust && memo.epoch === trust.epoch) return memo.out
  const h = history(devicesDoc)
  if (verdicts.trust !== trust || verdicts.epoch !== trust.epoch) {
    Object.assign(verdicts, { trust, epoch: trust.epoch })
    verdicts.counts.clear()
    verdicts.entries.clear()
  }
  const statement = new Map(trust.latest.nodes.map(n => [n.key, n.labels]))
  const voided = new Map<string, Set<string>>()
  for (const m of h.metas.values()) {
    const scope = trust.scopeOf(m.actor.slice(0, 64))
    if (scope.all) continue
    for (const device of devicesWritten(h, m)) {
      const id = `${m.hash} ${device}`
      const mine = voided.get(device)
      let counts = verdicts.counts.get(id)
      if (counts === undefined) {
        const written = (): Labels | undefined => writtenBy(h, device, m)
        counts = writeCounts(h, scope.selector, statement.get(device), mine, device, m, written)
        if (verdicts.counts.size >= MAX_REVOCATION_MEMO) verdicts.counts.clear()
        verdicts.counts.set(id, counts)
      }
      if (!counts) voided.set(device, (mine ?? new Set<string>()).add(m.hash))
    }
  }
  const entries = new Map<string, DeviceEntry | undefined>()
  for (const [device, v] of voided) {
    const all = writersOf(h, device)
    // The same writes, the same verdicts: the same entry (most revisions touch other devices).
    const id = `${device} ${all.map(c => (v.has(c) ? `-${c}` : c)).join(' ')}`
    if (!verdicts.entries.has(id)) {
      if (verdicts.entries.size >= MAX_REVOCATION_MEMO) verdicts.entries.clear()
      verdicts.entries.set(id, entryFrom(h, device, all, new Set(all.filter(c => !v.has(c)))))
    }
    entries.set(device, verdicts.entries.get(id))
  }
  const out = { voided, entries }
  writesOf.set(devicesDoc, { trust, epoch: trust.epoch, out })
  return out
}

/** A device's labels as a change left them, by `<change hash> <device>`. */
const writtenByChange = new Map<string, Labels | undefined>()

function writtenBy(h: History, device: string, m: Automerge.ChangeMetadata): Labels | undefined {
  const id = `${m.hash} ${device}`
  if (writtenByChange.has(id)) return writtenByChange.get(id)
  const labels = labelsAt(h, device, [m.hash])
  if (writtenByChange.size >= MAX_REVOCATION_MEMO) writtenByChange.clear()
  writtenByChange.set(id, labels)
  return labels
}

/**
 * Would a write to `device`'s entry, signed by `signer` on top of the document as it is, count
 * (see `deviceWrites`)? `labels`: the labels it writes, asked of a key with no entry before. What
 * `rhizome enrol` and `rhizome unenrol` ask before they sign.
 */
export function mayWrite(
  trust: ScopeTrust,
  devicesDoc: DevicesDocument | undefined,
  signer: string,
  device: string,
  labels?: Labels
): boolean {
  const scope = trust.scopeOf(signer)
  if (scope.all) return true
  const statement = trust.latest.nodes.find(n => n.key === device)?.labels
  if (devicesDoc === undefined) {
    const judged = statement ?? labels
    return (
      scope.selector !== undefined &&
      (judged === undefined || selectorMatches(scope.selector, judged))
    )
  }
  const h = history(devicesDoc)
  const next = {
    hash: '',
    deps: Automerge.getHeads(devicesDoc)
  } as unknown as Automerge.ChangeMetadata
  const voided = deviceWrites(trust, devicesDoc).voided.get(device)
  return writeCounts(h, scope.selector, statement, voided, device, next, () => labels)
}

/**
 * What a config document may reach, for `ConfigDocument`: its writers' scopes
 * (`writerScopes`), and the devices some operator among its writers moved into its own scope
 * (`outOfReach`), which it reaches no more whatever their labels say.
 */
export function documentReach(
  writerKeys: readonly string[],
  trust: ScopeTrust,
  devicesDoc: DevicesDocument | undefined
): Pick<ConfigDocument, 'writerScopes' | 'unreachable'> {
  const taken = outOfReach(trust, devicesDoc)
  const unreachable = new Set<string>()
  for (const key of writerKeys) for (const d of taken.get(key) ?? []) unreachable.add(d)
  const scopes = writerScopes(writerKeys, trust)
  return unreachable.size === 0
    ? { writerScopes: scopes }
    : { writerScopes: scopes, unreachable: [...unreachable].sort() }
}
