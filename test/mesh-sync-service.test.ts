/**
 * The sync service (`mesh/sync-service.ts`) on its own: two services joined by in-memory
 * connections, with admission faked. When both sides admit each other at once, exactly one sync
 * stream survives on each side (the one the lower PeerId opened); a change made on either side
 * reaches the other by push; a peer dismissed by admission loses its stream.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { TypedEventEmitter } from '@libp2p/interface'
import type { Connection, Libp2pEvents, PeerId, Stream, StreamHandler } from '@libp2p/interface'
import { PeerSet } from '@libp2p/peer-collections'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { Replica } from '../crdt/replica.ts'
import type { AdmissionEvents } from '../mesh/admission-service.ts'
import { MeshCounters } from '../mesh/counters.ts'
import { DEFAULT_LIMITS } from '../mesh/limits.ts'
import { SyncService } from '../mesh/sync-service.ts'
import { waitFor } from './fixtures/wait.ts'
import { streamPair } from './fixtures/mesh-memory-stream.ts'
import { makeFleet } from './fixtures/fleet.ts'

class FakeAdmission extends TypedEventEmitter<AdmissionEvents> {
  readonly dismissed = new PeerSet()
  mayServe(p: PeerId): boolean {
    return !this.dismissed.has(p)
  }
  mayAccept(p: PeerId): boolean {
    return !this.dismissed.has(p)
  }
  admissionOf(): 'node' {
    return 'node'
  }
  isBanned(): boolean {
    return false
  }
  isEnrolledKey(): boolean {
    return true
  }
  reject(): void {}
}

interface Side {
  id: PeerId
  svc: SyncService
  admission: FakeAdmission
  handler?: StreamHandler
}

async function side(replica: Replica, connectTo: () => Side | undefined): Promise<Side> {
  const id = peerIdFromPrivateKey(await generateKeyPair('Ed25519'))
  const admission = new FakeAdmission()
  const s: Partial<Side> = { id, admission }
  const connection = (): Connection =>
    ({
      status: 'open',
      newStream: async (): Promise<Stream> => {
        const other = connectTo()!
        const { a, b } = streamPair()
        void other.handler!(b, { remotePeer: id } as Connection)
        return a
      }
    }) as unknown as Connection
  s.svc = new SyncService(
    {
      peerId: id,
      registrar: {
        handle: async (_p, h) => {
          s.handler = h
        },
        unhandle: async () => {}
      },
      connectionManager: { getConnections: () => [connection()] },
      events: new TypedEventEmitter<Libp2pEvents>(),
      admission
    },
    { replica, limits: DEFAULT_LIMITS, counters: new MeshCounters(), antiEntropyMs: 60_000 }
  )
  await s.svc.start()
  return s as Side
}

test('two services admitting each other at once keep one stream each, push changes both ways, and drop a dismissed peer', async () => {
  const fleet = await makeFleet({ replicas: 2, label: 'sync-service' })
  const [ra, rb] = fleet.replicas as [Replica, Replica]
  const late: { b?: Side } = {}
  const a = await side(ra, () => late.b)
  const b = (late.b = await side(rb, () => a))
  const opened = { a: 0, b: 0 }
  a.svc.addEventListener('stream:open', () => opened.a++)
  b.svc.addEventListener('stream:open', () => opened.b++)
  try {
    a.admission.safeDispatchEvent('peer:admitted', { detail: b.id })
    b.admission.safeDispatchEvent('peer:admitted', { detail: a.id })
    await waitFor(
      'a stream on each side',
      () => a.svc.streams().length === 1 && b.svc.streams().length === 1,
      5000
    )
    const lower = a.id.toString() < b.id.toString() ? a.id : b.id
    assert.ok(a.svc.streams()[0]!.opener.equals(lower), 'the lower PeerId opened the stream kept')
    assert.ok(b.svc.streams()[0]!.opener.equals(lower))

    await (
      await ra.open('fleet')
    ).change(fleet.signer(0, fleet.admins[0]!), d => {
      d.fromA = 1
    })
    await waitFor('b to hold a change', async () => (await rb.open('fleet')).value.fromA === 1)
    await (
      await rb.open('fleet')
    ).change(fleet.signer(1, fleet.admins[0]!), d => {
      d.fromB = 1
    })
    await waitFor('a to hold b change', async () => (await ra.open('fleet')).value.fromB === 1)
    assert.deepEqual([opened.a, opened.b], [1, 1], 'no second stream was ever run')

    a.admission.dismissed.add(b.id)
    a.admission.safeDispatchEvent('peer:dismissed', { detail: b.id })
    await waitFor(
      'the streams to end on both sides',
      () => a.svc.streams().length === 0 && b.svc.streams().length === 0,
      5000
    )
  } finally {
    await a.svc.stop()
    await b.svc.stop()
  }
})
