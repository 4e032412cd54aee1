/**
 * Push, one sync stream at a time (`mesh/sync-stream.ts`) over an in-memory stream pair, so the
 * order of what each side sends is fixed by the test: a pushed change whose dependency the
 * receiver lacks makes it start a sync round with the pusher, naming the dependency it lacks,
 * which fetches it (no anti-entropy runs here); a change is not pushed back to the peer it came
 * from; a peer stuck sending the same sync message is answered a few times, not for ever; a change
 * the peer still needs after it was sent (it dropped it) is sent again.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Automerge from '@automerge/automerge'
import { encodeBatch, type SignedBatch } from '../crdt/signed-change.ts'
import type { Replica } from '../crdt/replica.ts'
import { DEFAULT_LIMITS, MAX_SYNC_REPEATS, WORK_BUDGETS } from '../mesh/limits.ts'
import { SyncStream, type SyncStreamHost } from '../mesh/sync-stream.ts'
import { decodeFrames, encodeFrame } from '../mesh/frames.ts'
import { decodeSyncWire, encodeSyncWire, type SyncWireMessage } from '../mesh/sync-messages.ts'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PeerId } from '@libp2p/interface'
import { makeFleet, type TestFleet } from './fixtures/fleet.ts'
import { waitFor } from './fixtures/wait.ts'
import { Pipe, streamOf } from './fixtures/mesh-memory-stream.ts'

function hostFor(replica: Replica, faults: Error[]): SyncStreamHost {
  const states = new Map<string, Uint8Array>()
  return {
    replica,
    limits: DEFAULT_LIMITS,
    mayServe: () => true,
    mayAccept: () => true,
    workBudget: () => ({ kind: 'device', budget: WORK_BUDGETS.node }),
    loadSyncState: (peer, doc) => {
      const b = states.get(`${peer.toString()}/${doc}`)
      return b === undefined ? undefined : Automerge.decodeSyncState(b)
    },
    saveSyncState: (peer, doc, s) => {
      states.set(`${peer.toString()}/${doc}`, Automerge.encodeSyncState(s))
    },
    greeted: () => {},
    resyncing: () => {},
    receiveStatus: async () => {},
    invalid: (_session, err) => {
      faults.push(err)
    },
    closed: () => {},
    count: () => {}
  }
}

/** The messages a side wrote, in order. */
async function messagesWritten(pipe: Pick<Pipe, 'written'>): Promise<SyncWireMessage[]> {
  const out: SyncWireMessage[] = []
  async function* all(): AsyncGenerator<Uint8Array> {
    yield* pipe.written
  }
  for await (const frame of decodeFrames(all(), DEFAULT_LIMITS.maxFrameBytes)) {
    out.push(decodeSyncWire(frame))
  }
  return out
}

const typesWritten = async (pipe: Pipe): Promise<string[]> =>
  (await messagesWritten(pipe)).map(m => m.type)

const push = (b: SignedBatch): { bytes: Uint8Array; hashes: string[] } => ({
  bytes: encodeBatch(b),
  hashes: b.signatures.map(s => s.hash)
})

/** A change of `r`'s fleet document setting `key` to `value`, by admin 0 as replica `slot`. */
async function setOn(
  fleet: TestFleet,
  slot: number,
  r: Replica,
  key: string,
  value: number
): Promise<SignedBatch> {
  const doc = await r.open<Record<string, number>>('fleet')
  return (await doc.change(fleet.signer(slot, fleet.admins[0]!), x => {
    x[key] = value
  }))!
}

const newPeerId = async (): Promise<PeerId> =>
  peerIdFromPrivateKey(await generateKeyPair('Ed25519'))

/** Two replicas of one fleet, P and D, with a running stream each way and hellos exchanged. */
async function sessionPair(label: string) {
  const fleet = await makeFleet({ replicas: 2, label })
  const [p, d] = fleet.replicas as [Replica, Replica]
  const faults: Error[] = []
  const pToD = new Pipe()
  const dToP = new Pipe()
  const [P, D] = [await newPeerId(), await newPeerId()]
  const sp = new SyncStream(hostFor(p, faults), D, streamOf(dToP, pToD), P)
  const sd = new SyncStream(hostFor(d, faults), P, streamOf(pToD, dToP), P)
  const running = [sp.run(), sd.run()]
  const stop = async (): Promise<void> => {
    sp.close()
    sd.close()
    await Promise.all(running)
  }
  try {
    await waitFor('hellos exchanged', () => sp.helloReceived && sd.helloReceived, 5000)
  } catch (err) {
    await stop()
    throw err
  }
  return { fleet, p, d, faults, pToD, dToP, sp, sd, stop }
}

test('a pushed change whose dependency is missing starts a sync round with the pusher, which fills the gap', async () => {
  const { fleet, p, d, faults, pToD, dToP, sp, stop } = await sessionPair('mesh-push')
  try {
    const admin = fleet.signer(0, fleet.admins[0]!)
    const doc = await p.open('fleet')
    const first = (await doc.change(admin, x => {
      x.first = 1
    }))!
    const second = (await doc.change(admin, x => {
      x.second = 2
    }))!
    const pSent = pToD.written.length
    const dSent = dToP.written.length
    // Only the second is pushed; the first never is.
    sp.push('fleet', [push(second)])
    await waitFor(
      'd to hold both changes',
      async () => {
        const v = (await d.open('fleet')).value
        return v.first === 1 && v.second === 2
      },
      5000
    )
    assert.deepEqual((await d.open('fleet')).heads, doc.heads)
    assert.deepEqual(faults, [], 'nobody was taken for a forger')
    const fromP = (await typesWritten(pToD)).slice(pSent)
    assert.equal(fromP[0], 'push')
    assert.ok(
      fromP.slice(1).includes('sync'),
      `p answered with a sync message: ${fromP.join(', ')}`
    )
    // d asked for what the pending change waits on, by hash: Automerge alone would name the
    // pending change itself, which p has marked sent (the two then looped for ever, 1 run in 10).
    const dSyncs = (await messagesWritten({ written: dToP.written.slice(dSent) })).filter(
      m => m.type === 'sync'
    )
    assert.ok(dSyncs.length > 0, 'd started a sync round after the push')
    const needs = dSyncs.flatMap(m =>
      m.type === 'sync' ? Automerge.decodeSyncMessage(m.message).need : []
    )
    assert.ok(
      needs.includes(first.signatures[0]!.hash),
      `d needs the first change: ${needs.join(', ')}`
    )
  } finally {
    await stop()
  }
})

test('a change is not pushed back to the peer it came from', async () => {
  const { fleet, p, d, faults, dToP, sp, sd, stop } = await sessionPair('mesh-push-back')
  try {
    const change = await setOn(fleet, 0, p, 'a', 1)
    sp.push('fleet', [push(change)])
    await waitFor('d to apply it', async () => (await d.open('fleet')).value.a === 1, 5000)
    // d relays what it accepted to every session; the one to p must stay quiet about it.
    const sentBefore = (await typesWritten(dToP)).filter(t => t === 'push').length
    sd.push('fleet', [push(change)])
    // A marker through the same ordered queue: once p has it, any push before it has arrived too.
    const marker = await setOn(fleet, 1, d, 'b', 2)
    sd.push('fleet', [push(marker)])
    await waitFor('p to apply the marker', async () => (await p.open('fleet')).value.b === 2, 5000)
    assert.equal(
      (await typesWritten(dToP)).filter(t => t === 'push').length,
      sentBefore + 1,
      'only the marker was pushed to p'
    )
    assert.deepEqual(faults, [])
  } finally {
    await stop()
  }
})

test('a peer that sends the same sync message again and again is answered a few times, then not until anti-entropy', async () => {
  const { fleet, p, d, faults, pToD, dToP, sd, stop } = await sessionPair('mesh-session-stuck')
  try {
    // A message naming heads d does not have and never will get: d answers with a need each time.
    let elsewhere = Automerge.init<Record<string, number>>()
    elsewhere = Automerge.change(elsewhere, x => {
      x.n = 1
    })
    const [, message] = Automerge.generateSyncMessage(elsewhere, Automerge.initSyncState())
    const frame = encodeFrame(
      encodeSyncWire({ type: 'sync', docId: 'fleet', message: message!, batch: new Uint8Array(0) })
    )
    const fleetSyncs = async (): Promise<number> =>
      (await messagesWritten(dToP)).filter(m => m.type === 'sync' && m.docId === 'fleet').length
    /** p sets `marker` to `n` and pushes it straight into d's side; then waits for `what`. */
    const pushMarker = async (n: number, what: string): Promise<void> => {
      const marker = await setOn(fleet, 0, p, 'marker', n)
      pToD.write(
        encodeFrame(encodeSyncWire({ type: 'push', docId: 'fleet', batch: encodeBatch(marker) }))
      )
      await waitFor(what, async () => (await d.open('fleet')).value.marker === n, 5000)
    }
    const before = await fleetSyncs()
    // Written straight into d's side of the stream, as p's session would, ten times running;
    // then a pushed change, which d handles after all ten.
    for (let i = 0; i < 10; i++) pToD.write(frame)
    await pushMarker(1, 'd to apply the marker')
    assert.equal(
      (await fleetSyncs()) - before,
      MAX_SYNC_REPEATS + 1,
      'answered the first time and the repeats allowed, no more'
    )
    // Anti-entropy restarts the negotiation: the same message is answered again.
    sd.resync()
    await pushMarker(2, 'd to apply the second marker (after its resync)')
    const afterResync = await fleetSyncs()
    pToD.write(frame)
    await waitFor('d to answer again', async () => (await fleetSyncs()) > afterResync, 5000)
    assert.deepEqual(faults, [])
  } finally {
    await stop()
  }
})

test('a change the peer still needs after it was sent is sent again', async () => {
  const fleet = await makeFleet({ replicas: 2, label: 'mesh-session-resend' })
  const [a, b] = fleet.replicas as [Replica, Replica]
  const da = await a.open('fleet')
  const db = await b.open('fleet')
  const change = (await da.change(fleet.signer(0, fleet.admins[0]!), x => {
    x.k = 1
  }))!
  const hash = change.signatures[0]!.hash
  // Automerge may send changes as a whole-document chunk: count chunks, not parsed changes.
  const carries = (m: Uint8Array | null): number =>
    m === null ? 0 : Automerge.decodeSyncMessage(m).changes.length
  // b opens; a answers with the change, and Automerge counts it as sent.
  let [sb, mb] = Automerge.generateSyncMessage(db.automerge, Automerge.initSyncState())
  let sa = da.receiveSyncMessage(Automerge.initSyncState(), mb!)
  let ma: Uint8Array | null
  ;[sa, ma] = Automerge.generateSyncMessage(da.automerge, sa)
  // b's Bloom filter matches a's change by chance about once in 150 runs: a then holds it back
  // until b, having seen a's heads, asks for it by hash. Either way a sends it once.
  for (let round = 0; carries(ma) === 0; round++) {
    assert.ok(round < 3, 'a sends the change')
    sb = db.receiveSyncMessage(sb, ma!)
    ;[sb, mb] = Automerge.generateSyncMessage(db.automerge, sb)
    sa = da.receiveSyncMessage(sa, mb!)
    ;[sa, ma] = Automerge.generateSyncMessage(da.automerge, sa)
  }
  // b never applies it (as when its pending set is full) and, having seen a's heads, needs it.
  sb = db.receiveSyncMessage(
    sb,
    Automerge.encodeSyncMessage({ ...Automerge.decodeSyncMessage(ma!), changes: [] })
  )
  ;[sb, mb] = Automerge.generateSyncMessage(db.automerge, sb)
  assert.deepEqual(Automerge.decodeSyncMessage(mb!).need, [hash])
  sa = da.receiveSyncMessage(sa, mb!)
  ;[, ma] = Automerge.generateSyncMessage(da.automerge, sa)
  assert.ok(carries(ma) > 0, 'a sends it again')
})

test('a sync message whose Bloom filter has no bits is refused as malformed (it made Automerge panic)', async () => {
  const { p, faults, pToD, stop } = await sessionPair('mesh-session-bloom')
  try {
    const doc = await p.open('fleet')
    const [, honest] = Automerge.generateSyncMessage(doc.automerge, Automerge.initSyncState())
    // Found by the fuzzer: 4 entries, 0 bits per entry, 7 probes (Automerge writes 10 and 7).
    const message = Automerge.encodeSyncMessage({
      ...Automerge.decodeSyncMessage(honest!),
      have: [{ lastSync: [], bloom: Uint8Array.of(4, 0, 7) }]
    })
    pToD.write(
      encodeFrame(
        encodeSyncWire({ type: 'sync', docId: 'fleet', message, batch: new Uint8Array(0) })
      )
    )
    await waitFor('the peer to be taken for a faulty one', () => faults.length > 0, 5000)
    assert.equal(faults[0]!.name, 'MalformedMessageError')
  } finally {
    await stop()
  }
})
