/**
 * The declarative fleet file `rhizome apply` reads and `rhizome get` writes. Top-level keys are
 * document ids, each holding the document's content (see crdt/effective-config.ts):
 *
 * ```yaml
 * fleet:
 *   defaults:
 *     files: { /etc/motd: { content: "hello\n", mode: 0644 } }
 *     workloads: { web: { command: [node, /opt/web.js], env: { PORT: "8080" }, version: "1", user: www,
 *                         health: { http: "http://127.0.0.1:8080/", intervalMs: 2000 } } }
 *     manifests: { nginx: { apiVersion: v1, kind: Pod, ... } }
 *   groups: { tills: { selector: { role: pos }, config: { ... } } }
 *   nodes: { till-7: { ... } }
 * site/berlin-3:
 *   selector: { site: berlin-3 }
 *   defaults: { ... }
 *   rollouts: { web-v2: { change: { ... }, waves: [ ... ] } }   # staged rollouts: crdt/rollout.ts
 * ```
 * `devices` is the enrolment document; it is written by `rhizome enrol`, not by apply.
 */
import { stringify } from 'yaml'
import { parseYamlInput } from './yaml-input.ts'
import { checkDocId } from './replica.ts'
import { DEVICES_DOC } from './devices.ts'
import { InvalidConfigError } from './errors.ts'
import { checkKeys, checkMap, isMap } from './config-shape.ts'
import { checkRollouts } from './rollout.ts'
import { parseMode } from './file-mode.ts'

export const DOCUMENT_KEYS = ['selector', 'defaults', 'groups', 'nodes', 'rollouts'] as const
export const CONFIG_KEYS = ['files', 'workloads', 'manifests'] as const
export const WORKLOAD_KEYS = [
  'command',
  'env',
  'cwd',
  'version',
  'health',
  'artifact',
  'unpack',
  'user'
] as const
export const HEALTH_KEYS = ['http', 'tcp', 'command', 'intervalMs'] as const
export const FILE_KEYS = ['content', 'mode', 'artifact', 'unpack'] as const
export const MAX_FLEET_YAML_BYTES = 8 * 1024 * 1024

export type FleetDocuments = Record<string, Record<string, unknown>>

/** An artifact reference: `artifact: sha256:<64 hex>` (from `rhizome artifact add`), `unpack: tar` or none. */
function checkArtifact(v: Record<string, unknown>, where: string): void {
  if (v.artifact !== undefined && v.artifact !== null) {
    if (typeof v.artifact !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(v.artifact)) {
      throw new InvalidConfigError(
        `${where}.artifact: expected "sha256:" and 64 hex characters, as \`rhizome artifact add\` prints`
      )
    }
    if (v.content !== undefined) {
      throw new InvalidConfigError(`${where}: give content or artifact, not both`)
    }
  }
  if (v.unpack !== undefined && v.unpack !== null) {
    if (v.unpack !== 'tar') throw new InvalidConfigError(`${where}.unpack: the only value is tar`)
    if (v.artifact === undefined) throw new InvalidConfigError(`${where}.unpack: needs an artifact`)
  }
}

/** Check the shape of one node's (partial) config: files, workloads, manifests. */
export function checkNodeConfig(cfg: unknown, where: string): void {
  if (cfg === null || cfg === undefined) return
  checkMap(cfg, CONFIG_KEYS, where, `a map with ${CONFIG_KEYS.join(', ')}`)
  if (isMap(cfg.files)) {
    for (const [path, f] of Object.entries(cfg.files)) {
      if (f === null) continue
      if (!path.startsWith('/')) {
        throw new InvalidConfigError(`${where}.files: "${path}" is not an absolute path`)
      }
      checkMap(f, FILE_KEYS, `${where}.files["${path}"]`, '{ content, mode? }')
      checkArtifact(f, `${where}.files["${path}"]`)
      try {
        parseMode(f.mode)
      } catch (err) {
        throw new InvalidConfigError(`${where}.files["${path}"]: ${(err as Error).message}`)
      }
    }
  }
  if (isMap(cfg.workloads)) {
    for (const [name, w] of Object.entries(cfg.workloads)) {
      if (w === null) continue
      const shape = '{ command, env?, cwd?, version?, health? }'
      checkMap(w, WORKLOAD_KEYS, `${where}.workloads.${name}`, shape)
      if (w.command !== undefined && (!Array.isArray(w.command) || w.command.length === 0)) {
        throw new InvalidConfigError(
          `${where}.workloads.${name}.command: expected a non-empty list, e.g. [node, server.js]`
        )
      }
      if (isMap(w.health)) checkKeys(w.health, HEALTH_KEYS, `${where}.workloads.${name}.health`)
      checkArtifact(w, `${where}.workloads.${name}`)
    }
  }
}

/** Check one document's content. */
export function checkDocument(id: string, doc: unknown): void {
  checkMap(doc, DOCUMENT_KEYS, `document "${id}"`, `a map with ${DOCUMENT_KEYS.join(', ')}`)
  checkNodeConfig(doc.defaults, `${id}.defaults`)
  if (isMap(doc.groups)) {
    for (const [g, group] of Object.entries(doc.groups)) {
      checkMap(group, ['selector', 'config'], `${id}.groups.${g}`, '{ selector, config }')
      checkNodeConfig(group.config, `${id}.groups.${g}.config`)
    }
  }
  if (isMap(doc.nodes)) {
    for (const [n, c] of Object.entries(doc.nodes)) checkNodeConfig(c, `${id}.nodes.${n}`)
  }
  checkRollouts(id, doc)
  if (isMap(doc.rollouts)) {
    for (const [n, r] of Object.entries(doc.rollouts)) {
      if (isMap(r)) checkNodeConfig(r.change, `${id}.rollouts.${n}.change`)
    }
  }
}

/** Parse and check a fleet file. `source` names it in errors. */
export function parseFleetYaml(text: string, source = 'fleet.yaml'): FleetDocuments {
  let v: unknown
  try {
    v = parseYamlInput(text, source, MAX_FLEET_YAML_BYTES)
  } catch (err) {
    throw new InvalidConfigError(`${(err as Error).message}; nothing was changed`)
  }
  if (v === null || v === undefined) return {}
  if (!isMap(v)) {
    throw new InvalidConfigError(
      `${source}: expected a map of document ids (fleet:, site/<name>:, ...) to document contents`
    )
  }
  const out: FleetDocuments = {}
  for (const [id, doc] of Object.entries(v)) {
    try {
      checkDocId(id)
    } catch {
      throw new InvalidConfigError(
        `${source}: "${id}" is not a document id (lower-case words joined by / - _ or .)`
      )
    }
    if (id === DEVICES_DOC) {
      throw new InvalidConfigError(
        `${source}: the "devices" document is written by \`rhizome enrol\`, not by apply; remove it from the file`
      )
    }
    checkDocument(id, doc)
    out[id] = doc as Record<string, unknown>
  }
  return out
}

export function fleetYaml(docs: FleetDocuments): string {
  return stringify(docs, { lineWidth: 0 })
}
