/**
 * Where a rollout's time goes, hop by hop: reads the traces `ROLLOUT_TRACE=DIR node
 * bench/rollout.bench.ts` leaves (each daemon's `rhizome:trace:*` lines, DIR/nodes.json, and
 * DIR/reports.json) and follows the status record that carried one fact from its origin to
 * every other node:
 *
 * - the abort: the canary's record saying it failed, to every node's agent marking the rollout
 *   aborted;
 * - each wave hand-over: the record of the last node of wave k saying it soaked, to the node of
 *   wave k+1 that switched first.
 *
 * Per hop: link (the sender's send to this node's receive: the wire, and this node's event loop
 * being busy), verify, the wait for a pace token, the store write, and the agent (queued behind
 * other evaluations, then its own run). Then the traffic around the abort, per 250 ms: status
 * records published (a rollout step sent at once, or any other), new records kept, and records
 * sent (copies over links, duplicates included: each costs the receiver a decrypt and a decode
 * even when it drops it unverified), and the mesh degree. All clocks are one machine's. Prints;
 * asserts nothing.
 *
 * Usage: node bench/rollout-trace.ts DIR
 */
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'

const dir = process.argv[2]
if (dir === undefined) throw new Error('usage: node bench/rollout-trace.ts DIR')

interface Line {
  t: number
  ns: string
  msg: string
}
const nodes = JSON.parse(await readFile(join(dir, 'nodes.json'), 'utf8')) as {
  keys: Record<string, string>
  peers: Record<string, string>
}
interface Fact {
  name: string
  wave: number
  seenAt?: number
  switchedAt?: number
  healthySince?: number
  soakedAt?: number
  failedAt?: number
}
const reports = JSON.parse(await readFile(join(dir, 'reports.json'), 'utf8')) as {
  good: Fact[]
  broken: Fact[]
}
const byPeer8 = new Map(Object.entries(nodes.peers).map(([n, p]) => [p.slice(-8), n]))
const logs = new Map<string, Line[]>()
for (const f of (await readdir(dir)).filter(name => name.endsWith('.log'))) {
  const lines: Line[] = []
  for (const raw of (await readFile(join(dir, f), 'utf8')).split('\n')) {
    const m = /^(\S+Z) (rhizome:trace:\S+) (.*)$/.exec(raw)
    if (m !== null) lines.push({ t: Date.parse(m[1]!), ns: m[2]!, msg: m[3]! })
  }
  logs.set(f.replace(/\.log$/, ''), lines)
}

interface Hop {
  name: string
  from?: string
  recv: number
  link?: number
  verify?: number
  wait: number
  keep?: number
  out?: number
  seq: number
}

/** The first record of `origin` with seq ≥ `minSeq` that each node received, and what it cost. */
function follow(
  origin: string,
  minSeq: number
): { sent: number; seq: number; hops: Map<string, Hop> } {
  const key8 = nodes.keys[origin]!.slice(0, 8)
  const own = logs.get(origin)!
  let seq = Infinity
  let sent = Infinity
  for (const l of own) {
    const m = /^sent (\w+) (\d+)/.exec(l.msg)
    if (m !== null && m[1] === key8 && Number(m[2]) >= minSeq) {
      seq = Number(m[2])
      sent = l.t
      break
    }
  }
  const hops = new Map<string, Hop>()
  for (const [name, lines] of logs) {
    if (name === origin) continue
    let hop: Hop | undefined
    for (const l of lines) {
      const words = l.msg.split(' ')
      if (words[1] !== key8 || Number(words[2]) < minSeq) continue
      const s = Number(words[2])
      if (hop === undefined) {
        if (words[0] !== 'recv') continue
        hop = { name, from: byPeer8.get(words[4]!), recv: l.t, wait: 0, seq: s }
        continue
      }
      if (s !== hop.seq) continue
      if (words[0] === 'verified') hop.verify = Number(words[4])
      if (words[0] === 'wait') hop.wait += Number(words[3])
      if (words[0] === 'relayed') {
        // Before the relay stopped waiting for the store: "kept in N ms".
        if (words[5] === 'kept') hop.keep = Number(words[7])
        hop.out = l.t
        break
      }
    }
    if (hop !== undefined) hops.set(name, hop)
  }
  for (const h of hops.values()) {
    const up = h.from === origin ? sent : h.from === undefined ? undefined : hops.get(h.from)?.out
    if (up !== undefined) h.link = h.recv - up
  }
  return { sent, seq, hops }
}

/** The first trace line on `name` at or after `t` matching `re`. */
function after(name: string, t: number, re: RegExp): Line | undefined {
  return logs.get(name)?.find(l => l.t >= t && re.test(l.msg))
}

const r = (x: number | undefined): string =>
  x === undefined ? '   –' : String(Math.round(x)).padStart(4)

function path(hops: Map<string, Hop>, origin: string, to: string): string[] {
  const out = [to]
  let at = hops.get(to)
  while (at?.from !== undefined && at.from !== origin && out.length < 64) {
    out.unshift(at.from)
    at = hops.get(at.from)
  }
  return [origin, ...out]
}

function report(
  title: string,
  origin: string,
  factAt: number,
  targets: string[],
  agentRe: RegExp
): void {
  // The fact is in the first record the origin publishes after its agent recorded it: a switch
  // once it is saved ("saved, publishing"), any other step at once ("publishing, saving behind").
  const saved = after(origin, factAt, /^(saved, publishing|publishing, saving behind)/)
  const published = saved === undefined ? undefined : after(origin, saved.t, /^published /)
  const { sent, seq, hops } = follow(origin, Number(published?.msg.split(' ')[2] ?? factAt))
  console.log(`\n${title}: origin ${origin}, fact at 0, record ${seq}`)
  console.log(
    `  origin: recorded +${r(saved === undefined ? undefined : saved.t - factAt)}, signed +${seq - factAt}, published +${r(published === undefined ? undefined : published.t - factAt)}, sent +${r(sent - factAt)}`
  )
  console.log('  node  from  recv  link verify wait keep  out | agent')
  const rows = [...hops.values()].sort((a, b) => a.recv - b.recv)
  for (const h of rows) {
    const acted = after(h.name, h.recv, agentRe)
    const evald = after(h.name, h.recv, /^evaluated on /)
    console.log(
      `  ${h.name}  ${h.from ?? '?  '}  ${r(h.recv - factAt)}  ${r(h.link)}  ${r(h.verify)}  ${r(h.wait)} ${r(h.keep)} ${r(h.out === undefined ? undefined : h.out - factAt)} | ${acted === undefined ? '' : `${acted.msg.split(' ')[0]} +${r(acted.t - factAt)}`}${evald === undefined ? '' : ` (${evald.msg.replace(/^evaluated on \S+ \d+: /, '')})`}`
    )
  }
  for (const to of targets) {
    const p = path(hops, origin, to)
    let link = 0
    let verify = 0
    let wait = 0
    let keep = 0
    for (const n of p.slice(1)) {
      const h = hops.get(n)
      link += h?.link ?? 0
      if (n === to) continue
      verify += h?.verify ?? 0
      wait += h?.wait ?? 0
      keep += h?.keep ?? 0
    }
    const h = hops.get(to)
    const acted = h === undefined ? undefined : after(to, h.recv, agentRe)
    console.log(
      `  path to ${to}: ${p.join(' → ')} (${p.length - 1} hops); origin publish→send ${r(sent - factAt)}, links ${r(link)}, verify ${r(verify)}, token waits ${r(wait)}, store ${r(keep)}, at ${to}: recv +${r(h === undefined ? undefined : h.recv - factAt)}, acted +${r(acted === undefined ? undefined : acted.t - factAt)}`
    )
  }
}

const canary = reports.broken.find(x => x.failedAt !== undefined)!
const last = [...reports.broken]
  .filter(x => x.name !== canary.name)
  .sort((a, b) => {
    const ta = after(a.name, canary.failedAt!, /^aborted /)?.t ?? Infinity
    const tb = after(b.name, canary.failedAt!, /^aborted /)?.t ?? Infinity
    return tb - ta
  })
report('abort', canary.name, canary.failedAt!, [last[0]!.name], /^aborted /)

const waves = [...new Set(reports.good.map(x => x.wave))].sort((a, b) => a - b)
for (const [j, k] of waves.slice(0, -1).entries()) {
  const these = reports.good.filter(x => x.wave === k)
  const next = reports.good.filter(x => x.wave === waves[j + 1])
  const lastIn = these.reduce((a, b) => ((a.healthySince ?? 0) >= (b.healthySince ?? 0) ? a : b))
  const first = next.reduce((a, b) =>
    (a.switchedAt ?? Infinity) <= (b.switchedAt ?? Infinity) ? a : b
  )
  console.log(
    `\n(hand-over ${k} → ${waves[j + 1]}: ${first.name} switched ${first.switchedAt! - lastIn.soakedAt!} ms after ${lastIn.name} soaked)`
  )
  report(
    `hand-over ${k} → ${waves[j + 1]}`,
    lastIn.name,
    lastIn.soakedAt!,
    [first.name],
    /^switch /
  )
}

// Traffic around the abort: from a second before the first node saw the broken rollout to half a
// second after the last knew it aborted.
{
  const seen = Math.min(...reports.broken.map(x => x.seenAt ?? Infinity))
  const known = Math.max(
    ...[...logs.keys()].map(n => after(n, canary.failedAt!, /^aborted /)?.t ?? canary.failedAt!)
  )
  const from = seen - 1000
  const to = known + 500
  const B = 250
  const n = Math.ceil((to - from) / B)
  const steps = Array.from({ length: n }, () => 0)
  const other = Array.from({ length: n }, () => 0)
  const kept = Array.from({ length: n }, () => 0)
  const sends = Array.from({ length: n }, () => 0)
  const resent = Array.from({ length: n }, () => 0)
  const degrees: number[] = []
  for (const lines of logs.values()) {
    let step = false
    let degree = 0
    for (const l of lines) {
      const words = l.msg.split(' ')
      if (l.msg.startsWith('publishing, saving behind') || l.msg.startsWith('saved, publishing')) {
        step = true
      }
      const copies = / to (\d+)/.exec(l.msg)
      if (words[0] === 'sent' && copies !== null) degree = Number(copies[1])
      // Traces from before "sent … to N": a relay's peers but the sender, and the sender.
      if (words[0] === 'relayed' && copies !== null) {
        degree = Math.max(degree, Number(copies[1]) + 1)
      }
      if (l.t < from || l.t >= to) {
        if (words[0] === 'published') step = false
        continue
      }
      const b = Math.floor((l.t - from) / B)
      if (words[0] === 'published') {
        if (step) steps[b]!++
        else other[b]!++
        step = false
      }
      if (words[0] === 'recv') kept[b]!++
      if ((words[0] === 'sent' || words[0] === 'relayed') && copies !== null) {
        sends[b]! += Number(copies[1])
      } else if (words[0] === 'sent') sends[b]! += degree
      if (words[0] === 'resent') resent[b]! += Number(words[2])
    }
    degrees.push(degree)
  }
  const sum = (a: number[]): number => a.reduce((x, y) => x + y, 0)
  console.log(
    `\ntraffic around the abort (0 = the first node seeing the rollout; the canary failed at +${canary.failedAt! - seen} ms, the last node knew at +${known - seen} ms); mesh degree ${(sum(degrees) / degrees.length).toFixed(1)} (${Math.min(...degrees)}–${Math.max(...degrees)})`
  )
  console.log(
    '      t  published (step at once / other)  kept  sent  resent (anti-entropy and first hellos)'
  )
  for (let i = 0; i < n; i++) {
    const t = from + i * B - seen
    console.log(
      `  ${String(t).padStart(5)}  ${String(steps[i]).padStart(4)} / ${String(other[i]).padEnd(4)}  ${String(kept[i]).padStart(6)}  ${String(sends[i]).padStart(5)}  ${String(resent[i]).padStart(6)}`
    )
  }
  console.log(
    `  total  ${sum(steps)} / ${sum(other)}  ${sum(kept)}  ${sum(sends)} (${(sum(sends) / Math.max(1, sum(steps) + sum(other))).toFixed(0)} sent per record published)  ${sum(resent)}`
  )
}

// Status copies over the whole run, per second: pushed (published and relayed) and resent whole
// (a peer's first hello and every anti-entropy round send it every record held).
{
  let start = Infinity
  let end = 0
  let pushed = 0
  let resent = 0
  for (const lines of logs.values()) {
    let degree = 0
    for (const l of lines) {
      start = Math.min(start, l.t)
      end = Math.max(end, l.t)
      const words = l.msg.split(' ')
      const copies = / to (\d+)/.exec(l.msg)
      if ((words[0] === 'sent' || words[0] === 'relayed') && copies !== null) {
        if (words[0] === 'sent') degree = Number(copies[1])
        pushed += Number(copies[1])
      } else if (words[0] === 'sent') pushed += degree
      if (words[0] === 'resent') resent += Number(words[2])
    }
  }
  const s = Math.max(1, end - start) / 1000
  console.log(
    `\nstatus copies over the whole run (${s.toFixed(0)} s, ${logs.size} nodes): pushed ${(pushed / s).toFixed(0)}/s, resent whole ${(resent / s).toFixed(0)}/s`
  )
}
