/**
 * The effective config: what one node should run, as a pure, deterministic function of the
 * desired-config documents and the node's name and labels. Every peer computes the same answer
 * for the same inputs, which is what lets rollouts and status be judged anywhere.
 *
 * Every config document has the same shape:
 *
 * ```yaml
 * selector: { site: berlin-3 }     # optional: the document applies only to matching nodes
 * defaults: { ... }                # applies to every node the document applies to
 * groups:
 *   tills:                         # groups apply in name order
 *     selector: { role: pos }      # every label must match (a list means "any of")
 *     config: { ... }
 * nodes:
 *   till-7: { ... }                # one node's own overrides, by name
 * ```
 *
 * Node scope: a document that an operator key validly wrote applies only to nodes inside *every*
 * such operator's selector (crdt/trust.ts: an operator without a selector reaches no node),
 * whatever selector, groups or node overrides the document itself names, so nothing an operator
 * signs can change the effective config of a node outside its scope. Admins reach every node.
 * The caller passes each document's writers' scopes (`writerScopes`), from the document's history,
 * and the devices it may not reach (`unreachable`): an operator that moved a device's labels into
 * its own scope never reaches that device (crdt/devices.ts `documentReach` derives both from the
 * histories of the document and of `devices`), so every peer computes the same.
 *
 * Layers, later over earlier: `fleet` defaults, then the defaults of each other matching
 * document in id order; then every matching group of every applicable document, in group name
 * order (document id breaks ties); then node overrides, `fleet` first, then the others in id
 * order. Merging is by key: objects merge recursively, anything else replaces, and `null`
 * removes the key.
 *
 * @example
 * ```ts
 * effectiveConfig([{ id: 'fleet', value: {
 *   defaults: { files: { '/etc/motd': { content: 'hi' } } },
 *   groups: { tills: { selector: { role: 'pos' }, config: { workloads: { till: { version: '2' } } } } },
 *   nodes: { 'till-7': { workloads: { till: { version: '3' } } } } } }],
 *   { name: 'till-7', labels: { role: 'pos' } })
 * // → { files: { '/etc/motd': { content: 'hi' } }, workloads: { till: { version: '3' } } }
 * ```
 */

import type { LabelSelector, TrustChain } from './trust.ts'

export type ConfigValue =
  | string
  | number
  | boolean
  | null
  | ConfigValue[]
  | { [key: string]: ConfigValue }
export type ConfigObject = { [key: string]: ConfigValue }

export interface NodeIdentity {
  name: string
  labels: Record<string, string>
  /** Its public key (hex): needed to apply a document that names devices it may not reach. */
  key?: string
}

export interface ConfigDocument {
  id: string
  value: unknown
  /**
   * The node selectors of the operators that validly wrote the document (`null`: an operator
   * that reaches no node); absent or empty when only admins did. See `writerScopes`.
   */
  writerScopes?: ReadonlyArray<LabelSelector | null>
  /**
   * Device keys (hex) the document reaches no more whatever their labels: an operator that
   * wrote it moved them into its own scope (crdt/devices.ts `outOfReach`, `documentReach`).
   */
  unreachable?: readonly string[]
}

/** The scopes of a document's writers (`SignedDocument.writerKeys()`) under a trust chain. */
export function writerScopes(
  writerKeys: readonly string[],
  trust: Pick<TrustChain, 'scopeOf'>
): Array<LabelSelector | null> {
  const out: Array<LabelSelector | null> = []
  for (const key of writerKeys) {
    const scope = trust.scopeOf(key)
    if (!scope.all) out.push(scope.selector ?? null)
  }
  return out
}

/** Does a document apply to a node: its own selector, its writers' scopes and reach? */
function applies(d: ConfigDocument, node: NodeIdentity): boolean {
  if (!isObject(d.value) || !selectorMatches(d.value.selector, node.labels)) return false
  return inReach(d, node.labels, node.key)
}

/**
 * Is a node inside the scope of every operator who wrote a document (or a rollout in it), and
 * not among the devices they may not reach? A node whose key is not known is not reached by a
 * document that names any device out of reach.
 */
export function inReach(
  d: Pick<ConfigDocument, 'writerScopes' | 'unreachable'>,
  labels: Record<string, string>,
  key: string | undefined
): boolean {
  if (d.unreachable !== undefined && d.unreachable.length > 0) {
    if (key === undefined || d.unreachable.includes(key)) return false
  }
  return (d.writerScopes ?? []).every(s => s !== null && selectorMatches(s, labels))
}

const FLEET_DOC = 'fleet'

function isObject(v: unknown): v is Record<string, unknown> {
  return (
    typeof v === 'object' &&
    v !== null &&
    !Array.isArray(v) &&
    !(v instanceof Uint8Array) &&
    !(v instanceof Date)
  )
}

/** Plain JSON-like copy: Automerge proxies, counters and text become plain values. */
function plain(v: unknown): ConfigValue {
  if (v === null || typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') {
    return v
  }
  if (Array.isArray(v)) return v.map(plain)
  if (isObject(v)) {
    const out: ConfigObject = {}
    for (const k of Object.keys(v).sort()) out[k] = plain(v[k])
    return out
  }
  // Timestamps and bytes (the only other values Automerge holds): their text form.
  // oxlint-disable-next-line typescript/no-base-to-string
  return String(v)
}

export function mergeConfig(base: ConfigObject, over: unknown): ConfigObject {
  if (!isObject(over)) return base
  const out: ConfigObject = { ...base }
  for (const key of Object.keys(over).sort()) {
    const v = over[key]
    if (v === null) {
      delete out[key]
      continue
    }
    const b = out[key]
    out[key] = isObject(v) && isObject(b) ? mergeConfig(b, v) : plain(v)
  }
  return out
}

export function selectorMatches(selector: unknown, labels: Record<string, string>): boolean {
  if (selector === undefined || selector === null) return true
  if (!isObject(selector)) return false
  for (const [k, want] of Object.entries(selector)) {
    const have = labels[k]
    if (Array.isArray(want) ? !want.map(String).includes(have as string) : have !== String(want)) {
      return false
    }
  }
  return true
}

export function effectiveConfig(docs: ConfigDocument[], node: NodeIdentity): ConfigObject {
  const applicable = docs
    .filter(d => applies(d, node))
    .sort((a, b) =>
      a.id === FLEET_DOC ? -1 : b.id === FLEET_DOC ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0
    )
  let config: ConfigObject = {}
  for (const d of applicable) {
    config = mergeConfig(config, (d.value as Record<string, unknown>).defaults)
  }
  const groups: Array<{ name: string; docId: string; config: unknown }> = []
  for (const d of applicable) {
    const g = (d.value as Record<string, unknown>).groups
    if (!isObject(g)) continue
    for (const [name, group] of Object.entries(g)) {
      if (isObject(group) && selectorMatches(group.selector, node.labels)) {
        groups.push({ name, docId: d.id, config: group.config })
      }
    }
  }
  groups.sort((a, b) =>
    a.name < b.name ? -1 : a.name > b.name ? 1 : a.docId < b.docId ? -1 : a.docId > b.docId ? 1 : 0
  )
  for (const g of groups) config = mergeConfig(config, g.config)
  for (const d of applicable) {
    const nodes = (d.value as Record<string, unknown>).nodes
    if (isObject(nodes)) config = mergeConfig(config, nodes[node.name])
  }
  return config
}
