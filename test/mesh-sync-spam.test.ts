/**
 * Sync spam (issue 10, item 4): a viewer alternating two different `need` messages 50 times a
 * second (each answered with a bundle of changes, so the repeat guard, which catches identical
 * messages only, does not stop it) exhausts its work budget and is cut off within seconds; the
 * daemon's event loop stays responsive meanwhile and an honest node keeps receiving changes.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import * as Automerge from '@automerge/automerge'
import { generateKeyPair } from '../crdt/keys.ts'
import { Replica } from '../crdt/replica.ts'
import { encodeFrame } from '../mesh/frames.ts'
import { encodeSyncWire, SYNC_PROTOCOL } from '../mesh/sync-messages.ts'
import type { PeerRejection } from '../mesh/types.ts'
import { makeFleet } from './fixtures/fleet.ts'
import { openStream, presentToken, rawPeer } from './fixtures/mesh-raw-peer.ts'
import { sameHeads, startNode } from './fixtures/mesh-node.ts'
import { waitFor } from './fixtures/wait.ts'

const CHANGES = 200
const RATE = 50
/** The attack runs at most this long; the viewer must be cut off well before. */
const ATTACK_MS = 20_000

test('a viewer alternating two different need messages 50 times a second is cut off; the daemon stays responsive', async () => {
  const fleet = await makeFleet({ replicas: 0, nodes: 2, label: 'sync-spam' })
  const d = await startNode(fleet, fleet.nodes[0]!)
  const h = await startNode(fleet, fleet.nodes[1]!, { bootstrap: d.mesh.addresses() })
  const viewer = await rawPeer(generateKeyPair())
  const addr = d.mesh.addresses()[0]!
  const admin = Replica.signer(fleet.admins[0]!)
  const lag = monitorEventLoopDelay({ resolution: 10 })
  let timer: ReturnType<typeof setInterval> | undefined
  try {
    const doc = await d.replica.open('fleet')
    for (let i = 0; i < CHANGES; i++) {
      await doc.change(admin, x => {
        x[`k${i}`] = 'v'.repeat(200)
      })
    }
    const hashes = Automerge.getAllChanges(doc.automerge).map(c => Automerge.decodeChange(c).hash)
    const need = (hash: string): Uint8Array =>
      encodeFrame(
        encodeSyncWire({
          type: 'sync',
          docId: 'fleet',
          message: Automerge.encodeSyncMessage({ heads: [], need: [hash], have: [], changes: [] }),
          batch: new Uint8Array(0)
        })
      )
    const spam = [need(hashes[1]!), need(hashes[2]!)]
    await waitFor('h to hold fleet', () => sameHeads(h.replica, d.replica))

    assert.equal((await presentToken(viewer, addr, d.mesh.issueViewerToken())).ok, true)
    const stream = await openStream(viewer, addr, SYNC_PROTOCOL)
    const cutOff = new Promise<PeerRejection>(resolve => {
      d.mesh.addEventListener('rejected', e => {
        if (e.detail.peerId === viewer.peerId.toString()) resolve(e.detail)
      })
    })
    const started = performance.now()
    let sent = 0
    lag.enable()
    timer = setInterval(() => {
      if (stream.status !== 'open' || performance.now() - started > ATTACK_MS) {
        clearInterval(timer)
        return
      }
      try {
        stream.send(spam[sent++ % 2]!)
      } catch {
        clearInterval(timer)
      }
    }, 1000 / RATE)

    // Meanwhile an honest change still reaches h promptly.
    await (
      await d.replica.open('fleet')
    ).change(admin, x => {
      x.during = 1
    })
    const t0 = performance.now()
    await waitFor('h to receive a change made during the attack', async () =>
      (await h.replica.open('fleet')).value.during === 1 ? true : undefined
    )
    const honestMs = performance.now() - t0

    const r = await Promise.race([
      cutOff,
      new Promise<undefined>(resolve => setTimeout(() => resolve(undefined), ATTACK_MS))
    ])
    const after = performance.now() - started
    lag.disable()
    assert.ok(
      r !== undefined,
      `the viewer was not cut off within ${ATTACK_MS} ms (${sent} messages sent)`
    )
    assert.equal(r.error, 'WorkBudgetExceededError')
    assert.ok(after < 10_000, `cut off after ${after.toFixed(0)} ms`)
    assert.ok(honestMs < 2000, `an honest change took ${honestMs.toFixed(0)} ms`)
    const worst = lag.max / 1e6
    assert.ok(worst < 1000, `the event loop stalled for ${worst.toFixed(0)} ms`)
    await waitFor('the viewer to be disconnected', () => viewer.getConnections().length === 0)
  } finally {
    clearInterval(timer)
    lag.disable()
    await viewer.stop()
    await h.mesh.stop()
    await d.mesh.stop()
  }
})
