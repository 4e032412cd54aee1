/**
 * Messages between the page (worker-source.ts) and the mesh worker (mesh-worker.ts). Requests
 * carry an id; the worker answers each with `reply` (ok + result, or a person-readable error)
 * and pushes `snapshot` whenever the fleet it sees changes.
 */
import type { FleetSnapshot, HistoryView, SignerInfo } from './fleet-source.ts'

export type WorkerRequest =
  | { type: 'connect'; address: string; token?: string; staleAfterMs?: number; trust?: unknown[] }
  | { type: 'disconnect' }
  | { type: 'unlock'; keyFile: string; passphrase: string }
  | { type: 'forget' }
  | { type: 'publish'; docId: string; value: Record<string, unknown>; message: string }
  | { type: 'history'; docId: string; before?: string }
  | { type: 'validate'; docId: string; value: Record<string, unknown> }

export type WorkerResult = undefined | SignerInfo | { heads: string[] } | HistoryView

export type WorkerMessage =
  | { type: 'snapshot'; snapshot: FleetSnapshot }
  | { type: 'reply'; id: number; ok: true; result: WorkerResult }
  | { type: 'reply'; id: number; ok: false; error: string; name: string }
