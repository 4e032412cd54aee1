/**
 * `rhizome` commands for the trust lifecycle (docs/trust.md):
 *
 *   keygen                       a new admin, operator or root key file, with its own passphrase
 *   trust show                   the chain, forks, leaked keys caught equivocating (--json)
 *   trust propose …              write an unsigned next statement to a file: add/remove admins and
 *                                operators (documents, node selector), rotate roots, change the
 *                                threshold, revoke a compromised key at an earlier cut
 *   trust sign FILE              add a root key's signature (on that root holder's machine, offline)
 *   trust publish FILE           check the threshold and hand the statement to a daemon
 *   trust invalidated            changes a daemon dropped because a cut made them invalid
 *   resign [HASH…]               sign honest dropped changes again, on the valid state
 *   enrol / revoke-device / unenrol   a device's entry in the `devices` document
 *   beacon                       sign a freeze beacon (what is current, until when), once or on a
 *                                timer (--every): a node whose newest beacon expired reports stale
 *
 * A proposal file is a signed statement (`{statement, signatures}`, as trust.json) whose
 * signatures may not reach the threshold yet. Removing or narrowing a key fills its cuts in from
 * the daemon's documents, so everything it wrote there stays valid; `--cut DOC=HASH[,HASH]`
 * cuts a compromised key earlier, and `--cut DOC=none` leaves nothing of it in that document.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { Option, type Command } from 'commander'
import { fromHex, toHex } from '../crdt/bytes.ts'
import {
  DEVICES_DOC,
  enrolledDevices,
  mayRevoke,
  mayWrite,
  outOfReach,
  revokedDevices
} from '../crdt/devices.ts'
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { signOps } from '../crdt/config-diff.ts'
import { TrustForkError } from '../crdt/errors.ts'
import {
  encryptKeyFile,
  fingerprint,
  generateKeyPair,
  parsePublicKey,
  type KeyPair
} from '../crdt/keys.ts'
import { signBeacon } from '../crdt/beacon.ts'
import { Replica } from '../crdt/replica.ts'
import type { SignedBatch } from '../crdt/signed-change.ts'
import {
  addSignatures,
  countRootSignatures,
  encodeTrustStatement,
  proposeStatement,
  statementHash,
  trustStatementFromJson,
  type CutTip,
  type LabelSelector,
  type OperatorEntry,
  type Revocation,
  type SignedTrustStatement,
  type TrustStatement
} from '../crdt/trust.ts'
import { selectorMatches } from '../crdt/effective-config.ts'
import { parseLabelArgs } from './config.ts'
import { DaemonClient } from './daemon-client.ts'
import { DeviceOutOfReachError, UsageError } from './errors.ts'
import { readPassphrase } from './passphrase.ts'
import { daemonOption, keyOption, loadSigningKey, passphraseOption, say } from './cli-common.ts'
import type { InvalidatedRecord, TrustState } from './trust-daemon.ts'

const collect = (v: string, prev: string[]): string[] => [...prev, v]
const short = (hex: string): string => `${hex.slice(0, 12)}…`
const fp = (hex: string): string => fingerprint(fromHex(hex))

async function publishBatch(client: DaemonClient, batch: SignedBatch | undefined): Promise<void> {
  if (batch === undefined) return
  const r = await client.postBatch(batch)
  say(`${batch.docId}: ${r.status}, revision ${r.heads.map(h => h.slice(0, 12)).join(',')}`)
}

// ---- keygen ------------------------------------------------------------------------------------

async function cmdKeygen(opts: { out: string; label: string; passphraseFile?: string }) {
  const pass = await readPassphrase(opts, `passphrase for the new key ${opts.label}: `)
  if (pass.length < 8) throw new UsageError('the passphrase must be at least 8 characters')
  const pair = generateKeyPair()
  const file = JSON.stringify(await encryptKeyFile(pair, pass, opts.label), null, 2) + '\n'
  try {
    await writeFile(opts.out, file, { mode: 0o600, flag: 'wx' })
  } catch (err) {
    throw new UsageError(
      `cannot write ${opts.out}: ${(err as Error).message}; choose another --out`
    )
  }
  say(`key "${opts.label}" written to ${opts.out}`)
  say(`public key   ${toHex(pair.publicKey)}`)
  say(`fingerprint  ${fingerprint(pair.publicKey)}`)
  say('give the public key to a root holder: rhizome trust propose --add-admin <key>:<name> …')
}

// ---- show --------------------------------------------------------------------------------------

async function cmdShow(opts: { daemon: string; json?: boolean }): Promise<void> {
  const state = await new DaemonClient(opts.daemon).json<TrustState>('/api/trust/state')
  if (opts.json === true) {
    say(JSON.stringify(state, null, 2))
    return
  }
  const s = state.latest
  say(
    `fleet "${state.fleet}" (${short(state.fleetId)}), trust statement version ${state.version} in force`
  )
  if (state.forked !== null) {
    say(
      `FORKED at version ${state.forked.version}: ${state.forked.hashes.map(short).join(' and ')}; trust changes are halted until a threshold of roots signs version ${state.forked.version + 1} extending one (rhizome trust propose --extend HASH …)`
    )
  }
  say(`roots (${s.threshold} of ${s.roots.length} must sign the next version):`)
  for (const r of s.roots) say(`  ${fp(r)}  ${r}`)
  say('admins (every document, every node):')
  for (const a of s.admins) say(`  ${a.name.padEnd(16)} ${fp(a.key)}  ${a.key}`)
  say('operators:')
  for (const o of s.operators) {
    const reach = o.selector === undefined ? 'no node' : JSON.stringify(o.selector)
    say(`  ${o.name.padEnd(16)} ${fp(o.key)}  docs ${o.docs.join(',') || '(none)'}  nodes ${reach}`)
  }
  if (s.nodes.length > 0) {
    say('nodes named in the statement:')
    for (const n of s.nodes) say(`  ${n.name.padEnd(16)} ${fp(n.key)}  ${JSON.stringify(n.labels)}`)
  }
  say('statements held:')
  for (const st of state.statements) {
    say(
      `  v${st.version}  ${short(st.hash)}  ${st.onChain ? 'chain ' : 'BRANCH'}  issued ${st.issued}  ${st.signatures} signature(s)`
    )
  }
  for (const f of state.forks) {
    if (f.resolvedBy !== undefined) {
      say(`fork at version ${f.version} resolved in favour of ${short(f.resolvedBy)}`)
    }
  }
  if (state.equivocations.length > 0) {
    say('leaked keys caught signing two changes with one sequence number (revoke them):')
    for (const e of state.equivocations) {
      say(
        `  ${e.name ?? '?'} ${fp(e.key)}  document ${e.docId}, sequence ${e.seq}, session ${e.actor.slice(64)}`
      )
    }
  }
  if (state.invalidated.length > 0) {
    say(
      `${state.invalidated.length} change(s) dropped as invalid recently: rhizome trust invalidated`
    )
  }
  const f = state.freshness
  if (f.beacon === undefined) {
    say('freeze beacons: none held (rhizome beacon issues one); staleness cannot be told')
  } else {
    const why =
      f.reason === undefined
        ? ''
        : f.reason === 'expired'
          ? ' (the newest beacon expired)'
          : ` (lacking what it names: ${f.lacking?.join(', ') || 'the trust version'})`
    say(
      `freeze beacon: ${f.state.toUpperCase()}${why}; issued ${new Date(f.beacon.issued).toISOString()}, expires ${new Date(f.beacon.expires).toISOString()}`
    )
  }
}

// ---- propose -----------------------------------------------------------------------------------

interface ProposeOptions {
  out: string
  daemon: string
  extend?: string
  addAdmin: string[]
  addOperator: string[]
  operator: string[]
  docs?: string
  selector?: string
  allNodes?: boolean
  remove: string[]
  revoke: string[]
  cut: string[]
  reason?: string
  addRoot: string[]
  removeRoot: string[]
  threshold?: string
  removeNode: string[]
}

/** `HEX:NAME` → entry parts. */
function keyAndName(v: string, flag: string): { key: string; name: string } {
  const i = v.indexOf(':')
  const key = (i < 0 ? v : v.slice(0, i)).trim().toLowerCase()
  const name = i < 0 ? '' : v.slice(i + 1).trim()
  try {
    parsePublicKey(key)
  } catch {
    throw new UsageError(
      `${flag} ${v}: expected <public key hex>:<name> (rhizome keygen prints the key)`
    )
  }
  if (name === '') throw new UsageError(`${flag} ${v}: give the key a name after a colon`)
  return { key, name }
}

/** A key in the statement by hex, fingerprint or name. */
function findKey(s: TrustStatement, who: string, flag: string): string {
  const all = [...s.admins, ...s.operators, ...s.nodes.map(n => ({ key: n.key, name: n.name }))]
  const hit = all.filter(e => e.key === who.toLowerCase() || e.name === who || fp(e.key) === who)
  if (hit.length !== 1) {
    throw new UsageError(
      hit.length === 0
        ? `${flag} ${who}: no admin, operator or node of trust statement version ${s.version} has that key, fingerprint or name (rhizome trust show lists them)`
        : `${flag} ${who}: more than one entry matches; name the key by its hex`
    )
  }
  return (hit[0] as { key: string }).key
}

function parseSelector(v: string): LabelSelector {
  const out: LabelSelector = {}
  for (const [k, val] of Object.entries(parseLabelArgs([v]))) {
    out[k] = val.includes('|') ? val.split('|') : val
  }
  return out
}

function mayWriteDoc(s: TrustStatement, key: string, docId: string): boolean {
  if (s.admins.some(a => a.key === key)) return true
  const op = s.operators.find(o => o.key === key)
  return (
    op !== undefined &&
    op.docs.some(p => (p.endsWith('*') ? docId.startsWith(p.slice(0, -1)) : p === docId))
  )
}

async function cmdPropose(opts: ProposeOptions): Promise<void> {
  const client = new DaemonClient(opts.daemon)
  const replica = await client.localReplica()
  const trust = replica.trust
  let base: TrustStatement = trust.latest
  if (opts.extend !== undefined) {
    const hit = trust.held.filter(h => statementHash(h.statement).startsWith(opts.extend as string))
    if (hit.length !== 1) {
      throw new UsageError(
        `--extend ${opts.extend}: no single statement held has a hash starting so (rhizome trust show)`
      )
    }
    base = (hit[0] as SignedTrustStatement).statement
  } else if (trust.forked !== undefined) {
    throw new TrustForkError(
      `the trust chain is forked at version ${trust.forked.version} (${trust.forked.hashes.map(short).join(', ')}); a new statement must resolve it: pass --extend HASH naming the branch to keep`
    )
  }
  let admins = [...base.admins]
  let operators: OperatorEntry[] = base.operators.map(o => ({ ...o }))
  let roots = [...base.roots]
  let nodes = [...base.nodes]
  for (const who of [...opts.remove, ...opts.revoke]) {
    const key = findKey(base, who, '--remove')
    admins = admins.filter(a => a.key !== key)
    operators = operators.filter(o => o.key !== key)
  }
  for (const who of opts.removeNode) {
    const key = findKey(base, who, '--remove-node')
    nodes = nodes.filter(n => n.key !== key)
  }
  for (const v of opts.addAdmin) {
    const e = keyAndName(v, '--add-admin')
    admins = [...admins.filter(a => a.key !== e.key), e]
    operators = operators.filter(o => o.key !== e.key)
  }
  const scope = (): { docs?: string[]; selector?: LabelSelector } => ({
    ...(opts.docs === undefined
      ? {}
      : {
          docs: opts.docs
            .split(',')
            .map(d => d.trim())
            .filter(Boolean)
        }),
    ...(opts.allNodes === true
      ? { selector: {} }
      : opts.selector === undefined
        ? {}
        : { selector: parseSelector(opts.selector) })
  })
  for (const v of opts.addOperator) {
    const e = keyAndName(v, '--add-operator')
    const sc = scope()
    if (sc.docs === undefined) {
      throw new UsageError('--add-operator needs --docs (the documents it may write)')
    }
    if (sc.selector === undefined) {
      throw new UsageError(
        '--add-operator needs --selector k=v,… (the nodes its documents reach) or --all-nodes'
      )
    }
    operators = [
      ...operators.filter(o => o.key !== e.key),
      { ...e, docs: sc.docs, selector: sc.selector }
    ]
    admins = admins.filter(a => a.key !== e.key)
  }
  for (const who of opts.operator) {
    const key = findKey(base, who, '--operator')
    const i = operators.findIndex(o => o.key === key)
    if (i < 0) throw new UsageError(`--operator ${who} is not an operator`)
    operators[i] = { ...(operators[i] as OperatorEntry), ...scope() }
  }
  for (const r of opts.addRoot) {
    parsePublicKey(r)
    if (!roots.includes(r.toLowerCase())) roots.push(r.toLowerCase())
  }
  for (const r of opts.removeRoot) roots = roots.filter(x => x !== r.toLowerCase() && fp(x) !== r)
  const threshold = opts.threshold === undefined ? base.threshold : Number(opts.threshold)
  if (!Number.isSafeInteger(threshold) || threshold < 1 || threshold > roots.length) {
    throw new UsageError(
      `--threshold must be a whole number from 1 to the number of roots (${roots.length})`
    )
  }
  // Cuts: every key that loses authority over a document keeps what the daemon holds of it
  // there, unless --cut says otherwise.
  const explicit = new Map<string, string[] | null>()
  for (const c of opts.cut) {
    const [doc, heads] = c.split('=', 2)
    if (doc === undefined || heads === undefined || heads === '') {
      throw new UsageError(
        `--cut ${c}: expected DOC=HASH[,HASH] (a revision of the document) or DOC=none`
      )
    }
    explicit.set(doc, heads === 'none' ? null : heads.split(','))
  }
  const next: TrustStatement = { ...base, admins, operators, roots, nodes, threshold }
  const revocations: Revocation[] = []
  const keys = new Set([...base.admins.map(a => a.key), ...base.operators.map(o => o.key)])
  const revoked = new Set(opts.revoke.map(w => findKey(base, w, '--revoke')))
  for (const key of keys) {
    const cuts: Record<string, CutTip[]> = {}
    for (const id of replica.documentIds()) {
      if (!mayWriteDoc(base, key, id) || mayWriteDoc(next, key, id)) continue
      const doc = await replica.open(id)
      const chosen = revoked.has(key) ? explicit.get(id) : undefined
      cuts[id] = chosen === null ? [] : doc.cutFor(key, chosen)
    }
    const lost = Object.keys(cuts).length > 0 || authorityShrank(base, next, key)
    if (!lost) continue
    revocations.push({
      key,
      ...(opts.reason === undefined ? {} : { reason: opts.reason }),
      cuts
    })
  }
  const statement = proposeStatement(base, {
    admins,
    operators,
    roots,
    nodes,
    threshold,
    revocations
  })
  const proposal: SignedTrustStatement = { statement, signatures: [] }
  await writeFile(opts.out, JSON.stringify(proposal, null, 2) + '\n', { flag: 'wx' }).catch(
    (err: Error) => {
      throw new UsageError(`cannot write ${opts.out}: ${err.message}; choose another --out`)
    }
  )
  say(
    `proposal for trust statement version ${statement.version} written to ${opts.out} (${short(statementHash(statement))})`
  )
  for (const r of revocations) {
    const n = Object.values(r.cuts).reduce((s, t) => s + t.length, 0)
    say(
      `  cuts ${fp(r.key)} in ${Object.keys(r.cuts).join(', ') || 'no document held'} (${n} session(s) kept up to their named change)`
    )
  }
  say(
    `it needs ${base.threshold} root signature(s): rhizome trust sign ${opts.out} --key root.key (on each root holder's machine), then rhizome trust publish ${opts.out}`
  )
}

function authorityShrank(before: TrustStatement, after: TrustStatement, key: string): boolean {
  const wasAdmin = before.admins.some(a => a.key === key)
  const isAdmin = after.admins.some(a => a.key === key)
  if (wasAdmin) return !isAdmin
  const a = before.operators.find(o => o.key === key)
  const b = after.operators.find(o => o.key === key)
  if (a === undefined) return false
  if (b === undefined) return !isAdmin
  return (
    JSON.stringify(a.docs) !== JSON.stringify(b.docs) ||
    JSON.stringify(a.selector) !== JSON.stringify(b.selector)
  )
}

// ---- sign, publish -----------------------------------------------------------------------------

async function readProposal(file: string): Promise<SignedTrustStatement> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new UsageError(`cannot read ${file}: ${(err as Error).message}`)
  }
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch {
    throw new UsageError(`${file} is not JSON; a proposal is written by rhizome trust propose`)
  }
  return trustStatementFromJson(v)
}

async function cmdSign(file: string, opts: { key?: string; passphraseFile?: string }) {
  const proposal = await readProposal(file)
  const root = await loadSigningKey(opts)
  const signed = await addSignatures(proposal, [root], nodeCryptoEd25519)
  await writeFile(file, JSON.stringify(signed, null, 2) + '\n')
  const s = proposal.statement
  say(
    `signed version ${s.version} (${short(statementHash(s))}) with ${fingerprint(root.publicKey)}; ${signed.signatures.length} signature(s) on it now`
  )
}

async function cmdPublish(file: string, opts: { daemon: string }): Promise<void> {
  const proposal = await readProposal(file)
  const client = new DaemonClient(opts.daemon)
  const held = await client.trust()
  const prev = held.find(h => statementHash(h.statement) === proposal.statement.previous)
  if (prev === undefined) {
    throw new UsageError(
      `${file} builds on a statement the daemon at ${client.base} does not hold (version ${proposal.statement.version - 1}); propose again against its chain`
    )
  }
  const good = await countRootSignatures(proposal, prev.statement.roots, nodeCryptoEd25519)
  if (good < prev.statement.threshold) {
    throw new UsageError(
      `${file} has ${good} valid root signature(s); version ${prev.statement.version} requires ${prev.statement.threshold}: run rhizome trust sign ${file} --key root.key on more root holders' machines`
    )
  }
  const r = await client.postTrust(encodeTrustStatement(proposal))
  say(
    r.added
      ? `published version ${proposal.statement.version}; version ${r.version} is in force`
      : `the daemon already holds it; version ${r.version} is in force`
  )
  const state = await client.json<TrustState>('/api/trust/state')
  if (state.forked !== null) {
    say(
      `WARNING: the trust chain is forked at version ${state.forked.version}; trust changes are halted (rhizome trust show)`
    )
  }
}

// ---- invalidated changes -----------------------------------------------------------------------

async function cmdInvalidated(opts: { daemon: string; json?: boolean }): Promise<void> {
  const state = await new DaemonClient(opts.daemon).json<TrustState>('/api/trust/state')
  if (opts.json === true) {
    say(JSON.stringify(state.invalidated, null, 2))
    return
  }
  if (state.invalidated.length === 0) {
    say('no change has been dropped as invalid since the daemon started')
    return
  }
  for (const c of state.invalidated) {
    say(
      `${c.docId}  ${short(c.hash)}  ${c.signerInfo?.name ?? fp(c.signer)}  ${c.reason.padEnd(12)} ${c.message ?? ''}`
    )
  }
  say(
    "honest changes dropped only because they built on an invalid one ('dependency') can be signed again: rhizome resign [HASH…] --key KEY"
  )
}

async function cmdResign(
  hashes: string[],
  opts: { daemon: string; key?: string; passphraseFile?: string }
) {
  const client = new DaemonClient(opts.daemon)
  const state = await client.json<TrustState>('/api/trust/state')
  const pick: InvalidatedRecord[] =
    hashes.length === 0
      ? state.invalidated.filter(c => c.reason === 'dependency')
      : hashes.map(h => {
          const hit = state.invalidated.filter(c => c.hash.startsWith(h))
          if (hit.length !== 1) {
            throw new UsageError(
              `${h}: no single dropped change starts so (rhizome trust invalidated)`
            )
          }
          return hit[0] as InvalidatedRecord
        })
  if (pick.length === 0) {
    say('nothing to sign again')
    return
  }
  const replica = await client.localReplica()
  const signer = Replica.signer(await loadSigningKey(opts))
  for (const c of pick) {
    if (c.diff === undefined || c.diff.length === 0) {
      say(`${short(c.hash)}: what it changed was not kept; apply it again by hand`)
      continue
    }
    const doc = await replica.open(c.docId)
    const batch = await signOps(
      doc,
      signer,
      c.diff,
      `resign ${c.hash.slice(0, 12)}${c.message === null ? '' : `: ${c.message}`}`
    )
    if (batch === undefined) say(`${short(c.hash)}: already in effect, nothing to sign`)
    await publishBatch(client, batch)
  }
}

// ---- freeze beacons ----------------------------------------------------------------------------

/** `90s`, `10m`, `2h`, `1d`, or milliseconds. */
function duration(v: string): number {
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(v.trim())
  if (m === null) throw new UsageError(`"${v}" is not a duration (like 90s, 10m, 2h, 1d)`)
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? 'ms'] as number
  return Number(m[1]) * unit
}

async function issueBeacon(client: DaemonClient, key: KeyPair, expiresMs: number): Promise<void> {
  const [state, docs] = await Promise.all([
    client.json<TrustState>('/api/trust/state'),
    client.json<Array<{ id: string; heads: string[] }>>('/api/docs')
  ])
  const issued = Date.now()
  const beacon = await signBeacon(
    {
      fleetId: state.fleetId,
      trustVersion: state.version,
      issued,
      expires: issued + expiresMs,
      docs: Object.fromEntries(docs.map(d => [d.id, d.heads]))
    },
    key,
    nodeCryptoEd25519
  )
  const r = await client.postBytesTo<{ added: boolean }>('/api/beacon', beacon.bytes)
  say(
    `beacon ${r.added ? 'issued' : 'not newer than the one held'}: trust version ${state.version}, ${docs.length} document(s), expires ${new Date(beacon.expires).toISOString()}`
  )
}

async function cmdBeacon(opts: {
  key?: string
  passphraseFile?: string
  daemon: string
  expires: string
  every?: string
}): Promise<void> {
  const client = new DaemonClient(opts.daemon)
  const key = await loadSigningKey(opts)
  const expiresMs = duration(opts.expires)
  if (opts.every === undefined) {
    await issueBeacon(client, key, expiresMs)
    return
  }
  const everyMs = duration(opts.every)
  if (everyMs >= expiresMs) {
    throw new UsageError(
      `--every ${opts.every} must be shorter than --expires ${opts.expires}, or beacons lapse between issues`
    )
  }
  say(`issuing a beacon every ${opts.every}, each valid ${opts.expires}; stop with Ctrl-C`)
  const stopped = { yes: false }
  const done = new Promise<void>(resolve => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) {
      process.once(sig, () => {
        stopped.yes = true
        resolve()
      })
    }
  })
  for (;;) {
    try {
      await issueBeacon(client, key, expiresMs)
    } catch (err) {
      // The daemon restarting is no reason to stop the timer: the next beacon goes out anyway.
      say(`beacon not issued: ${(err as Error).message}`)
    }
    await Promise.race([done, new Promise(resolve => setTimeout(resolve, everyMs))])
    if (stopped.yes) return
  }
}

// ---- devices -----------------------------------------------------------------------------------

interface EnrolOptions {
  name: string
  label: string[]
  replace?: boolean
  key?: string
  passphraseFile?: string
  daemon: string
}

async function cmdEnrol(key: string, opts: EnrolOptions): Promise<void> {
  let pub: Uint8Array
  try {
    pub = parsePublicKey(key)
  } catch {
    throw new UsageError(
      `"${key}" is not a device public key (64 hex characters, printed by \`rhizome node init\`)`
    )
  }
  const hex = toHex(pub)
  const labels = parseLabelArgs(opts.label)
  const client = new DaemonClient(opts.daemon)
  const replica = await client.localReplica([DEVICES_DOC])
  const pair = await loadSigningKey(opts)
  const doc = await replica.open<{ devices?: Record<string, Record<string, unknown>> }>(DEVICES_DOC)
  if (revokedDevices(replica.trust, doc.value).has(hex)) {
    throw new UsageError(
      `device ${fingerprint(pub)} was revoked; a revoked identity is never readmitted: give the device a new one (rhizome node init on a fresh data directory)`
    )
  }
  const enrolled = enrolledDevices(replica.trust, doc.value)
  const sameName = [...enrolled.values()].find(d => d.name === opts.name && d.key !== hex)
  if (opts.replace !== true) {
    if (enrolled.has(hex)) {
      throw new UsageError(
        `device ${fingerprint(pub)} is enrolled already as "${enrolled.get(hex)?.name}"; pass --replace to change its entry`
      )
    }
    if (sameName !== undefined) {
      throw new UsageError(
        `the name "${opts.name}" belongs to device ${fp(sameName.key)} already; choose another name, or pass --replace to move it`
      )
    }
  }
  const signer = toHex(pair.publicKey)
  // Peers ignore a write to an entry the key cannot reach (crdt/devices.ts `mayWrite`): refuse
  // here, before anything is signed.
  const reenrol = [
    `rhizome enrol ${hex} --name ${opts.name}`,
    ...opts.label.map(l => `--label ${l}`),
    '--replace'
  ].join(' ')
  if (!mayWrite(replica.trust, doc.value, signer, hex, labels)) {
    throw new DeviceOutOfReachError(
      reachRefusal(replica.trust, doc.value, signer, opts.name, hex, ['change', reenrol])
    )
  }
  const scope = replica.trust.scopeOf(signer)
  if (!scope.all && (scope.selector === undefined || !selectorMatches(scope.selector, labels))) {
    throw new DeviceOutOfReachError(
      `refusing to enrol ${opts.name} (${fingerprint(pub)}) with labels ${JSON.stringify(labels)}: your operator key reaches nodes ${scope.selector === undefined ? '(none)' : JSON.stringify(scope.selector)} only (peers ignore a new entry outside it; an enrolled device would leave your reach); give it labels inside that, or use an admin key: ${reenrol} --key <admin key>`
    )
  }
  // Moving the name revokes the device that had it: only if this key may (see revoke-device).
  if (sameName !== undefined && !mayRevoke(replica.trust, doc.value, signer, sameName.key)) {
    throw new DeviceOutOfReachError(
      reachRefusal(replica.trust, doc.value, signer, opts.name, sameName.key, [
        'revoke',
        `rhizome revoke-device ${opts.name}`
      ])
    )
  }
  const before = enrolled.get(hex)?.labels ?? {}
  const dropped = Object.keys(before).filter(k => !(k in labels))
  const batch = await doc.change(
    Replica.signer(pair),
    d => {
      d.devices ??= {}
      const previous = sameName === undefined ? undefined : d.devices[sameName.key]
      if (previous !== undefined) {
        // A fresh mark even on an entry already marked by one that did not count (revoke-device).
        if (previous.revoked === true) previous.revoked = false
        previous.revoked = true
      }
      d.devices[hex] = {
        name: opts.name,
        labels,
        enrolledBy: toHex(pair.publicKey),
        enrolledAt: new Date().toISOString(),
        revoked: false
      }
    },
    `enrol ${opts.name}`
  )
  say(`enrolled ${opts.name} (${fingerprint(pub)}) labels ${JSON.stringify(labels)}`)
  if (dropped.length > 0) say(`  labels dropped from its previous entry: ${dropped.join(', ')}`)
  if (sameName !== undefined) {
    say(`  the name moved from device ${fp(sameName.key)}, whose entry is revoked`)
  }
  await publishBatch(client, batch)
}

async function deviceByName(client: DaemonClient, name: string) {
  const replica = await client.localReplica([DEVICES_DOC])
  const doc = await replica.open<{ devices?: Record<string, Record<string, unknown>> }>(DEVICES_DOC)
  const named = (k: string, n: unknown): boolean =>
    n === name || k === name.toLowerCase() || fp(k) === name
  // The names writes that count gave (crdt/devices.ts `enrolledDevices`); a revoked device's
  // entry, which enrols nothing, by what the document says.
  const enrolled = [...enrolledDevices(replica.trust, doc.value)].filter(
    ([k, e]) => e.source === 'devices' && named(k, e.name)
  )
  const entries =
    enrolled.length > 0
      ? enrolled
      : Object.entries(doc.value.devices ?? {}).filter(([k, v]) => named(k, v.name))
  if (entries.length === 0) {
    const inTrust = replica.trust.latest.nodes.find(n => n.name === name)
    throw new UsageError(
      inTrust === undefined
        ? `no device "${name}" is enrolled (rhizome status lists them)`
        : `"${name}" is enrolled by the trust statement itself; remove it there: rhizome trust propose --remove-node ${name}`
    )
  }
  if (entries.length > 1) {
    throw new UsageError(`more than one device is called "${name}"; name it by its public key`)
  }
  return { replica, doc, key: (entries[0] as [string, unknown])[0] }
}

/**
 * Why `signer` may not `act` (revoke, change, unenrol) device `key`, and who may, with the command
 * that key would run.
 */
function reachRefusal(
  trust: Replica['trust'],
  devices: Parameters<typeof mayRevoke>[1],
  signer: string,
  name: string,
  key: string,
  [act, command]: readonly [string, string]
): string {
  const scope = trust.scopeOf(signer)
  const reach = scope.all ? {} : scope.selector
  const labels = enrolledDevices(trust, devices).get(key)?.labels
  const why =
    reach === undefined
      ? 'your key reaches no node (its operator entry has no selector)'
      : outOfReach(trust, devices).get(signer)?.has(key) === true
        ? `your operator key moved ${name} into its own scope ${JSON.stringify(reach)} and so never reaches it`
        : labels === undefined
          ? `${name}'s entry was deleted while outside your operator key's reach ${JSON.stringify(reach)}`
          : `${name} has labels ${JSON.stringify(labels)}, outside your operator key's reach ${JSON.stringify(reach)}`
  const what = act === 'revoke' ? 'the mark' : 'the change'
  return `refusing to ${act} ${name} (${fp(key)}): ${why}; peers would not count ${what}. An admin key, or an operator key whose selector matches the device, may ${act} it: ${command} --key <that key>`
}

type DeviceEntries = { devices?: Record<string, Record<string, unknown>> }

/**
 * Sign and publish a change to device `name`'s entry (`edit`, given the entry's key and the
 * signer's), saying `done` once made. Peers do not count a change the key cannot make (`may`:
 * crdt/devices.ts `mayRevoke` for a mark, `mayWrite` for any other write): refused here, before
 * anything is signed, rather than published dead.
 */
async function changeDevice(
  name: string,
  opts: { key?: string; passphraseFile?: string; daemon: string },
  [act, command, may]: ['revoke' | 'unenrol', string, typeof mayRevoke],
  edit: (d: DeviceEntries, key: string, signer: string) => void,
  done: (key: string) => string
) {
  const client = new DaemonClient(opts.daemon)
  const { replica, doc, key } = await deviceByName(client, name)
  const pair = await loadSigningKey(opts)
  const signer = toHex(pair.publicKey)
  if (!may(replica.trust, doc.value, signer, key)) {
    throw new DeviceOutOfReachError(
      reachRefusal(replica.trust, doc.value, signer, name, key, [act, `${command} ${name}`])
    )
  }
  const batch = await doc.change(Replica.signer(pair), d => edit(d, key, signer), `${act} ${name}`)
  say(done(key))
  await publishBatch(client, batch)
}

function cmdRevokeDevice(
  name: string,
  opts: { key?: string; passphraseFile?: string; daemon: string; reason?: string }
) {
  return changeDevice(
    name,
    opts,
    ['revoke', 'rhizome revoke-device', mayRevoke],
    (d, key, signer) => {
      const e = d.devices?.[key]
      if (e === undefined) return
      // An entry may say revoked already by a mark that does not count (an operator's, outside
      // its scope); Automerge writes nothing for an unchanged value, so write a mark of our own.
      if (e.revoked === true) e.revoked = false
      e.revoked = true
      e.revokedAt = new Date().toISOString()
      e.revokedBy = signer
      if (opts.reason !== undefined) e.revokedReason = opts.reason
    },
    key =>
      `revoked ${name} (${fp(key)}): every daemon that learns it closes its sessions, refuses it as a peer and ignores its status`
  )
}

function cmdUnenrol(name: string, opts: { key?: string; passphraseFile?: string; daemon: string }) {
  return changeDevice(
    name,
    opts,
    ['unenrol', 'rhizome unenrol', mayWrite],
    (d, key) => {
      if (d.devices !== undefined) delete d.devices[key]
    },
    key => `unenrolled ${name} (${fp(key)})`
  )
}

// ---- wiring ------------------------------------------------------------------------------------

/** Register the trust-lifecycle commands on the `rhizome` program. */
export function registerTrustCommands(program: Command, exitHelp: string): void {
  program
    .command('keygen')
    .description(
      'create a key file (an admin, operator or root key) encrypted with its own passphrase'
    )
    .requiredOption('--out <file>', 'key file to write (created, never overwritten)')
    .requiredOption('--label <text>', 'what the key is for, shown when it is opened')
    .addOption(passphraseOption())
    .addHelpText('after', exitHelp)
    .action(cmdKeygen)

  program
    .command('enrol')
    .description(
      'enrol a device: sign its entry into the "devices" document and publish it through a daemon'
    )
    .argument('<public-key>', "the device's public key (hex), printed by `rhizome node init`")
    .requiredOption('--name <name>', 'device name (node overrides in the config use it)')
    .option('--label <k=v>', 'a label (repeatable)', collect, [])
    .option('--replace', 'change the entry of a device or name already enrolled')
    .addOption(keyOption())
    .addOption(passphraseOption())
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdEnrol)

  program
    .command('revoke-device')
    .description(
      'revoke a device (stolen, lost): its sessions are closed everywhere, it is refused as a peer and its status ignored'
    )
    .argument('<name>', 'device name, public key or fingerprint')
    .option('--reason <text>', 'why, kept in its entry')
    .addOption(keyOption())
    .addOption(passphraseOption())
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdRevokeDevice)

  program
    .command('unenrol')
    .description("remove a device's entry (decommissioned); a stolen device is revoked instead")
    .argument('<name>', 'device name, public key or fingerprint')
    .addOption(keyOption())
    .addOption(passphraseOption())
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdUnenrol)

  program
    .command('beacon')
    .description(
      'sign a freeze beacon with an admin key: the current trust version and heads, valid until --expires (with --every, again and again)'
    )
    .option('--expires <duration>', 'how long the beacon is valid (90s, 10m, 2h, 1d)', '1h')
    .option('--every <duration>', 'issue one again this often, until stopped (an admin-side timer)')
    .addOption(keyOption())
    .addOption(passphraseOption())
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdBeacon)

  program
    .command('resign')
    .description(
      'sign again, on the valid state, honest changes a daemon dropped because they built on an invalid one'
    )
    .argument(
      '[hash...]',
      'dropped changes (rhizome trust invalidated); default every one dropped for that reason'
    )
    .addOption(keyOption())
    .addOption(passphraseOption())
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdResign)

  const trust = program
    .command('trust')
    .description('the trust chain: who may change what (docs/trust.md)')
  trust
    .command('show')
    .description('the statement in force, every statement held, forks, leaked keys')
    .option('--json', 'print the daemon’s trust state as JSON')
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdShow)
  trust
    .command('propose')
    .description(
      'write the next trust statement, unsigned, to a file (then sign it with root keys and publish it)'
    )
    .requiredOption('--out <file>', 'proposal file to write')
    .option('--add-admin <key:name>', 'add an admin key (repeatable)', collect, [])
    .option(
      '--add-operator <key:name>',
      'add an operator key with --docs and --selector (repeatable)',
      collect,
      []
    )
    .option(
      '--operator <name>',
      'change an operator’s --docs or --selector (narrowing cuts it)',
      collect,
      []
    )
    .option('--docs <a,b*>', 'documents an operator may write (a trailing * is a prefix)')
    .option('--selector <k=v,…>', 'nodes an operator’s documents reach (v1|v2: any of)')
    .option('--all-nodes', 'an operator’s documents reach every node')
    .option(
      '--remove <key|name>',
      'remove an admin or operator; it keeps what it wrote (repeatable)',
      collect,
      []
    )
    .option(
      '--revoke <key|name>',
      'remove a compromised key, cut where --cut says (repeatable)',
      collect,
      []
    )
    .option(
      '--cut <doc=hash,…|doc=none>',
      "a revoked key's cut in a document: the revision up to which its changes stay valid",
      collect,
      []
    )
    .option('--reason <text>', 'why, kept in the revocation')
    .option('--add-root <key>', 'add a root key (repeatable)', collect, [])
    .option('--remove-root <key>', 'remove a root key (repeatable)', collect, [])
    .option('--threshold <n>', 'root signatures the version after this one needs')
    .option(
      '--remove-node <name>',
      'remove a node named in the statement (repeatable)',
      collect,
      []
    )
    .option('--extend <hash>', 'build on this statement (to resolve a fork: the branch to keep)')
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdPropose)
  trust
    .command('sign')
    .description("add a root key's signature to a proposal (works offline)")
    .argument('<file>')
    .addOption(new Option('--key <file>', 'root key file (else $RHIZOME_KEY)'))
    .addOption(passphraseOption())
    .addHelpText('after', exitHelp)
    .action(cmdSign)
  trust
    .command('publish')
    .description(
      'check that a proposal has its threshold of root signatures and give it to a daemon'
    )
    .argument('<file>')
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdPublish)
  trust
    .command('invalidated')
    .description('changes a daemon dropped because a cut or evidence made them invalid')
    .option('--json', 'print them as JSON, with what each changed')
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdInvalidated)
}
