/**
 * What the dashboard's views read and do, behind one interface. Two implementations:
 * `worker-source.ts` (the real one: a libp2p peer and a replica running in a Web Worker) and
 * `fake-fleet.ts` (fabricated fleets for screenshots and the load-time benchmark).
 *
 * Everything here is plain, structured-cloneable data: it crosses the worker boundary as is.
 */
import type { LabelSelector } from '../../crdt/trust.ts'
import type { StatusBody } from '../../crdt/fleet-status.ts'
import type { Admission } from '../../mesh/types.ts'

export type ConnectionState = 'disconnected' | 'connecting' | 'connected' | 'error'

export interface ConnectionInfo {
  state: ConnectionState
  /** The daemon's WebSocket multiaddr this page dialled. */
  address?: string
  admission?: Admission
  /** Set when state is 'error': what happened and what to do. */
  error?: string
  fleet?: string
  fleetId?: string
  /** This browser's own PeerId (a fresh key per page load). */
  selfPeerId?: string
  /** Daemons this browser holds a connection to. */
  connectedTo: string[]
  /** Connected, and replacing the viewer session with one signed by the unlocked key. */
  upgrading?: boolean
}

/**
 * A node's status body (crdt/fleet-status.ts, every field checked: daemons send JSON and nothing
 * is trusted to be well-shaped) and what this page knows of its record.
 */
export interface NodeStatus extends StatusBody {
  node: string
  peerId: string
  receivedAt: number
  stale: boolean
  /** Documents whose applied heads this page does not hold yet (the node is ahead of the page). */
  newer?: string[]
  /** Enrolled, but no status record of it has reached this page: its body is empty. */
  neverSeen?: boolean
  /**
   * Enrolled and not revoked (crdt/devices.ts `enrolledDevices`, read from the whole history of
   * the devices document): its name and labels are its enrolment's. A node only heard from is not.
   */
  enrolled?: true
}

export interface DocView {
  id: string
  /** Plain JSON copy of the document's value. */
  value: Record<string, unknown>
  heads: string[]
  /** Node selectors of the operators that wrote it (crdt/effective-config.ts `writerScopes`). */
  writerScopes?: ReadonlyArray<LabelSelector | null>
  /** Devices it may not reach (crdt/effective-config.ts `unreachable`). */
  unreachable?: readonly string[]
}

export interface SignerInfo {
  label: string
  publicKey: string
  fingerprint: string
  /** What the fleet's trust statement says this key is, if anything. */
  role?: string
  name?: string
  /** Document patterns an operator key may write ('*' for admins). */
  scope: string[]
}

export interface FleetSnapshot {
  connection: ConnectionInfo
  nodes: NodeStatus[]
  docs: DocView[]
  signer?: SignerInfo
  /** Trust-chain names of keys (public key hex → name and role), for history. */
  keys: Record<string, { name: string; role: string }>
}

export interface HistoryItem {
  hash: string
  docId: string
  signer: string
  signerName?: string
  signerRole?: string
  /** Author's clock, ms since the epoch: informational. */
  time: number
  message: string | null
  /** `+ path = value` / `- path = old` lines. */
  diff: string[]
}

export interface HistoryView {
  items: HistoryItem[]
  /** Cursor of the older page; null at the oldest change. */
  next: string | null
}

export interface ConnectRequest {
  /** A daemon's WebSocket multiaddr with /p2p/<PeerId>, e.g. /ip4/127.0.0.1/tcp/4002/ws/p2p/12D3Koo… */
  address: string
  /** One-time viewer token printed by that daemon; omitted when an unlocked key signs a session. */
  token?: string
  /** A status record with no newer one for this long turns stale, ms. */
  staleAfterMs?: number
}

export interface FleetSource {
  /** Current state; `subscribe` calls back on every change. */
  snapshot(): FleetSnapshot
  subscribe(fn: (s: FleetSnapshot) => void): () => void
  connect(req: ConnectRequest): Promise<void>
  disconnect(): Promise<void>
  /** Decrypt a key file with its passphrase; the key stays in this tab. */
  unlockKey(keyFileText: string, passphrase: string): Promise<SignerInfo>
  forgetKey(): Promise<void>
  /** Sign (with the unlocked key) the change that makes `docId` equal `value`, and publish it. */
  publish(
    docId: string,
    value: Record<string, unknown>,
    message: string
  ): Promise<{ heads: string[] }>
  /** A page of a document's history, newest first; `before` is the `next` of the page before. */
  history(docId: string, before?: string): Promise<HistoryView>
  /** Check a document's content the way daemons will (unknown keys, bad paths); throws with what to fix. */
  validate(docId: string, value: Record<string, unknown>): Promise<void>
}
