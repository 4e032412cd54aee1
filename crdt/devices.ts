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

/** A marked device's labels before the mark, by `<change hash> <device>` (a change's past is fixed). */
const beforeByMark = new Map<string, readonly Labels[]>()

function beforeMark(h: History, mark: Mark, m: Automerge.ChangeMetadata): readonly Labels[] {
  const id = `${mark.hash} ${mark.device}`
  const held = beforeByMark.get(id)
  if (held !== undefined) return held
  const before = labelsBefore(h, mark.device, m)
  if (beforeByMark.size >= MAX_REVOCATION_MEMO) beforeByMark.clear()
  beforeByMark.set(id, before)
  return before
}

/** Does this mark revoke its device: could its signer reach the device when it made it? */
function markCounts(trust: ScopeTrust, devicesDoc: DevicesDocument, mark: Mark): boolean {
  const scope = trust.scopeOf(mark.signer)
  if (scope.all) return true
  if (scope.selector === undefined) return false
  const h = history(devicesDoc)
  const m = h.metas.get(mark.hash)
  if (m === undefined) return false
  let before = beforeMark(h, mark, m)
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

function sameLabels(a: Labels, b: Labels): boolean {
  const ka = Object.keys(a)
  return ka.length === Object.keys(b).length && ka.every(k => a[k] === b[k])
}

function movesOf(h: History, m: Automerge.ChangeMetadata): readonly LabelMove[] {
  const held = movesByHash.get(m.hash)
  if (held !== undefined) return held
  let devices: Iterable<string> = h.touched.get(m.hash) ?? []
  if (h.replacers.has(m.hash)) {
    // A new `devices` map: every entry before or after it is touched.
    const all = new Set<string>()
    for (const heads of [m.deps, [m.hash]]) {
      const map = h.backend.getWithType('_root', 'devices', heads)
      if (map?.[0] === 'map') for (const k of h.backend.keys(map[1], heads)) all.add(k)
    }
    devices = [...all].filter(k => DEVICE_KEY.test(k))
  }
  const out: LabelMove[] = []
  for (const device of devices) {
    const before = labelsBefore(h, device, m)
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
