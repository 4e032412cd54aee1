/**
 * The dashboard's libp2p peer and replica, in a Web Worker so Automerge, signature checks and
 * scrypt never block the page. It dials one daemon over WebSockets (mesh/browser.ts), presents
 * a one-time viewer token or a session voucher signed in this tab by an admin or operator key,
 * then syncs the fleet's signed documents and status records like any peer. Changes made here
 * are signed here (the key never leaves this tab) and reach every daemon through the mesh.
 */
/// <reference lib="webworker" />
import { logger } from '@libp2p/logger'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { createBrowserMesh, signSessionVoucher } from '../../mesh/browser.ts'
import type { Mesh, StatusRecord } from '../../mesh/types.ts'
import { Replica } from '../../crdt/replica.ts'
import { MemoryStore } from '../../crdt/store.ts'
import { platformEd25519, type Ed25519 } from '../../crdt/ed25519.ts'
import { statementHash, trustStatementFromJson } from '../../crdt/trust.ts'
import {
  decryptKeyFile,
  fingerprint,
  generateKeyPair,
  parseKeyFile,
  type KeyPair
} from '../../crdt/keys.ts'
import { ErrorCategory, RhizomeError } from '../../crdt/errors.ts'
import { checkDocument } from '../../crdt/fleet-yaml.ts'
import { diffDocument, formatOps, plainValue, signOps } from '../../crdt/config-diff.ts'
import { historyPage } from '../../crdt/change-history.ts'
import type {
  ConnectionInfo,
  DocView,
  FleetSnapshot,
  HistoryView,
  NodeStatus,
  SignerInfo
} from './fleet-source.ts'
import { fleetList } from './node-status.ts'
import { DEVICES_DOC, documentReach, enrolledDevicesOf } from '../../crdt/devices.ts'
import { fromHex, toHex } from '../../crdt/bytes.ts'
import type { WorkerMessage, WorkerRequest, WorkerResult } from './worker-protocol.ts'

const log = logger('rhizome:web:worker')

/** The PeerId of an enrolled device's key, for nodes whose record has not reached the page. */
function peerIdOfKey(key: string): string {
  try {
    return peerIdFromPublicKey(publicKeyFromRaw(fromHex(key))).toString()
  } catch {
    return ''
  }
}
const scope = self as unknown as DedicatedWorkerGlobalScope
const ADMISSION_TIMEOUT_MS = 20_000
const SNAPSHOT_MIN_INTERVAL_MS = 200
const TICK_MS = 2000
/** Diff lines sent to the page per change. */
const MAX_DIFF_LINES = 200
const SESSION_VOUCHER_MS = 12 * 60 * 60_000

/** The person using the page asked for something that cannot be done yet (connect first, unlock a key). */
class DashboardError extends RhizomeError {
  static override name = 'DashboardError'
  override name = 'DashboardError'
  readonly category = ErrorCategory.Usage
}

let ed: Ed25519 | undefined
let replica: Replica | undefined
let mesh: Mesh | undefined
let identity: KeyPair | undefined
let signer: { pair: KeyPair; info: SignerInfo } | undefined
let connection: ConnectionInfo = { state: 'disconnected', connectedTo: [] }
let staleAfterMs = 30_000
const connected = new Set<string>()
const docCache = new Map<string, DocView>()

function post(m: WorkerMessage): void {
  scope.postMessage(m)
}

// ---- snapshots, throttled: a burst of status records produces one snapshot, not hundreds ----
let snapshotTimer: ReturnType<typeof setTimeout> | undefined
let lastSnapshot = 0
function scheduleSnapshot(): void {
  if (snapshotTimer !== undefined) return
  const wait = Math.max(0, lastSnapshot + SNAPSHOT_MIN_INTERVAL_MS - Date.now())
  snapshotTimer = setTimeout(() => {
    snapshotTimer = undefined
    lastSnapshot = Date.now()
    void sendSnapshot()
  }, wait)
}
setInterval(scheduleSnapshot, TICK_MS)

async function docViews(): Promise<DocView[]> {
  if (replica === undefined) return []
  const out: DocView[] = []
  const devices = replica.documentIds().includes(DEVICES_DOC)
    ? (await replica.open(DEVICES_DOC)).value
    : undefined
  for (const id of replica.documentIds()) {
    const doc = await replica.open(id)
    const heads = doc.heads
    let v = docCache.get(id)
    // converting an Automerge document to plain JSON costs; do it once per revision
    if (v === undefined || v.heads.join() !== heads.join()) {
      v = { id, heads, value: (plainValue(doc.value) ?? {}) as Record<string, unknown> }
      docCache.set(id, v)
    }
    // Its reach also follows the trust statement and the devices document (memoised there).
    out.push({ ...v, ...documentReach(doc.writerKeys(), replica.trust, devices) })
  }
  return out
}

function trustKeys(): FleetSnapshot['keys'] {
  const keys: FleetSnapshot['keys'] = {}
  if (replica === undefined) return keys
  const s = replica.trust.latest
  for (const r of s.roots) keys[r] = { name: 'root', role: 'root' }
  for (const a of s.admins) keys[a.key] = { name: a.name, role: 'admin' }
  for (const o of s.operators) keys[o.key] = { name: o.name, role: 'operator' }
  return keys
}

async function sendSnapshot(): Promise<void> {
  const now = Date.now()
  const statuses: StatusRecord[] = mesh?.statuses() ?? []
  const snapshot: FleetSnapshot = {
    connection: { ...connection, connectedTo: [...connected] },
    nodes: await Promise.all(
      fleetList(
        statuses,
        replica === undefined ? new Map() : await enrolledDevicesOf(replica),
        now,
        staleAfterMs,
        peerIdOfKey
      ).map(withNewer)
    ),
    docs: await docViews(),
    signer: signer?.info,
    keys: trustKeys()
  }
  post({ type: 'snapshot', snapshot })
}

/** Mark documents where the node applied changes this page does not hold yet: it is ahead, not behind. */
async function withNewer(n: NodeStatus): Promise<NodeStatus> {
  if (replica === undefined) return n
  const newer: string[] = []
  for (const [id, heads] of Object.entries(n.applied)) {
    if (heads.length === 0 || !replica.documentIds().includes(id)) continue
    if (!(await replica.open(id)).has(heads)) newer.push(id)
  }
  return newer.length === 0 ? n : { ...n, newer }
}

function setConnection(c: Partial<ConnectionInfo>): void {
  connection = { ...connection, ...c }
  scheduleSnapshot()
}

// ---- connecting ----

async function startMesh(
  address: string,
  session: { viewerToken: string } | { voucher: Uint8Array }
): Promise<string> {
  if (replica === undefined || identity === undefined) {
    throw new DashboardError('no fleet loaded; connect first')
  }
  const m = await createBrowserMesh({
    replica,
    identity,
    bootstrap: [address],
    credential: session,
    staleAfterMs,
    antiEntropyMs: 5000
  })
  mesh = m
  const admitted = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () =>
        reject(
          new DashboardError(
            `the daemon at ${address} did not admit this browser within ${ADMISSION_TIMEOUT_MS / 1000} s; check that the address is the daemon's WebSocket address (…/ws/p2p/12D3Koo…) and that it is running`
          )
        ),
      ADMISSION_TIMEOUT_MS
    )
    m.addEventListener('session', e => {
      const d = (e as CustomEvent<{ ok: boolean; admission?: string; reason?: string }>).detail
      clearTimeout(timer)
      if (d.ok) resolve(d.admission ?? 'viewer')
      else {
        reject(
          new DashboardError(`the daemon refused this browser: ${d.reason ?? 'no reason given'}`)
        )
      }
    })
  })
  m.addEventListener('status', scheduleSnapshot)
  m.addEventListener('peer:connect', e => {
    connected.add((e as CustomEvent<{ peerId: string }>).detail.peerId)
    scheduleSnapshot()
  })
  m.addEventListener('peer:disconnect', e => {
    connected.delete((e as CustomEvent<{ peerId: string }>).detail.peerId)
    scheduleSnapshot()
  })
  m.addEventListener('rejected', e => {
    log.error('peer rejected: %o', (e as CustomEvent).detail)
  })
  await m.start()
  try {
    return await admitted
  } catch (err) {
    await m.stop().catch(() => {})
    if (mesh === m) mesh = undefined
    throw err
  }
}

async function stopMesh(): Promise<void> {
  const m = mesh
  mesh = undefined
  connected.clear()
  if (m !== undefined) await m.stop().catch(err => log.error('stopping the mesh failed: %e', err))
}

async function connect(req: Extract<WorkerRequest, { type: 'connect' }>): Promise<void> {
  await stopMesh()
  staleAfterMs = req.staleAfterMs ?? 30_000
  if (!/\/(ws|wss|tls\/ws)\/p2p\/\w+/.test(req.address)) {
    throw new DashboardError(
      `"${req.address}" is not a daemon WebSocket address; it looks like /ip4/192.168.1.20/tcp/4002/ws/p2p/12D3KooW… (the daemon prints it at start as mesh.listening)`
    )
  }
  // Once a fleet is loaded, a reconnect (after a failed session upgrade, say) needs no trust again.
  const trust = req.trust !== undefined && req.trust.length > 0 ? req.trust : undefined
  if (trust === undefined && replica === undefined) {
    throw new DashboardError(
      "this page does not know the fleet yet: choose the fleet's trust.json (written by `rhizome init`) in the connect form, or open the dashboard from the daemon's own address"
    )
  }
  setConnection({ state: 'connecting', address: req.address, error: undefined })
  try {
    ed ??= await platformEd25519()
    const [genesis, ...rest] = (trust ?? []).map(trustStatementFromJson)
    if (
      genesis !== undefined &&
      (replica === undefined || replica.fleetId !== statementHash(genesis.statement))
    ) {
      replica = await Replica.open({ store: new MemoryStore(), ed, genesis })
      replica.addEventListener('change', scheduleSnapshot)
      replica.addEventListener('trust', scheduleSnapshot)
      docCache.clear()
    }
    if (replica === undefined) throw new DashboardError('the trust file is empty')
    for (const s of rest) await replica.addTrustStatement(s)
    identity ??= generateKeyPair()
    let session: { viewerToken: string } | { voucher: Uint8Array }
    if (req.token !== undefined && req.token !== '') session = { viewerToken: req.token }
    else if (signer !== undefined) session = { voucher: await voucherFor(signer.pair) }
    else {
      throw new DashboardError(
        'give the viewer token the daemon printed (its dashboard URL ends in #token=…), or unlock an admin or operator key first to open a session with it'
      )
    }
    const admission = await startMesh(req.address, session)
    setConnection({
      state: 'connected',
      admission: admission as ConnectionInfo['admission'],
      fleet: replica.trust.latest.fleet,
      fleetId: replica.fleetId,
      selfPeerId: mesh?.peerId
    })
    // A viewer token admits read-only. With an admin or operator key unlocked, upgrade at once.
    if (admission === 'viewer' && signer !== undefined && mayWrite(signer.info)) {
      await upgradeSession()
    }
  } catch (err) {
    setConnection({ state: 'error', error: (err as Error).message })
    throw err
  }
}

function mayWrite(info: SignerInfo): boolean {
  return info.role === 'admin' || info.role === 'operator'
}

async function voucherFor(pair: KeyPair): Promise<Uint8Array> {
  if (replica === undefined || identity === undefined || ed === undefined) {
    throw new DashboardError('connect to a daemon first')
  }
  return await signSessionVoucher(
    {
      peerPublicKey: identity.publicKey,
      role: 'admin-session',
      expires: Date.now() + SESSION_VOUCHER_MS,
      signer: pair,
      fleetId: replica.fleetId
    },
    ed
  )
}

/**
 * Replace the viewer session with one vouched for by the unlocked key: daemons accept changes
 * only from such sessions. The page stays connected while it happens (`upgrading`), so the views
 * (an edit in progress among them) stay as they are.
 */
async function upgradeSession(): Promise<void> {
  if (signer === undefined || connection.address === undefined) return
  const voucher = await voucherFor(signer.pair)
  setConnection({ upgrading: true })
  await stopMesh()
  try {
    const admission = await startMesh(connection.address, { voucher })
    setConnection({
      state: 'connected',
      upgrading: false,
      admission: admission as ConnectionInfo['admission'],
      selfPeerId: mesh?.peerId
    })
  } catch (err) {
    setConnection({ state: 'error', upgrading: false, error: (err as Error).message })
    throw err
  }
}

// ---- keys and changes ----

async function unlock(text: string, passphrase: string): Promise<SignerInfo> {
  const file = parseKeyFile(text)
  const pair = await decryptKeyFile(file, passphrase)
  const hex = toHex(pair.publicKey)
  const known = replica?.trust.lookup(hex)
  const op = replica?.trust.latest.operators.find(o => o.key === hex)
  const info: SignerInfo = {
    label: file.label,
    publicKey: hex,
    fingerprint: fingerprint(pair.publicKey),
    role: known?.role,
    name: known?.name,
    scope: known?.role === 'admin' ? ['*'] : (op?.docs ?? [])
  }
  if (replica !== undefined && !mayWrite(info)) {
    throw new DashboardError(
      `key "${file.label}" (${info.fingerprint}) is ${known === undefined ? "not in this fleet's trust statement" : `a ${known.role} key`}; only admin and operator keys can sign changes. Use another key file or ask an admin to add this key`
    )
  }
  signer = { pair, info }
  scheduleSnapshot()
  if (connection.state === 'connected' && connection.admission === 'viewer') await upgradeSession()
  return info
}

async function publish(
  docId: string,
  value: Record<string, unknown>,
  message: string
): Promise<{ heads: string[] }> {
  if (replica === undefined || connection.state !== 'connected') {
    throw new DashboardError('not connected to a daemon; connect first, then publish')
  }
  if (signer === undefined) {
    throw new DashboardError(
      'unlock a key file first: changes are signed in this page before they are published'
    )
  }
  if (connection.admission !== 'admin-session') await upgradeSession()
  checkDocument(docId, value)
  replica.trust.authorize(signer.info.publicKey, docId)
  const doc = await replica.open(docId)
  const ops = diffDocument(doc, value)
  if (ops.length === 0) {
    throw new DashboardError(`nothing to publish: "${docId}" already has this content`)
  }
  await signOps(doc, Replica.signer(signer.pair), ops, message)
  scheduleSnapshot()
  return { heads: doc.heads }
}

async function history(docId: string, before?: string): Promise<HistoryView> {
  if (replica === undefined || !replica.documentIds().includes(docId)) {
    return { items: [], next: null }
  }
  const trust = replica.trust
  const page = await historyPage([await replica.open(docId)], {
    before,
    lookup: key => trust.lookup(key)
  })
  return {
    items: page.items.map(h => ({
      hash: h.hash,
      docId,
      signer: h.signer,
      signerName: h.signerName ?? undefined,
      signerRole: h.role ?? undefined,
      time: h.time * 1000,
      message: h.message,
      diff: formatOps(h.diff).slice(0, MAX_DIFF_LINES)
    })),
    next: page.next
  }
}

async function handle(req: WorkerRequest): Promise<WorkerResult> {
  switch (req.type) {
    case 'connect':
      await connect(req)
      return undefined
    case 'disconnect':
      await stopMesh()
      setConnection({ state: 'disconnected' })
      return undefined
    case 'unlock':
      return await unlock(req.keyFile, req.passphrase)
    case 'forget':
      signer = undefined
      scheduleSnapshot()
      return undefined
    case 'publish':
      return await publish(req.docId, req.value, req.message)
    case 'history':
      return await history(req.docId, req.before)
    case 'validate':
      checkDocument(req.docId, req.value)
      return undefined
  }
}

scope.addEventListener('message', (e: MessageEvent<WorkerRequest & { id: number }>) => {
  const { id } = e.data
  handle(e.data).then(
    result => post({ type: 'reply', id, ok: true, result }),
    (err: Error) => post({ type: 'reply', id, ok: false, error: err.message, name: err.name })
  )
})
