#!/usr/bin/env node
/**
 * The `rhizome` command line. Every command has --help; exit codes:
 *   0 ok · 1 usage or configuration error · 2 rejected (verification, authorisation, wrong
 *   passphrase, damaged bundle) · 3 daemon unreachable · 4 unexpected internal error.
 */
import { readFileSync } from 'node:fs'
import { access, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { Command, InvalidArgumentError } from 'commander'
import { createGenesis } from '../crdt/trust.ts'
import { encryptKeyFile, fingerprint, generateKeyPair } from '../crdt/keys.ts'
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { Replica } from '../crdt/replica.ts'
import { DEVICES_DOC } from '../crdt/devices.ts'
import type { SignedBatch } from '../crdt/signed-change.ts'
import { toHex } from '../crdt/bytes.ts'
import { DaemonClient } from './daemon-client.ts'
import { diffDocument, formatOps, plainValue, signOps, type DiffOp } from '../crdt/config-diff.ts'
import type { SignedDocument } from '../crdt/document.ts'
import { ago, recentPutBacks, SYNC_LABEL, type FleetStatus } from '../crdt/fleet-status.ts'
import { fleetYaml, parseFleetYaml, type FleetDocuments } from '../crdt/fleet-yaml.ts'
import { loadDaemonConfig } from './config.ts'
import { createIdentity, readIdentity } from './identity.ts'
import { readPassphrase } from './passphrase.ts'
import { UsageError } from './errors.ts'
import {
  daemonOption,
  EXIT,
  EXIT_HELP,
  exitCodeFor,
  keyOption,
  loadSigningKey,
  passphraseOption,
  say
} from './cli-common.ts'
import { registerTrustCommands } from './cli-trust.ts'
import { registerBundleCommands } from './cli-bundle.ts'
import { freezeForApply, registerRolloutCommands } from './cli-rollout.ts'
import { artifactLines, registerArtifactCommands } from './cli-artifacts.ts'
import { registerDashboardCommand } from './cli-dashboard.ts'
import { errorLines, putBackText, registerDescribeCommand } from './cli-describe.ts'

async function exists(p: string): Promise<boolean> {
  try {
    await access(p)
    return true
  } catch {
    return false
  }
}

// ---- commands --------------------------------------------------------------------------------

async function cmdInit(opts: {
  dir: string
  fleet: string
  passphraseFile?: string
}): Promise<void> {
  const dir = resolve(opts.dir)
  const files = ['root.key', 'admin.key', 'trust.json'].map(f => join(dir, f))
  for (const f of files) {
    if (await exists(f)) {
      throw new UsageError(`${f} already exists; a fleet is initialised once. Choose another --dir`)
    }
  }
  const pass = await readPassphrase(opts, 'passphrase for the new key files: ')
  if (pass.length < 8) throw new UsageError('the passphrase must be at least 8 characters')
  const root = generateKeyPair()
  const admin = generateKeyPair()
  const genesis = await createGenesis(
    { fleet: opts.fleet, roots: [root], admins: [{ key: toHex(admin.publicKey), name: 'admin' }] },
    nodeCryptoEd25519
  )
  await mkdir(dir, { recursive: true })
  await writeFile(
    files[0] as string,
    JSON.stringify(await encryptKeyFile(root, pass, `${opts.fleet} root`), null, 2) + '\n',
    { mode: 0o600, flag: 'wx' }
  )
  await writeFile(
    files[1] as string,
    JSON.stringify(await encryptKeyFile(admin, pass, `${opts.fleet} admin`), null, 2) + '\n',
    { mode: 0o600, flag: 'wx' }
  )
  await writeFile(files[2] as string, JSON.stringify(genesis, null, 2) + '\n', { flag: 'wx' })
  say(`fleet "${opts.fleet}" created in ${dir}`)
  say(`  root key   ${files[0]}  ${fingerprint(root.publicKey)}  (keep offline)`)
  say(`  admin key  ${files[1]}  ${fingerprint(admin.publicKey)}`)
  say(`  trust      ${files[2]}  (copy to every device; set trustFile in its daemon config)`)
}

async function cmdNodeInit(opts: { data: string }): Promise<void> {
  const dir = resolve(opts.data)
  const held = await readIdentity(dir)
  if (held !== undefined) {
    throw new UsageError(
      `${dir} already holds a device identity (public key ${held.publicKeyHex}, peer id ${held.peerId}); a device keeps its identity: enrol that key, or use another --data`
    )
  }
  const id = await createIdentity(dir)
  say(`public key   ${id.publicKeyHex}`)
  say(`fingerprint  ${id.fingerprint}`)
  say(`peer id      ${id.peerId}`)
  say(
    `enrol it with: rhizome enrol ${id.publicKeyHex} --name <name> --label site=<site> --key admin.key`
  )
}

async function publish(
  client: DaemonClient,
  docId: string,
  batch: SignedBatch | undefined
): Promise<void> {
  if (batch === undefined) return
  const r = await client.postBatch(batch)
  say(`${docId}: ${r.status}, revision ${r.heads.map(h => h.slice(0, 12)).join(',')}`)
}

async function currentDocs(replica: Replica): Promise<FleetDocuments> {
  const out: FleetDocuments = {}
  for (const id of replica.documentIds()) {
    if (id === DEVICES_DOC) continue
    const v = plainValue((await replica.open(id)).value) as Record<string, unknown>
    if (Object.keys(v).length > 0) out[id] = v
  }
  return out
}

async function cmdApply(opts: {
  file: string
  dryRun?: boolean
  key?: string
  passphraseFile?: string
  daemon: string
}): Promise<void> {
  let text: string
  try {
    text = await readFile(opts.file, 'utf8')
  } catch (err) {
    throw new UsageError(`cannot read ${opts.file}: ${(err as Error).message}`)
  }
  const client = new DaemonClient(opts.daemon)
  const replica = await client.localReplica()
  const { docs: desired, notes } = await freezeForApply(
    parseFleetYaml(text, opts.file),
    await currentDocs(replica),
    replica
  )
  const plan: Array<{ doc: SignedDocument; ops: DiffOp[] }> = []
  for (const [id, want] of Object.entries(desired)) {
    const doc = await replica.open(id)
    const ops = diffDocument(doc, want)
    if (ops.length > 0) plan.push({ doc, ops })
  }
  if (plan.length === 0) {
    say('no changes: the fleet already matches ' + opts.file)
    return
  }
  for (const { doc, ops } of plan) for (const l of formatOps(ops, doc.id)) say(l)
  for (const note of notes) say(note)
  const n = plan.reduce((s, p) => s + p.ops.length, 0)
  if (opts.dryRun === true) {
    say(`dry run: ${n} change(s) in ${plan.length} document(s) not applied`)
    return
  }
  const signer = Replica.signer(await loadSigningKey(opts))
  for (const { doc, ops } of plan) {
    await publish(client, doc.id, await signOps(doc, signer, ops, `apply ${opts.file}`))
  }
}

/** Refuse a document the daemon does not hold, naming the ones it does (get, history, rollback). */
async function requireDocument(client: DaemonClient, id: string): Promise<void> {
  const ids = await client.docIds()
  if (!ids.includes(id)) {
    throw new UsageError(
      `the daemon at ${client.base} holds no document "${id}"; it holds ${ids.map(i => `"${i}"`).join(', ') || 'none yet'}`
    )
  }
}

async function cmdGet(opts: { daemon: string; doc?: string }): Promise<void> {
  const client = new DaemonClient(opts.daemon)
  if (opts.doc === DEVICES_DOC) {
    await requireDocument(client, DEVICES_DOC)
    const devices = await (await client.localReplica([DEVICES_DOC])).open(DEVICES_DOC)
    say('# the devices document: written by `rhizome enrol`, not by apply')
    process.stdout.write(
      fleetYaml({ [DEVICES_DOC]: plainValue(devices.value) as Record<string, unknown> })
    )
    return
  }
  if (opts.doc !== undefined) await requireDocument(client, opts.doc)
  const docs = await currentDocs(await client.localReplica())
  if (opts.doc !== undefined) {
    process.stdout.write(fleetYaml({ [opts.doc]: docs[opts.doc] ?? {} }))
    return
  }
  if (Object.keys(docs).length === 0) {
    // A comment, so that `rhizome get > fleet.yaml` still writes a file apply reads.
    say(
      '# no desired config yet: write a fleet.yaml and sign it with `rhizome apply -f fleet.yaml`'
    )
  }
  process.stdout.write(fleetYaml(docs))
}

async function cmdStatus(opts: { daemon: string; json?: boolean }): Promise<void> {
  const s = await new DaemonClient(opts.daemon).json<FleetStatus>('/api/status')
  if (opts.json === true) {
    say(JSON.stringify(s, null, 2))
    return
  }
  say(
    `fleet ${s.fleet}${s.mesh ? '' : ' (this daemon runs without the mesh: only its own status is known)'}`
  )
  say(
    `latest: ${
      Object.entries(s.latest)
        .map(([id, h]) => `${id}@${h.map(x => x.slice(0, 8)).join(',')}`)
        .join('  ') || '(no documents)'
    }`
  )
  const now = Date.now()
  for (const n of s.nodes) {
    const state = n.online ? 'online' : `last seen ${ago(n.lastSeen ?? 0, now)}`
    const wl = Object.entries(n.status?.workloads ?? {})
      .map(
        ([w, x]) =>
          `${w}:${x.state}${x.healthy === false ? '(unhealthy)' : ''}${x.version === undefined ? '' : '@' + x.version}${x.restarts > 0 ? ` restarts=${x.restarts}` : ''}`
      )
      .join(' ')
    const putBack = recentPutBacks(n, now)
    const drift = putBack.length > 0 ? ` ${putBackText(putBack)}` : ''
    const f = n.status?.freshness
    const stale =
      f?.state === 'stale'
        ? ` STALE (${f.reason === 'behind' ? 'its peers withhold what was issued' : 'its newest beacon expired'})`
        : ''
    say(
      `${n.name.padEnd(16)} ${n.peerId.slice(0, 16)}… ${state.padEnd(18)} ${SYNC_LABEL[n.sync].padEnd(10)} ${wl}${drift}${stale}${n.enrolled ? '' : ' (not enrolled)'}`
    )
    for (const l of errorLines(n)) say(`${''.padEnd(18)}${l}`)
    for (const l of artifactLines(n.status?.artifacts)) say(`${''.padEnd(18)}${l}`)
  }
}

async function cmdHistory(opts: { daemon: string; doc?: string; limit: number }): Promise<void> {
  const client = new DaemonClient(opts.daemon)
  if (opts.doc !== undefined) await requireDocument(client, opts.doc)
  const entries = await client.history({ doc: opts.doc, limit: opts.limit })
  for (const e of entries.reverse()) {
    say(
      `${new Date(e.time * 1000).toISOString()}  ${e.doc}  ${e.hash.slice(0, 12)}  ${e.signerName ?? e.signer.slice(0, 12)} (${e.role ?? 'unknown'})  ${e.message ?? ''}`
    )
    for (const l of formatOps(e.diff.slice(0, 50))) say('    ' + l)
    if (e.diff.length > 50) say(`    … ${e.diff.length - 50} more`)
  }
  if (entries.length === 0) say('no history')
}

async function cmdRollback(opts: {
  to: string
  doc: string
  dryRun?: boolean
  key?: string
  passphraseFile?: string
  daemon: string
}): Promise<void> {
  const client = new DaemonClient(opts.daemon)
  await requireDocument(client, opts.doc)
  const replica = await client.localReplica([opts.doc])
  const doc = await replica.open(opts.doc)
  const matches = doc.history().filter(h => h.hash.startsWith(opts.to.toLowerCase()))
  if (opts.to.length < 6 || matches.length !== 1) {
    throw new UsageError(
      `"${opts.to}" ${matches.length > 1 ? 'matches several changes' : 'is no change'} of document "${opts.doc}"; give at least 6 characters of a hash from \`rhizome history --doc ${opts.doc}\``
    )
  }
  const target = plainValue(doc.valueAt([(matches[0] as { hash: string }).hash])) as Record<
    string,
    unknown
  >
  const ops = diffDocument(doc, target)
  if (ops.length === 0) {
    say(`no changes: "${opts.doc}" already has the content of ${opts.to}`)
    return
  }
  for (const l of formatOps(ops, opts.doc)) say(l)
  if (opts.dryRun === true) return
  const signer = Replica.signer(await loadSigningKey(opts))
  await publish(client, opts.doc, await signOps(doc, signer, ops, `rollback to ${opts.to}`))
}

async function cmdLogs(name: string, opts: { daemon: string; node?: string }): Promise<void> {
  const node = opts.node === undefined ? '' : `?node=${encodeURIComponent(opts.node)}`
  const r = await new DaemonClient(opts.daemon).json<{ lines: string[] }>(
    `/api/workloads/${encodeURIComponent(name)}/logs${node}`
  )
  for (const l of r.lines) say(l)
}

async function cmdStart(opts: { config?: string }): Promise<void> {
  const { Daemon } = await import('./daemon.ts')
  const config = loadDaemonConfig(opts.config)
  const daemon = await Daemon.start({ config })
  let signals = 0
  const stop = (sig: string): void => {
    if (++signals > 1) {
      process.stderr.write(`second ${sig}: exiting now\n`)
      process.exit(130)
    }
    void daemon.stop().then(
      () => process.exit(0),
      err => {
        process.stderr.write(`shutdown failed: ${(err as Error).message}\n`)
        process.exit(EXIT.internal)
      }
    )
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
}

// ---- wiring ----------------------------------------------------------------------------------

/** The daemon answers at most this many history entries (MAX_HISTORY_ENTRIES in daemon.ts). */
const MAX_HISTORY_LIMIT = 1000

function historyLimit(v: string): number {
  const n = Number(v)
  if (!/^\d+$/.test(v) || n < 1 || n > MAX_HISTORY_LIMIT) {
    throw new InvalidArgumentError(`expected a whole number from 1 to ${MAX_HISTORY_LIMIT}`)
  }
  return n
}

/** The package's version; package.json sits one level above both node/cli.ts and dist/cli.js. */
function packageVersion(): string {
  const url = new URL('../package.json', import.meta.url)
  return (JSON.parse(readFileSync(url, 'utf8')) as { version: string }).version
}

export function program(): Command {
  const p = new Command('rhizome')
    .description(
      'Peer-to-peer coordination for fleets of edge devices: signed desired config, reconciled by a daemon on every device.'
    )
    .version(`${packageVersion()} (Node.js ${process.version})`, '-V, --version')
    .addHelpText('after', EXIT_HELP)
    .showHelpAfterError('(run with --help for usage)')
  p.configureHelp({ showGlobalOptions: true })

  p.command('init')
    .description(
      'create a fleet: root and admin key files (encrypted) and the genesis trust statement (trust.json)'
    )
    .option('--dir <dir>', 'where to write root.key, admin.key and trust.json', '.')
    .option('--fleet <name>', 'fleet name', 'fleet')
    .option(
      '--passphrase-file <file>',
      "read the key files' passphrase from this file (else $RHIZOME_PASSPHRASE, else a prompt)"
    )
    .addHelpText('after', EXIT_HELP)
    .action(cmdInit)

  const node = p.command('node').description('device identity')
  node
    .command('init')
    .description(
      "create this device's identity (ed25519) in its data directory and print its public key, fingerprint and PeerId"
    )
    .requiredOption('--data <dir>', "the daemon's data directory")
    .addHelpText('after', EXIT_HELP)
    .action(cmdNodeInit)

  p.command('start')
    .description('run the daemon (reconciles this device; serves the HTTP API)')
    .option('--config <file>', 'daemon config YAML (RHIZOME_* environment variables override it)')
    .addHelpText(
      'after',
      '\nConfig keys: name, labels, dataDir, trustFile, listen, bootstrap, mdns, http {host, port}, filesRoot, allowedRoots, manifestDir, reconcileIntervalMs, driftCheckMs, statusIntervalMs.' +
        EXIT_HELP
    )
    .action(cmdStart)

  p.command('apply')
    .description(
      'make the desired config equal a fleet YAML file: show the diff, sign it, publish it'
    )
    .requiredOption(
      '-f, --file <fleet.yaml>',
      'top-level keys are document ids (fleet:, site/<name>:), each holding selector/defaults/groups/nodes'
    )
    .option('--dry-run', 'show the diff, change nothing')
    .addOption(keyOption())
    .addOption(passphraseOption())
    .addOption(daemonOption())
    .addHelpText(
      'after',
      '\nDocuments not named in the file are left alone; keys removed from a named document are deleted.' +
        EXIT_HELP
    )
    .action(cmdApply)

  p.command('get')
    .description('print the current desired config as fleet YAML (the layout apply reads)')
    .option('--doc <id>', 'only this document')
    .addOption(daemonOption())
    .addHelpText('after', EXIT_HELP)
    .action(cmdGet)

  p.command('status')
    .description(
      'the fleet at a glance: nodes, online or last seen, applied revision, workload health, files put back, config errors'
    )
    .option('--json', 'machine-readable output (GET /api/status)')
    .addOption(daemonOption())
    .addHelpText('after', EXIT_HELP)
    .action(cmdStatus)

  p.command('history')
    .description('who signed what and when, with diffs')
    .option('--doc <id>', 'only this document')
    .option(
      '--limit <n>',
      `at most this many changes (1 to ${MAX_HISTORY_LIMIT})`,
      historyLimit,
      50
    )
    .addOption(daemonOption())
    .addHelpText('after', EXIT_HELP)
    .action(cmdHistory)

  p.command('rollback')
    .description('sign a change that restores a document to its content at an earlier change')
    .requiredOption('--to <hash>', 'a change hash (at least 6 characters) from `rhizome history`')
    .option('--doc <id>', 'the document', 'fleet')
    .option('--dry-run', 'show the diff, change nothing')
    .addOption(keyOption())
    .addOption(passphraseOption())
    .addOption(daemonOption())
    .addHelpText('after', EXIT_HELP)
    .action(cmdRollback)

  p.command('logs')
    .description("the last lines a workload printed on the daemon's device, or on another node's")
    .argument('<workload>')
    .option('--node <name>', 'ask this node (name, PeerId or key) through the mesh')
    .addOption(daemonOption())
    .addHelpText('after', EXIT_HELP)
    .action(cmdLogs)

  registerTrustCommands(p, EXIT_HELP)
  registerBundleCommands(p, EXIT_HELP)
  registerArtifactCommands(p, EXIT_HELP)
  registerRolloutCommands(p)
  registerDashboardCommand(p, EXIT_HELP)
  registerDescribeCommand(p, EXIT_HELP)
  return p
}

export async function main(argv: string[]): Promise<number> {
  try {
    await program().parseAsync(argv)
    return EXIT.ok
  } catch (err) {
    const e = err as Error
    process.stderr.write(`rhizome: ${e.message}\n`)
    if (exitCodeFor(e) === EXIT.internal) {
      process.stderr.write(`${e.stack ?? ''}\n(this is a bug; please report it)\n`)
    }
    return exitCodeFor(e)
  }
}

/** The command's entry point (bin/rhizome.cjs, or `node node/cli.ts`): runs `argv`, sets the exit code. */
export async function run(argv: string[]): Promise<void> {
  // `rhizome … | head`: the reader has gone, so there is nobody left to tell; stop quietly.
  process.stdout.on('error', err => {
    if ((err as NodeJS.ErrnoException).code === 'EPIPE') process.exit(EXIT.ok)
    throw err
  })
  // `npm run rhizome -- …` runs in the repository's root; paths on its command line are the caller's.
  const callerDir = process.env.INIT_CWD
  if (process.env.npm_lifecycle_event === 'rhizome' && callerDir !== undefined) {
    process.chdir(callerDir)
  }
  const code = await main(argv)
  // `start` keeps running; every other command ends here. A daemon that failed to start has
  // stopped what it started, but must not linger on whatever a library left behind.
  if (argv[2] === 'start' && code !== 0) process.exit(code)
  if (argv[2] !== 'start') process.exitCode = code
}

if (import.meta.main) await run(process.argv)
