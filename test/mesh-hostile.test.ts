/**
 * A hostile peer (enrolled, so its stream is admitted) sends forged changes (in a sync message
 * and pushed), an oversized push, garbage and an oversized frame: each time it is disconnected and banned, honest sync continues, and the
 * daemon's memory stays bounded over repeated attacks.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Automerge from '@automerge/automerge'
import { multiaddr } from '@multiformats/multiaddr'
import type { KeyPair } from '../crdt/keys.ts'
import { Replica } from '../crdt/replica.ts'
import { MemoryStore } from '../crdt/store.ts'
import { encodeBatch } from '../crdt/signed-change.ts'
import { ByteWriter } from '../crdt/bytes.ts'
import { encodeFrame } from '../mesh/frames.ts'
import { MAX_PUSH_BYTES } from '../mesh/limits.ts'
import { encodeSyncWire, SYNC_PROTOCOL } from '../mesh/sync-messages.ts'
import { ed, makeFleet } from './fixtures/fleet.ts'
import { sameHeads, startNode, TEST_LIMITS } from './fixtures/mesh-node.ts'
import { nextEvent, waitFor } from './fixtures/wait.ts'
import { rawPeer, openStream } from './fixtures/mesh-raw-peer.ts'

const MAX_FRAME = 1024 * 1024

/** The next peer `target` rejects, and why. */
const nextRejection = (target: EventTarget) =>
  nextEvent<{ peerId: string; error: string }>(target, 'rejected')

test('hostile peers are disconnected and banned; honest sync continues; memory stays bounded', async () => {
  const fleet = await makeFleet({ nodes: 32, replicas: 0, label: 'mesh-hostile' })
  const d = await startNode(fleet, fleet.nodes[0]!, {
    limits: { ...TEST_LIMITS, maxFrameBytes: MAX_FRAME }
  })
  const h = await startNode(fleet, fleet.nodes[1]!, { bootstrap: d.mesh.addresses() })
  const addr = d.mesh.addresses()[0]!
  const admin = Replica.signer(fleet.admins[0]!)
  try {
    await (
      await d.replica.open('fleet')
    ).change(admin, x => {
      x.a = 1
    })
    await waitFor('honest peer in sync', () => sameHeads(h.replica, d.replica))

    // 1. Forged change: a real admin change whose signature is tampered with.
    const scratch = await Replica.open({ store: new MemoryStore(), ed, genesis: fleet.genesis })
    const sdoc = await scratch.open('fleet')
    const batch = (await sdoc.change(admin, x => {
      x.forged = true
    }))!
    const sig = batch.signatures[0]!
    sig.signature = sig.signature.slice()
    sig.signature[0] = sig.signature[0]! ^ 0xff
    const [, syncMsg] = Automerge.generateSyncMessage(sdoc.automerge, Automerge.initSyncState())
    const decoded = Automerge.decodeSyncMessage(syncMsg!)
    const stripped = Automerge.encodeSyncMessage({ ...decoded, changes: [] })
    const forger = await rawPeer(fleet.nodes[2]!)
    const rejected = nextRejection(d.mesh)
    const s1 = await openStream(forger, addr, SYNC_PROTOCOL)
    s1.send(
      encodeFrame(
        encodeSyncWire({
          type: 'sync',
          docId: 'fleet',
          message: stripped,
          batch: encodeBatch(batch)
        })
      )
    )
    let r = await rejected
    assert.equal(r.peerId, forger.peerId.toString())
    assert.equal(r.error, 'InvalidSignatureError')
    assert.equal(
      (await d.replica.open('fleet')).value.forged,
      undefined,
      'the forged change was not applied'
    )
    await waitFor('forger disconnected', () => forger.getConnections().length === 0)
    // Banned: a new connection is refused.
    await assert.rejects(async () => {
      const c = await forger.dial(multiaddr(addr), { signal: AbortSignal.timeout(3000) })
      await waitFor('refused connection to close', () => c.status !== 'open', 3000)
      throw new Error('refused')
    })
    await forger.stop()

    /** A new enrolled raw peer sends `bytes` on a sync stream; resolves with the rejection it earns. */
    const attack = async (
      key: KeyPair,
      bytes: Uint8Array
    ): Promise<{ peerId: string; error: string }> => {
      const peer = await rawPeer(key)
      const rejection = nextRejection(d.mesh)
      ;(await openStream(peer, addr, SYNC_PROTOCOL)).send(bytes)
      try {
        return await rejection
      } finally {
        await peer.stop()
      }
    }

    // 1b. The same forged change pushed (no sync round) is refused the same way.
    r = await attack(
      fleet.nodes[29]!,
      encodeFrame(encodeSyncWire({ type: 'push', docId: 'fleet', batch: encodeBatch(batch) }))
    )
    assert.equal(r.error, 'InvalidSignatureError')
    assert.equal(
      (await d.replica.open('fleet')).value.forged,
      undefined,
      'the pushed forgery was not applied'
    )

    // 1c. A push over its size cap (within the frame limit) is malformed.
    r = await attack(
      fleet.nodes[30]!,
      encodeFrame(
        encodeSyncWire({ type: 'push', docId: 'fleet', batch: new Uint8Array(MAX_PUSH_BYTES + 1) })
      )
    )
    assert.equal(r.error, 'MalformedMessageError')

    // 2. Garbage frame.
    r = await attack(fleet.nodes[3]!, encodeFrame(Uint8Array.from([99, 1, 2, 3, 4, 5])))
    assert.equal(r.error, 'MalformedMessageError')

    // 3. Oversized frame: a length prefix over the limit, then bytes.
    r = await attack(
      fleet.nodes[4]!,
      new ByteWriter()
        .varint(MAX_FRAME + 1)
        .raw(new Uint8Array(64 * 1024))
        .finish()
    )
    assert.equal(r.error, 'FrameTooLargeError')

    // Honest sync continues.
    await (
      await d.replica.open('fleet')
    ).change(admin, x => {
      x.b = 2
    })
    await waitFor('honest peer receives the next change', () => sameHeads(h.replica, d.replica))
    assert.equal((await h.replica.open('fleet')).value.b, 2)

    // Memory: 24 more attackers each send a near-limit garbage frame.
    const before = process.memoryUsage().heapUsed
    for (let i = 5; i < 29; i++) {
      await attack(fleet.nodes[i]!, encodeFrame(new Uint8Array(MAX_FRAME - 16).fill(7)))
    }
    const grown = process.memoryUsage().heapUsed - before
    assert.ok(
      grown < 96 * 1024 * 1024,
      `heap grew by ${(grown / 1048576).toFixed(1)} MiB over 24 attacks`
    )
    const m = d.mesh.metrics()
    assert.equal(m.peersBanned, 29)
    assert.ok(m.batchesRejected >= 29)
    assert.ok(
      d.mesh.peers().some(p => p.peerId === h.mesh.peerId),
      'the honest peer is still connected'
    )
  } finally {
    await h.mesh.stop()
    await d.mesh.stop()
  }
})
