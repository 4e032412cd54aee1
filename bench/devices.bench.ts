/**
 * devices benchmark: what reading node scope from the `devices` document's history
 * (crdt/devices.ts `outOfReach`) costs at fleet size, beside the history walk every daemon
 * already does for revocation (`revokedDevices`) on the same document, in the same run.
 *
 * The document: DEVICES devices, three quarters enrolled by an admin (half munich, half berlin),
 * one quarter by a berlin operator, one change each; then the operator relabels 200 of its own
 * devices inside berlin, moves 20 munich devices to berlin, and deletes and re-adds 10 more as
 * berlin; and it relabels 100 munich devices to hamburg and renames each, writes outside its scope
 * that do not count. Figures, each one synchronous call (the event loop is blocked for that long):
 * - cold: the first read of the document in the process (every change decoded once);
 * - a new revision: one more operator change, the whole walk again on the new value;
 * - which writes count (`enrolledDevices`, after both walks, which it shares): cold and on a new
 *   revision, as a ratio to `revokedDevices` in the same run;
 * - revocation marks (`revokedDevices` now asks who signed each): a new revision whose change is
 *   an admin's mark, an operator's mark inside its scope, and one outside it, each on a device
 *   other changes touched (its labels before the mark are read from the history), beside a new
 *   revision without a mark measured in the same run.
 *
 * Usage: node bench/devices.bench.ts [devices, default 2000]
 */
import * as Automerge from '@automerge/automerge'
import { availableParallelism, loadavg } from 'node:os'
import {
  enrolledDevices,
  outOfReach,
  revokedDevices,
  type DevicesDocument
} from '../crdt/devices.ts'
import type { TrustChain, TrustStatement } from '../crdt/trust.ts'

const DEVICES = Number(process.argv[2] ?? 2000)
/** The first of the munich devices (even numbers) the operator relabels out of munich. */
const HAMBURG_FROM = 300
const ADMIN = 'aa'.repeat(32)
const OPERATOR = 'bb'.repeat(32)
const actor = (key: string): string => `${key}0000000000000001`
const deviceKey = (i: number): string => i.toString(16).padStart(64, '0')

type Entry = { name: string; labels: Record<string, string>; revoked: boolean }
type Doc = { devices: Record<string, Entry> }

const scopeTrust: Pick<TrustChain, 'scopeOf' | 'latest' | 'epoch'> = {
  scopeOf: (key: string) =>
    key === ADMIN ? { all: true } : { all: false, selector: { site: 'berlin' } },
  latest: { nodes: [] } as unknown as TrustStatement,
  epoch: 0
}
// `enrolledDevices` asks a trust chain of nothing more.
const trust = scopeTrust as TrustChain

function say(what: string, figure: string): void {
  process.stdout.write(`  ${what.padEnd(62)} ${figure.padStart(12)}\n`)
}

function build(): Automerge.Doc<Doc> {
  // One actor at a time (switching actor copies the document): the admin's changes, then the
  // operator's, each built on everything before it.
  let doc = Automerge.change(Automerge.init<Doc>({ actor: actor(ADMIN) }), d => {
    d.devices = {}
  })
  const adminCount = Math.floor((DEVICES * 3) / 4)
  const enrol = (i: number): void => {
    doc = Automerge.change(doc, d => {
      d.devices[deviceKey(i)] = {
        name: `d${i}`,
        labels: { site: i < adminCount && i % 2 === 0 ? 'munich' : 'berlin', role: 'pos' },
        revoked: false
      }
    })
  }
  for (let i = 0; i < adminCount; i++) enrol(i)
  doc = Automerge.clone(doc, actor(OPERATOR))
  for (let i = adminCount; i < DEVICES; i++) enrol(i)
  const op = (fn: (d: Doc) => void): void => {
    doc = Automerge.change(doc, fn)
  }
  for (let i = adminCount; i < adminCount + 200 && i < DEVICES; i++) {
    op(d => {
      d.devices[deviceKey(i)]!.labels.role = 'kiosk'
    })
  }
  for (let i = 0; i < 40; i += 2) {
    op(d => {
      d.devices[deviceKey(i)]!.labels.site = 'berlin'
    })
  }
  for (let i = 40; i < 60; i += 2) {
    op(d => {
      delete d.devices[deviceKey(i)]
    })
    op(d => {
      d.devices[deviceKey(i)] = { name: `d${i}`, labels: { site: 'berlin' }, revoked: false }
    })
  }
  // Writes that do not count: 100 munich devices relabelled to hamburg, then renamed (a second
  // write, judged on the labels the writes that count left).
  for (let i = HAMBURG_FROM; i < HAMBURG_FROM + 200 && i < adminCount; i += 2) {
    op(d => {
      d.devices[deviceKey(i)]!.labels.site = 'hamburg'
    })
    op(d => {
      d.devices[deviceKey(i)]!.name = `taken-${i}`
    })
  }
  return doc
}

/** Wall-clock and CPU time (this process, every thread) of one synchronous call. */
function timed<T>(fn: () => T): [T, number, number] {
  const c0 = process.cpuUsage()
  const t0 = performance.now()
  const v = fn()
  const wall = performance.now() - t0
  const c = process.cpuUsage(c0)
  return [v, wall, (c.user + c.system) / 1000]
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const ms = (wall: number, cpu: number): string => `${wall.toFixed(1)} ms (cpu ${cpu.toFixed(1)})`

process.stdout.write(
  `devices bench: ${DEVICES} devices, ${availableParallelism()} cores, load ${loadavg()
    .map(l => l.toFixed(1))
    .join(' ')}, node ${process.version}, ${new Date().toISOString()}\n`
)
const [built, buildMs] = timed(build)
let doc = built
const changes = Automerge.getAllChanges(doc).length
say(`built the document (${changes} changes)`, `${buildMs.toFixed(0)} ms`)
// Loaded from its bytes, as a daemon holds it: no memo of this value anywhere.
const loaded = Automerge.load<Doc>(Automerge.save(doc)) as DevicesDocument
const [revoked, revokedWall, revokedCpu] = timed(() => revokedDevices(trust, loaded))
const [taken, scopeWall, scopeCpu] = timed(() => outOfReach(trust, loaded))
say('cold: revokedDevices (baseline; decodes every change)', ms(revokedWall, revokedCpu))
say('cold: outOfReach after it (decoded changes shared)', ms(scopeWall, scopeCpu))
say('cold: ratio outOfReach / revokedDevices (cpu)', `${(scopeCpu / revokedCpu).toFixed(2)}×`)
const [enrolled, enrolledWall, enrolledCpu] = timed(() => enrolledDevices(trust, loaded))
say('cold: enrolledDevices after both (which writes count)', ms(enrolledWall, enrolledCpu))
say(
  'cold: ratio enrolledDevices / revokedDevices (cpu)',
  `${(enrolledCpu / revokedCpu).toFixed(2)}×`
)
// A new revision, REVISIONS times: one more operator change, then both walks on the new value.
const REVISIONS = 7
const base: number[] = []
const scope: number[] = []
const baseWall: number[] = []
const scopeWall2: number[] = []
const writes: number[] = []
const writesWall: number[] = []
for (let r = 0; r < REVISIONS; r++) {
  doc = Automerge.change(doc, d => {
    d.devices[deviceKey(DEVICES - 1)]!.labels.role = `till-${r}`
  })
  const next = doc as DevicesDocument
  const [, bw, bc] = timed(() => revokedDevices(trust, next))
  const [, sw, sc] = timed(() => outOfReach(trust, next))
  const [, ew, ec] = timed(() => enrolledDevices(trust, next))
  base.push(bc)
  scope.push(sc)
  baseWall.push(bw)
  scopeWall2.push(sw)
  writes.push(ec)
  writesWall.push(ew)
}
say(
  `new revision, median of ${REVISIONS}: revokedDevices (baseline)`,
  ms(median(baseWall), median(base))
)
say(`new revision, median of ${REVISIONS}: outOfReach`, ms(median(scopeWall2), median(scope)))
say(
  'new revision: ratio outOfReach / revokedDevices (cpu)',
  `${(median(scope) / median(base)).toFixed(2)}×`
)
say(
  `new revision, median of ${REVISIONS}: enrolledDevices after both`,
  ms(median(writesWall), median(writes))
)
say(
  'new revision: ratio enrolledDevices / revokedDevices (cpu)',
  `${(median(writes) / median(base)).toFixed(2)}×`
)
const [, memoMs] = timed(() => outOfReach(trust, doc as DevicesDocument))
say('same revision again (memoised)', `${memoMs.toFixed(2)} ms`)
say('devices the operator may not reach (expected 30)', String(taken.get(OPERATOR)?.size ?? 0))
say('revoked devices (expected 0)', String(revoked.size))
say(`enrolled devices (expected ${DEVICES})`, String(enrolled.size))
say(
  'enrolled devices labelled hamburg (0: those writes do not count)',
  String([...enrolled.values()].filter(e => e.labels.site === 'hamburg').length)
)

// Marks: REVISIONS new revisions of each kind, on devices relabelled before (not new keys).
// The operator's own changes above relabelled devices adminCount.. to role=kiosk (berlin).
const adminCount = Math.floor((DEVICES * 3) / 4)
const kinds = [
  ['no mark (an operator relabel, baseline)', OPERATOR, (r: number) => adminCount + 100 + r, false],
  ["an admin's mark", ADMIN, (r: number) => 100 + 2 * r, true],
  ["an operator's mark inside its scope", OPERATOR, (r: number) => adminCount + r, true],
  ["an operator's mark outside it (munich)", OPERATOR, (r: number) => 200 + 2 * r, true]
] as const
const rows: [string, number, number, number, number][] = []
for (const [what, signer, device, mark] of kinds) {
  const [rWall, rCpu, bWall, bCpu]: [number[], number[], number[], number[]] = [[], [], [], []]
  for (let r = 0; r < REVISIONS; r++) {
    if (Automerge.getActorId(doc) !== actor(signer)) doc = Automerge.clone(doc, actor(signer))
    doc = Automerge.change(doc, d => {
      const e = d.devices[deviceKey(device(r))]!
      if (mark) e.revoked = true
      else e.labels.role = `kiosk-${r}`
    })
    const next = doc as DevicesDocument
    const [, w1, c1] = timed(() => revokedDevices(trust, next))
    const [, w2, c2] = timed(() => outOfReach(trust, next))
    rWall.push(w1)
    rCpu.push(c1)
    bWall.push(w1 + w2)
    bCpu.push(c1 + c2)
  }
  rows.push([what, median(rWall), median(rCpu), median(bWall), median(bCpu)])
}
const [, , baseCpu, , baseBothCpu] = rows[0]!
for (const [what, w, c, bw, bc] of rows) {
  say(`new revision, ${what}: revokedDevices`, ms(w, c))
  say(`  ratio to no mark (cpu)`, `${(c / baseCpu).toFixed(2)}×`)
  say(`  revokedDevices + outOfReach (a daemon reads both)`, ms(bw, bc))
  say(`  ratio to no mark (cpu)`, `${(bc / baseBothCpu).toFixed(2)}×`)
}
say(`revoked devices (expected ${2 * REVISIONS})`, String(revokedDevices(trust, doc).size))
