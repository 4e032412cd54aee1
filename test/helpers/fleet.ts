/**
 * A small fleet for tests: deterministic root, admin, operator and node keys, a genesis that
 * names them, and N replicas on MemoryStore. Keys derive from a label, so a failing
 * property-based run can be replayed with the same keys.
 *
 * @example
 * ```ts
 * const fleet = await makeFleet({ replicas: 3, admins: 2 })
 * const doc = await fleet.replicas[0]!.open('fleet')
 * const batch = await doc.change(fleet.signer(0, fleet.admins[0]!), d => { d.x = 1 })
 * ```
 */
import { sha256 } from '@noble/hashes/sha2.js'
import * as Automerge from '@automerge/automerge'
import { utf8 } from '../../crdt/bytes.ts'
import { nodeCryptoEd25519 } from '../../crdt/ed25519-node.ts'
import type { Ed25519 } from '../../crdt/ed25519.ts'
import { keyPairFromSeed, publicKeyHex, type KeyPair } from '../../crdt/keys.ts'
import { createGenesis, type SignedTrustStatement } from '../../crdt/trust.ts'
import { Replica } from '../../crdt/replica.ts'
import { MemoryStore, type Store } from '../../crdt/store.ts'
import { newActorId, signChange, readChanges, type SignedBatch } from '../../crdt/signed-change.ts'
import type { SignedDocument, Signer } from '../../crdt/document.ts'

/** A key pair derived from a label: the same label always gives the same key. */
export function testKey(label: string): KeyPair {
  return keyPairFromSeed(sha256(utf8(`rhizome-test-key/${label}`)))
}

export interface FleetOptions {
  /** Replicas on MemoryStore to open (default 2). */
  replicas?: number
  /** Admin keys (default 2). */
  admins?: number
  /** Documents the operator key may write (default ['site/x']). */
  operatorDocs?: string[]
  /** Enrolled node keys named in the genesis (default 1), labelled role=pos, site=x. */
  nodes?: number
  ed?: Ed25519
  /** Changes the derived keys (and so the fleet id). */
  label?: string
}

export interface TestFleet {
  ed: Ed25519
  root: KeyPair
  admins: KeyPair[]
  operator: KeyPair
  nodes: KeyPair[]
  genesis: SignedTrustStatement
  stores: MemoryStore[]
  replicas: Replica[]
  /**
   * The signer for `pair` on replica `replica`: one actor per (replica, key), made once and
   * reused, as a daemon does (two replicas sharing an actor would reuse sequence numbers).
   */
  signer: (replica: number, pair: KeyPair) => Signer
  /** Another replica of this fleet on `store` (a fresh MemoryStore by default). */
  openReplica: (store?: Store, ed?: Ed25519) => Promise<Replica>
}

export async function makeFleet(opts: FleetOptions = {}): Promise<TestFleet> {
  const ed = opts.ed ?? nodeCryptoEd25519
  const label = opts.label ?? 'fleet'
  const root = testKey(`${label}/root`)
  const admins = Array.from({ length: opts.admins ?? 2 }, (_, i) => testKey(`${label}/admin-${i}`))
  const operator = testKey(`${label}/operator`)
  const nodes = Array.from({ length: opts.nodes ?? 1 }, (_, i) => testKey(`${label}/node-${i}`))
  const genesis = await createGenesis(
    {
      fleet: `test-${label}`,
      roots: [root],
      admins: admins.map((k, i) => ({ key: publicKeyHex(k.publicKey), name: `admin-${i}` })),
      operators: [
        {
          key: publicKeyHex(operator.publicKey),
          name: 'operator',
          docs: opts.operatorDocs ?? ['site/x']
        }
      ],
      nodes: nodes.map((k, i) => ({
        key: publicKeyHex(k.publicKey),
        name: `node-${i}`,
        labels: { role: 'pos', site: 'x' }
      })),
      issued: new Date('2026-01-01T00:00:00.000Z')
    },
    ed
  )
  const stores: MemoryStore[] = []
  const replicas: Replica[] = []
  const openReplica = async (
    store: Store = new MemoryStore(),
    edImpl: Ed25519 = ed
  ): Promise<Replica> => Replica.open({ store, ed: edImpl, genesis })
  for (let i = 0; i < (opts.replicas ?? 2); i++) {
    const store = new MemoryStore()
    stores.push(store)
    replicas.push(await openReplica(store))
  }
  const signers = new Map<string, Signer>()
  const signer = (replica: number, pair: KeyPair): Signer => {
    const id = `${replica}/${publicKeyHex(pair.publicKey)}`
    let s = signers.get(id)
    if (s === undefined) {
      s = Replica.signer(pair)
      signers.set(id, s)
    }
    return s
  }
  return { ed, root, admins, operator, nodes, genesis, stores, replicas, signer, openReplica }
}

export interface ForgeOptions {
  /** Actor id the change is made with (default: `pair`'s key plus a fresh session). */
  actor?: string
  /** Key that signs the change (default `pair`); a different key makes an actor mismatch. */
  signWith?: KeyPair
  /** Fleet id to sign for (default the replica's). */
  fleetId?: string
}

/**
 * Make a signed batch the way an attacker or a buggy peer could: straight through Automerge,
 * bypassing `SignedDocument.change` and its authorisation check. The document is not changed.
 */
export async function forgeBatch<T>(
  doc: SignedDocument<T>,
  fleetId: string,
  pair: KeyPair,
  fn: Automerge.ChangeFn<T>,
  ed: Ed25519,
  opts: ForgeOptions = {}
): Promise<SignedBatch> {
  const actor = opts.actor ?? newActorId(pair.publicKey)
  const next = Automerge.change(Automerge.clone(doc.value, { actor }), fn)
  const change = Automerge.getLastLocalChange(next)
  if (change === undefined) throw new Error('forgeBatch: the change function changed nothing')
  const hash = readChanges([change])[0]!.hash
  const sig = await signChange(opts.signWith ?? pair, opts.fleetId ?? fleetId, doc.id, hash, ed)
  return { docId: doc.id, chunks: [change], signatures: [sig] }
}

/** Every change hash a document holds. */
export function allHashes<T>(doc: SignedDocument<T>): string[] {
  return doc.history().map(h => h.hash)
}

/**
 * Bring `to` up to date with `from` for one document: send a self-covering batch of every
 * change `from` holds that `to` lacks, as sync would. Returns how many changes were sent.
 */
export async function repair(from: Replica, to: Replica, docId: string): Promise<number> {
  const a = await from.open(docId)
  const b = await to.open(docId)
  const missing = allHashes(a).filter(h => !b.has([h]))
  if (missing.length === 0) return 0
  await to.accept(a.batchFor(missing))
  return missing.length
}

/** Run `fn` and return the error it threw (rejects if it did not throw). */
export async function thrown(fn: () => unknown): Promise<Error> {
  try {
    await fn()
  } catch (err) {
    return err as Error
  }
  throw new Error('expected an error, none was thrown')
}
