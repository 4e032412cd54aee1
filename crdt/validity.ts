/**
 * Which changes of a document are valid: one pure function of what a replica holds — the trust
 * statements (crdt/trust.ts), the changes, and the equivocation evidence (crdt/equivocation.ts)
 * — never of arrival order, a clock, or which statement happens to be in force. Every replica
 * that holds the same objects decides the same, whatever order they came in.
 *
 * A change by key K, actor A, sequence number s, in document D is valid iff
 * 1. some statement of the trust chain let K write D (so history stays valid after K is rotated
 *    out); a grant only a fork's losing branch made does not count (`branch`);
 * 2. if any statement held cuts K in D, the cut names A with a sequence number ≥ s (`cut`);
 * 3. no equivocation evidence held shows A using a sequence number ≤ s twice (`equivocation`):
 *    two different changes by one actor with one sequence number prove its key leaked, and
 *    Automerge cannot hold both, so A is cut just before the fork point;
 * 4. every change it depends on is valid (`dependency`).
 *
 * Cuts only ever shrink what is valid (statements are never withdrawn, evidence is kept, and a
 * key once cut never regains authority), so a replica may drop an invalid change for good.
 * Cuts and evidence compare sequence numbers, not hashes, so they combine the same in any
 * order; which of two changes with the same sequence number a cut "meant" never matters,
 * because both are cut by the equivocation rule once both are seen.
 */
import { actorKeyHex, type ChangeMeta } from './signed-change.ts'
import type { TrustChain } from './trust.ts'

export type InvalidReason = 'cut' | 'branch' | 'equivocation' | 'dependency' | 'unauthorised'

export interface ValidityContext {
  readonly docId: string
  readonly trust: TrustChain
  /** Per actor, the lowest sequence number it is known to have used twice. */
  readonly equivocations: ReadonlyMap<string, number>
  /** The document's genesis change (valid, unsigned, the same everywhere). */
  readonly genesis: string
}

/** Rules 1-3 of the header for one change (rule 4 needs its dependencies). */
export function changeVerdict(
  ctx: ValidityContext,
  m: Pick<ChangeMeta, 'actor' | 'seq' | 'hash'>
): InvalidReason | undefined {
  if (m.hash === ctx.genesis) return undefined
  const key = actorKeyHex(m.actor)
  try {
    if (ctx.trust.writeStanding(key, ctx.docId).kind === 'branch') return 'branch'
  } catch {
    return 'unauthorised'
  }
  const cut = ctx.trust.cutOf(key, ctx.docId)
  if (cut !== undefined) {
    const tip = cut.find(t => t.actor === m.actor)
    if (tip === undefined || m.seq > tip.seq) return 'cut'
  }
  const fork = ctx.equivocations.get(m.actor)
  if (fork !== undefined && m.seq >= fork) return 'equivocation'
  return undefined
}

/**
 * The invalid changes among `metas` and why, all four rules applied. `outsideInvalid` says
 * whether a dependency outside `metas` is known to be invalid (a dependency neither in `metas`
 * nor known invalid is taken as valid: the caller holds it, or the change waits for it).
 */
export function judgeChanges(
  ctx: ValidityContext,
  metas: readonly ChangeMeta[],
  outsideInvalid: (hash: string) => boolean = () => false
): Map<string, InvalidReason> {
  const bad = new Map<string, InvalidReason>()
  for (const m of topological(metas)) {
    const r =
      changeVerdict(ctx, m) ??
      (m.deps.some(d => bad.has(d) || outsideInvalid(d)) ? 'dependency' : undefined)
    if (r !== undefined) bad.set(m.hash, r)
  }
  return bad
}

/** `metas` with every change after the ones it depends on (Kahn's algorithm, stable). */
export function topological(metas: readonly ChangeMeta[]): ChangeMeta[] {
  const byHash = new Map(metas.map(m => [m.hash, m]))
  const unique = [...byHash.values()]
  const waiting = new Map<string, number>()
  const children = new Map<string, ChangeMeta[]>()
  for (const m of unique) {
    let n = 0
    for (const d of m.deps) {
      if (!byHash.has(d)) continue
      n++
      const list = children.get(d)
      if (list === undefined) children.set(d, [m])
      else list.push(m)
    }
    waiting.set(m.hash, n)
  }
  const out: ChangeMeta[] = []
  const ready = unique.filter(m => waiting.get(m.hash) === 0)
  for (let i = 0; i < ready.length; i++) {
    const m = ready[i] as ChangeMeta
    out.push(m)
    for (const c of children.get(m.hash) ?? []) {
      const n = (waiting.get(c.hash) as number) - 1
      waiting.set(c.hash, n)
      if (n === 0) ready.push(c)
    }
  }
  return out
}
