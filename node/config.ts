/**
 * The daemon's configuration: one YAML file plus RHIZOME_* environment variables (which win),
 * checked in one place. Unknown keys are errors that name the valid ones.
 *
 * ```yaml
 * name: till-7                       # used until the node is enrolled (enrolment name wins)
 * labels: { site: berlin-3, role: pos }
 * dataDir: /var/lib/rhizome          # LevelStore (store/), identity.key, trust.json
 * trustFile: /etc/rhizome/trust.json # fleet genesis (rhizome init); copied into dataDir
 * listen: [/ip4/0.0.0.0/tcp/4001, /ip4/0.0.0.0/tcp/4002/ws]
 * bootstrap: [/ip4/10.0.0.2/tcp/4001/p2p/12D3Koo...]
 * mdns: true
 * extraPeers: 3                      # connections kept to enrolled nodes beyond bootstrap (0: none)
 * http: { host: 127.0.0.1, port: 8080 }
 * filesRoot: /                       # managed files are written under this directory
 * allowedRoots: [/opt/rhizome, /srv/rhizome]   # ... and only below these paths (never the daemon's
 *                                    # own config file, trust file or data directory)
 * manifestDir: /var/lib/rancher/k3s/server/manifests
 * reconcileIntervalMs: 30000
 * driftCheckMs: 2000
 * statusIntervalMs: 10000
 * artifactFetchRate: 0               # bytes/s for all artifact downloads together (0: no limit)
 * artifactServeRate: 0               # bytes/s for all artifact chunks served to peers (0: no limit)
 * artifactPort: 0                    # TCP port of artifact links (TLS, keyed over the mesh), at the
 *                                    # listen addresses' hosts; 0: any free port; off: none
 * artifactDiskBudget: 21474836480    # bytes; unreferenced artifacts are collected sooner above it
 * artifactGcGraceMs: 86400000        # unreferenced artifacts are kept this long
 * tryModeMs: 120000                  # a config after which no peer is reached this long is rolled back (0: off)
 * workloadUser: rhizome-workload     # workloads without user: run as this (default: rhizome-workload
 *                                    # when the daemon can switch users, else the daemon's own user);
 *                                    # root here is the only way a workload may run as root or in
 *                                    # group 0, the daemon's own account the only way one may run
 *                                    # as that account or in its group (node/appliers/accounts.ts)
 * allowUnsafeModes: false            # true: managed files may be setuid, setgid or writable by anyone
 * ```
 * Environment: RHIZOME_NAME, RHIZOME_LABELS (k=v,k=v), RHIZOME_DATA_DIR, RHIZOME_TRUST_FILE,
 * RHIZOME_LISTEN and RHIZOME_BOOTSTRAP (comma-separated), RHIZOME_MDNS (true/false), RHIZOME_EXTRA_PEERS,
 * RHIZOME_HTTP_HOST, RHIZOME_HTTP_PORT, RHIZOME_FILES_ROOT, RHIZOME_ALLOWED_ROOTS,
 * RHIZOME_MANIFEST_DIR, RHIZOME_RECONCILE_INTERVAL_MS, RHIZOME_DRIFT_CHECK_MS, RHIZOME_STATUS_INTERVAL_MS,
 * RHIZOME_ARTIFACT_FETCH_RATE, RHIZOME_ARTIFACT_SERVE_RATE, RHIZOME_ARTIFACT_PORT, RHIZOME_ARTIFACT_DISK_BUDGET, RHIZOME_ARTIFACT_GC_GRACE_MS, RHIZOME_TRY_MODE_MS,
 * RHIZOME_WORKLOAD_USER, RHIZOME_ALLOW_UNSAFE_MODES.
 */
import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { dirname, isAbsolute, resolve } from 'node:path'
import { parseYamlInput } from '../crdt/yaml-input.ts'
import { InvalidConfigError } from './errors.ts'
import { DEFAULT_DISK_BUDGET_BYTES, DEFAULT_GC_GRACE_MS } from './artifacts/limits.ts'
import { EXTRA_PEERS } from '../mesh/limits.ts'
import { isMap } from '../crdt/config-shape.ts'
import { multiaddr } from '@multiformats/multiaddr'

/** Try mode (node/rollout-agent.ts): a config after which no peer is reached this long is rolled back. */
export const DEFAULT_TRY_MODE_MS = 120_000

/** The data directory's layout: the store, and the copy of the fleet's trust statement. */
export const STORE_DIR = 'store'
export const TRUST_COPY = 'trust.json'

export interface DaemonConfig {
  /** The file this config was read from (absolute), if any: managed files never overwrite it. */
  configFile: string | undefined
  name: string
  labels: Record<string, string>
  dataDir: string
  trustFile: string | undefined
  listen: string[]
  bootstrap: string[]
  mdns: boolean
  extraPeers: number
  http: { host: string; port: number }
  filesRoot: string
  allowedRoots: string[]
  manifestDir: string | undefined
  reconcileIntervalMs: number
  driftCheckMs: number
  statusIntervalMs: number
  artifactFetchRate: number
  artifactServeRate: number
  /** Artifact links' port (0: any free one), or false: none served. */
  artifactPort: number | false
  artifactDiskBudget: number
  artifactGcGraceMs: number
  tryModeMs: number
  workloadUser: string | undefined
  allowUnsafeModes: boolean
}

export const CONFIG_FILE_KEYS = [
  'name',
  'labels',
  'dataDir',
  'trustFile',
  'listen',
  'bootstrap',
  'mdns',
  'extraPeers',
  'http',
  'filesRoot',
  'allowedRoots',
  'manifestDir',
  'reconcileIntervalMs',
  'driftCheckMs',
  'statusIntervalMs',
  'artifactFetchRate',
  'artifactServeRate',
  'artifactPort',
  'artifactDiskBudget',
  'artifactGcGraceMs',
  'tryModeMs',
  'workloadUser',
  'allowUnsafeModes'
] as const
const HTTP_KEYS = ['host', 'port']

const ENV: Record<string, (typeof CONFIG_FILE_KEYS)[number] | 'http.host' | 'http.port'> = {
  RHIZOME_NAME: 'name',
  RHIZOME_LABELS: 'labels',
  RHIZOME_DATA_DIR: 'dataDir',
  RHIZOME_TRUST_FILE: 'trustFile',
  RHIZOME_LISTEN: 'listen',
  RHIZOME_BOOTSTRAP: 'bootstrap',
  RHIZOME_MDNS: 'mdns',
  RHIZOME_EXTRA_PEERS: 'extraPeers',
  RHIZOME_HTTP_HOST: 'http.host',
  RHIZOME_HTTP_PORT: 'http.port',
  RHIZOME_FILES_ROOT: 'filesRoot',
  RHIZOME_ALLOWED_ROOTS: 'allowedRoots',
  RHIZOME_MANIFEST_DIR: 'manifestDir',
  RHIZOME_RECONCILE_INTERVAL_MS: 'reconcileIntervalMs',
  RHIZOME_DRIFT_CHECK_MS: 'driftCheckMs',
  RHIZOME_STATUS_INTERVAL_MS: 'statusIntervalMs',
  RHIZOME_ARTIFACT_FETCH_RATE: 'artifactFetchRate',
  RHIZOME_ARTIFACT_SERVE_RATE: 'artifactServeRate',
  RHIZOME_ARTIFACT_PORT: 'artifactPort',
  RHIZOME_ARTIFACT_DISK_BUDGET: 'artifactDiskBudget',
  RHIZOME_ARTIFACT_GC_GRACE_MS: 'artifactGcGraceMs',
  RHIZOME_TRY_MODE_MS: 'tryModeMs',
  RHIZOME_WORKLOAD_USER: 'workloadUser',
  RHIZOME_ALLOW_UNSAFE_MODES: 'allowUnsafeModes'
}

export const MAX_CONFIG_FILE_BYTES = 1024 * 1024

function fail(where: string, msg: string): never {
  throw new InvalidConfigError(`${where}: ${msg}`)
}

function str(v: unknown, where: string): string {
  if (typeof v === 'string' && v !== '') return v
  if (typeof v === 'number') return String(v)
  return fail(where, `expected a non-empty string, got ${JSON.stringify(v)}`)
}

function list(v: unknown, where: string): string[] {
  if (typeof v === 'string') {
    return v
      .split(',')
      .map(s => s.trim())
      .filter(s => s !== '')
  }
  if (Array.isArray(v)) return v.map((x, i) => str(x, `${where}[${i}]`))
  return fail(where, 'expected a list of strings')
}

/**
 * A list of multiaddrs, each parsed here so a typo is a configuration error naming the entry, not
 * a failure deep in the mesh's start; `peerId`: each must end in /p2p/<PeerId> (a bootstrap
 * peer's identity is checked when it is dialled); else none may name one (a listen address).
 */
function addresses(v: unknown, where: string, peerId: boolean): string[] {
  const all = list(v, where)
  all.forEach((a, i) => {
    let components
    try {
      components = multiaddr(a).getComponents()
    } catch (err) {
      fail(
        `${where}[${i}]`,
        `"${a}" is not a multiaddr (${(err as Error).message}); write e.g. /ip4/10.0.0.2/tcp/4001`
      )
    }
    if (!peerId && components.some(c => c.name === 'p2p')) {
      fail(`${where}[${i}]`, `"${a}": a listen address names no peer id; remove its /p2p/… part`)
    }
    if (peerId && !components.some(c => c.name === 'p2p')) {
      fail(
        `${where}[${i}]`,
        `"${a}" has no /p2p/<PeerId>; append the peer's id (\`rhizome node init\` and \`rhizome describe\` print it), e.g. ${a}/p2p/12D3KooW…`
      )
    }
  })
  return all
}

function bool(v: unknown, where: string): boolean {
  if (typeof v === 'boolean') return v
  if (v === 'true' || v === '1' || v === 'on') return true
  if (v === 'false' || v === '0' || v === 'off') return false
  return fail(where, `expected true or false, got ${JSON.stringify(v)}`)
}

function int(v: unknown, where: string, min: number, max: number): number {
  const n = typeof v === 'string' ? Number(v) : v
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    return fail(where, `expected an integer from ${min} to ${max}, got ${JSON.stringify(v)}`)
  }
  return n
}

/** A TCP port, 0 (any free one) to 65535. */
function port(v: unknown, where: string): number {
  const n = typeof v === 'string' ? Number(v) : v
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 65_535) {
    return fail(
      where,
      `expected a port from 0 (any free one) to 65535, or off, got ${JSON.stringify(v)}`
    )
  }
  return n
}

function labels(v: unknown, where: string): Record<string, string> {
  if (typeof v === 'string') {
    const out: Record<string, string> = {}
    for (const part of v
      .split(',')
      .map(s => s.trim())
      .filter(s => s !== '')) {
      const i = part.indexOf('=')
      if (i < 1) fail(where, `"${part}" is not key=value`)
      out[part.slice(0, i)] = part.slice(i + 1)
    }
    return out
  }
  if (!isMap(v)) return fail(where, 'expected a map of label names to values')
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, str(x, `${where}.${k}`)]))
}

/** Parse `k=v` label arguments (CLI `--label`). */
export function parseLabelArgs(args: string[]): Record<string, string> {
  return labels(args.join(','), '--label')
}

/**
 * Load the config: file (optional) then environment. Relative paths in the file are resolved
 * against the file's directory.
 */
export function loadDaemonConfig(
  file: string | undefined,
  env: Record<string, string | undefined> = process.env
): DaemonConfig {
  if (file === undefined) return parseDaemonConfig(undefined, { env })
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new InvalidConfigError(
      `cannot read config file ${file}: ${(err as Error).message}; pass an existing file with --config`
    )
  }
  return parseDaemonConfig(text, { file, env })
}

/**
 * The config from a file's text (`file` names it in errors and is where relative paths start;
 * without text, the environment alone) and the environment.
 */
export function parseDaemonConfig(
  text: string | undefined,
  opts: { file?: string; env?: Record<string, string | undefined> } = {}
): DaemonConfig {
  const env = opts.env ?? process.env
  let raw: Record<string, unknown> = {}
  const file = opts.file ?? 'configuration file'
  const base = opts.file === undefined ? process.cwd() : dirname(resolve(opts.file))
  const where = text === undefined ? 'configuration' : file
  if (text !== undefined) {
    const v = parseYamlInput(text, file, MAX_CONFIG_FILE_BYTES)
    if (v !== null && v !== undefined && !isMap(v)) fail(file, 'expected a map of settings')
    raw = v ?? {}
    for (const k of Object.keys(raw)) {
      if (!(CONFIG_FILE_KEYS as readonly string[]).includes(k)) {
        fail(file, `unknown key "${k}"; valid keys are ${CONFIG_FILE_KEYS.join(', ')}`)
      }
    }
    if (raw.http !== undefined) {
      if (!isMap(raw.http)) fail(file, 'http: expected { host, port }')
      for (const k of Object.keys(raw.http)) {
        if (!HTTP_KEYS.includes(k)) {
          fail(file, `unknown key "http.${k}"; valid keys are http.host, http.port`)
        }
      }
    }
  }
  const path = (p: string): string => (isAbsolute(p) ? p : resolve(base, p))
  const http = { ...(isMap(raw.http) ? raw.http : {}) }
  for (const [name, key] of Object.entries(ENV)) {
    const v = env[name]
    if (v === undefined || v === '') continue
    if (key === 'http.host') http.host = v
    else if (key === 'http.port') http.port = v
    else raw[key] = v
  }
  const envWhere = (k: string): string => {
    const e = Object.entries(ENV).find(([, key]) => key === k)?.[0]
    return e !== undefined && env[e] !== undefined && env[e] !== '' ? e : `${where}: ${k}`
  }
  if (raw.dataDir === undefined) {
    fail(
      where,
      'dataDir is required (the directory holding the store and identity.key; `rhizome node init --data DIR` makes one); set it in the file or RHIZOME_DATA_DIR'
    )
  }
  const config: DaemonConfig = {
    configFile: opts.file === undefined ? undefined : resolve(opts.file),
    name: raw.name === undefined ? hostname() : str(raw.name, envWhere('name')),
    labels: raw.labels === undefined ? {} : labels(raw.labels, envWhere('labels')),
    dataDir: path(str(raw.dataDir, envWhere('dataDir'))),
    trustFile:
      raw.trustFile === undefined ? undefined : path(str(raw.trustFile, envWhere('trustFile'))),
    listen:
      raw.listen === undefined
        ? ['/ip4/0.0.0.0/tcp/4001', '/ip4/0.0.0.0/tcp/4002/ws']
        : addresses(raw.listen, envWhere('listen'), false),
    bootstrap:
      raw.bootstrap === undefined ? [] : addresses(raw.bootstrap, envWhere('bootstrap'), true),
    mdns: raw.mdns === undefined ? true : bool(raw.mdns, envWhere('mdns')),
    extraPeers:
      raw.extraPeers === undefined
        ? EXTRA_PEERS
        : int(raw.extraPeers, envWhere('extraPeers'), 0, 32),
    http: {
      host: http.host === undefined ? '127.0.0.1' : str(http.host, envWhere('http.host')),
      port: http.port === undefined ? 8080 : int(http.port, envWhere('http.port'), 0, 65535)
    },
    filesRoot: raw.filesRoot === undefined ? '/' : path(str(raw.filesRoot, envWhere('filesRoot'))),
    // Not /etc/rhizome by default: the daemon's own config and trust file live there.
    allowedRoots:
      raw.allowedRoots === undefined
        ? ['/opt/rhizome', '/srv/rhizome']
        : list(raw.allowedRoots, envWhere('allowedRoots')),
    manifestDir:
      raw.manifestDir === undefined
        ? undefined
        : path(str(raw.manifestDir, envWhere('manifestDir'))),
    reconcileIntervalMs:
      raw.reconcileIntervalMs === undefined
        ? 30_000
        : int(raw.reconcileIntervalMs, envWhere('reconcileIntervalMs'), 100, 86_400_000),
    driftCheckMs:
      raw.driftCheckMs === undefined
        ? 2000
        : int(raw.driftCheckMs, envWhere('driftCheckMs'), 50, 3_600_000),
    statusIntervalMs:
      raw.statusIntervalMs === undefined
        ? 10_000
        : int(raw.statusIntervalMs, envWhere('statusIntervalMs'), 100, 3_600_000),
    artifactFetchRate:
      raw.artifactFetchRate === undefined
        ? 0
        : int(raw.artifactFetchRate, envWhere('artifactFetchRate'), 0, 2 ** 40),
    artifactServeRate:
      raw.artifactServeRate === undefined
        ? 0
        : int(raw.artifactServeRate, envWhere('artifactServeRate'), 0, 2 ** 40),
    artifactPort:
      raw.artifactPort === undefined
        ? 0
        : raw.artifactPort === false || raw.artifactPort === 'off'
          ? false
          : port(raw.artifactPort, envWhere('artifactPort')),
    artifactDiskBudget:
      raw.artifactDiskBudget === undefined
        ? DEFAULT_DISK_BUDGET_BYTES
        : int(raw.artifactDiskBudget, envWhere('artifactDiskBudget'), 0, 2 ** 50),
    artifactGcGraceMs:
      raw.artifactGcGraceMs === undefined
        ? DEFAULT_GC_GRACE_MS
        : int(raw.artifactGcGraceMs, envWhere('artifactGcGraceMs'), 0, 365 * 86_400_000),
    tryModeMs:
      raw.tryModeMs === undefined
        ? DEFAULT_TRY_MODE_MS
        : int(raw.tryModeMs, envWhere('tryModeMs'), 0, 86_400_000),
    workloadUser:
      raw.workloadUser === undefined ? undefined : str(raw.workloadUser, envWhere('workloadUser')),
    allowUnsafeModes:
      raw.allowUnsafeModes === undefined
        ? false
        : bool(raw.allowUnsafeModes, envWhere('allowUnsafeModes'))
  }
  for (const r of config.allowedRoots) {
    if (!r.startsWith('/')) fail(envWhere('allowedRoots'), `"${r}" is not an absolute path`)
  }
  return config
}
