/**
 * Status flood (issue 10, item 5): a stolen (enrolled) device pushes 20,000 self-signed 60 KiB
 * status records with rising sequence numbers at full speed to a daemon (a separate process, so
 * its memory is its own). The daemon's RSS grows by less than a bound, the records are not
 * relayed on (its neighbour sees a few of them at most), the device is cut off, and honest
 * changes keep flowing between the daemon and its neighbour meanwhile.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { toHex } from '../crdt/bytes.ts'
import { Replica } from '../crdt/replica.ts'
import { sendFrame } from '../mesh/frames.ts'
import { STATUS_MIN_INTERVAL_MS, STATUS_RELAY_BURST } from '../mesh/limits.ts'
import { signStatus } from '../mesh/status-record.ts'
import { encodeSyncWire, SYNC_PROTOCOL } from '../mesh/sync-messages.ts'
import { makeFleet } from './fixtures/fleet.ts'
import { spawnDaemon } from './fixtures/mesh-process.ts'
import { openStream, rawPeer } from './fixtures/mesh-raw-peer.ts'
import { startNode } from './fixtures/mesh-node.ts'
import { waitFor } from './fixtures/wait.ts'

const RECORDS = 20_000
const BODY_BYTES = 60 * 1024
/**
 * What the victim's RSS may grow by: the one frame being handled and one yamux window per stream
 * (mesh/limits.ts), a few 64 KiB records waiting per node, and the garbage of handling them.
 */
const RSS_GROWTH_BOUND = 96 * 1024 * 1024

test('a stolen device flooding status records is cut off; the victim stays bounded and relays nothing of it', async () => {
  const fleet = await makeFleet({ replicas: 0, nodes: 3, label: 'status-flood' })
  const dir = await mkdtemp(path.join(tmpdir(), 'rhizome-status-flood-'))
  const v = await spawnDaemon(fleet, {
    dir,
    identity: fleet.nodes[0]!,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    bootstrap: []
  })
  const w = await startNode(fleet, fleet.nodes[1]!, { bootstrap: v.addresses })
  const thiefKey = fleet.nodes[2]!
  const thief = await rawPeer(thiefKey)
  const thiefNode = toHex(thiefKey.publicKey)
  let relayed = 0
  w.mesh.addEventListener('status', e => {
    if (e.detail.node === thiefNode) relayed++
  })
  const rss = async (): Promise<number> => (await v.request({ cmd: 'metrics' })).rss as number
  const polling = { on: true }
  try {
    await waitFor('w to be connected to v', () => w.mesh.metrics().syncSessions === 1)
    const before = await rss()
    let peak = before
    const poll = (async () => {
      while (polling.on) {
        peak = Math.max(peak, await rss())
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    })()

    const stream = await openStream(thief, v.addresses[0]!, SYNC_PROTOCOL)
    const body = { filler: 'x'.repeat(BODY_BYTES) }
    const fleetId = w.replica.fleetId
    const floodStart = performance.now()
    const flooding = (async () => {
      let sent = 0
      const seq0 = Date.now()
      try {
        for (; sent < RECORDS && stream.status === 'open'; sent++) {
          const signed = await signStatus(thiefKey, fleetId, seq0 + sent, body, fleet.ed)
          await sendFrame(stream, encodeSyncWire({ type: 'status', record: signed.bytes }), 10_000)
          // Let this process's other work (the test's own waits) run now and then.
          if (sent % 16 === 0) await new Promise(resolve => setImmediate(resolve))
        }
      } catch {
        // cut off
      }
      return sent
    })()

    // Honest changes still flow while the flood runs.
    const admin = Replica.signer(fleet.admins[0]!)
    const from = v.events.length
    await (
      await w.replica.open('fleet')
    ).change(admin, x => {
      x.during = 1
    })
    const t0 = performance.now()
    await v.next(e => e.event === 'heads' && e.docId === 'fleet', 10_000, from)
    const honestMs = performance.now() - t0

    const cut = await v.next(
      e => e.event === 'rejected' && e.peerId === thief.peerId.toString(),
      30_000
    )
    const floodMs = performance.now() - floodStart
    const sent = await flooding
    polling.on = false
    await poll
    assert.equal(cut.error, 'StatusFloodError')
    assert.ok(sent < RECORDS, `the device was cut off after ${sent} records`)
    assert.ok(honestMs < 2000, `an honest change took ${honestMs.toFixed(0)} ms to arrive`)
    const grown = peak - before
    assert.ok(
      grown < RSS_GROWTH_BOUND,
      `the victim's RSS grew by ${(grown / 1048576).toFixed(0)} MiB`
    )
    // The node's pace, no more: a burst, one per interval while the flood lasted (longer on a
    // loaded machine), and the one waiting when it was cut off. Unpaced, thousands go on.
    const paced = STATUS_RELAY_BURST + 1 + Math.ceil(floodMs / STATUS_MIN_INTERVAL_MS)
    assert.ok(
      relayed <= paced,
      `${relayed} of the device's records were relayed to the neighbour in ${floodMs.toFixed(0)} ms (pace: ${paced})`
    )
    await waitFor('the device to be disconnected', () => thief.getConnections().length === 0)
  } finally {
    polling.on = false
    await thief.stop()
    await w.mesh.stop()
    await v.kill()
    await rm(dir, { recursive: true, force: true })
  }
})
