/**
 * Phantom documents (issue 10, item 6): sync messages naming made-up document ids, from a viewer
 * and from a stolen (enrolled) device, create no document anywhere; the fleet can still create
 * real documents afterwards, and they reach every node. A viewer's messages about documents it
 * may read are still answered.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Automerge from '@automerge/automerge'
import type { Stream } from '@libp2p/interface'
import { generateKeyPair } from '../crdt/keys.ts'
import { Replica } from '../crdt/replica.ts'
import { MAX_DOCUMENTS } from '../crdt/replica.ts'
import { encodeFrame } from '../mesh/frames.ts'
import { encodeSyncWire, SYNC_PROTOCOL } from '../mesh/sync-messages.ts'
import { makeFleet } from './fixtures/fleet.ts'
import { nextSyncMessage, openStream, presentToken, rawPeer } from './fixtures/mesh-raw-peer.ts'
import { sameHeads, startNode } from './fixtures/mesh-node.ts'
import { waitFor } from './fixtures/wait.ts'

const PHANTOMS = MAX_DOCUMENTS + 76

/** A sync message from a peer that holds nothing of `docId`: it asks for everything. */
function emptySync(docId: string): Uint8Array {
  const [, message] = Automerge.generateSyncMessage(Automerge.init(), Automerge.initSyncState())
  return encodeFrame(
    encodeSyncWire({ type: 'sync', docId, message: message!, batch: new Uint8Array(0) })
  )
}

test('sync messages naming made-up documents create none, from a viewer or a stolen device; real documents still can be made', async () => {
  const fleet = await makeFleet({ replicas: 0, nodes: 3, label: 'phantom-docs' })
  const d = await startNode(fleet, fleet.nodes[0]!)
  const h = await startNode(fleet, fleet.nodes[1]!, { bootstrap: d.mesh.addresses() })
  const addr = d.mesh.addresses()[0]!
  const admin = Replica.signer(fleet.admins[0]!)
  const viewer = await rawPeer(generateKeyPair())
  const thief = await rawPeer(fleet.nodes[2]!)
  const answersFleet = (m: { type: string; docId?: string }): boolean =>
    m.type === 'sync' && m.docId === 'fleet'
  const ids = Array.from({ length: PHANTOMS }, (_, i) => `phantom/${i}`)
  /**
   * A hello naming made-up ids, then a sync message for each on `stream`; then one about a
   * document it may read, which is answered (after all the others, in order).
   */
  const sendPhantoms = async (stream: Stream): Promise<void> => {
    stream.send(
      encodeFrame(
        encodeSyncWire({
          type: 'hello',
          fleetId: d.replica.fleetId,
          trustVersion: 1,
          docIds: ids.slice(0, 1000)
        })
      )
    )
    for (const id of ids) stream.send(emptySync(id))
    stream.send(emptySync('fleet'))
    await nextSyncMessage(stream, answersFleet)
  }
  try {
    await (
      await d.replica.open('fleet')
    ).change(admin, x => {
      x.real = 1
    })
    await waitFor('h to hold fleet', async () =>
      h.replica.documentIds().includes('fleet')
        ? (await h.replica.open('fleet')).value.real === 1
        : false
    )
    const before = d.replica.documentIds()

    // A viewer: a hello naming made-up ids, then a sync message for each.
    const reply = await presentToken(viewer, addr, d.mesh.issueViewerToken())
    assert.equal(reply.ok, true)
    await sendPhantoms(await openStream(viewer, addr, SYNC_PROTOCOL))

    // A stolen device: enrolled, so its streams are admitted and what it names is negotiated.
    await sendPhantoms(await openStream(thief, addr, SYNC_PROTOCOL))

    assert.deepEqual(d.replica.documentIds(), before, 'no document was created on the daemon')
    assert.deepEqual(h.replica.documentIds(), before, 'nor on its peer')

    // The fleet can still create documents, and they spread.
    await (
      await d.replica.open('site/new')
    ).change(admin, x => {
      x.made = true
    })
    await waitFor('the new document to reach h', () => sameHeads(h.replica, d.replica, 'site/new'))
  } finally {
    await viewer.stop()
    await thief.stop()
    await h.mesh.stop()
    await d.mesh.stop()
  }
})
