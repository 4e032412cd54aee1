/**
 * Admission: strangers learn nothing; enrolled nodes sync; a browser-like peer (WebSockets only,
 * `createBrowserMesh`) gets data with a viewer token or an admin voucher and nothing with a bad token.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '../crdt/keys.ts'
import { Replica } from '../crdt/replica.ts'
import { MemoryStore } from '../crdt/store.ts'
import { createBrowserMesh, signSessionVoucher } from '../mesh/browser.ts'
import { SYNC_PROTOCOL } from '../mesh/sync-messages.ts'
import { ed, makeFleet } from './fixtures/fleet.ts'
import { sameHeads, startNode, TEST_LIMITS } from './fixtures/mesh-node.ts'
import { nextEvent, waitFor } from './fixtures/wait.ts'
import { rawPeer, openStream, collect } from './fixtures/mesh-raw-peer.ts'

test("admission: strangers get nothing, enrolled nodes and vouched browsers get the fleet's data", async () => {
  const fleet = await makeFleet({ nodes: 2, replicas: 0, label: 'mesh-admission' })
  const d = await startNode(fleet, fleet.nodes[0]!, {
    listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws']
  })
  const tcpAddr = d.mesh.addresses().find(a => !a.includes('/ws'))!
  const wsAddr = d.mesh.addresses().find(a => a.includes('/ws'))!
  const admin = Replica.signer(fleet.admins[0]!)
  await (
    await d.replica.open('fleet')
  ).change(admin, x => {
    x.secret = 'config'
  })
  await d.mesh.publishStatus({ revision: 'r1' })
  try {
    // A stranger's sync stream is refused before anything is sent.
    const stranger = await rawPeer(generateKeyPair())
    const s = await openStream(stranger, tcpAddr, SYNC_PROTOCOL).catch(() => undefined)
    if (s !== undefined) {
      const got = await collect(s, 2000)
      assert.equal(got.bytes, 0, 'a stranger received no bytes of sync data')
    }
    assert.equal(
      d.mesh.peers().find(p => p.peerId === stranger.peerId.toString())?.admission ?? 'none',
      'none'
    )
    await stranger.stop()

    // An enrolled node receives documents and status.
    const e = await startNode(fleet, fleet.nodes[1]!, { bootstrap: [tcpAddr] })
    await waitFor('enrolled node to receive fleet', () => sameHeads(e.replica, d.replica))
    await waitFor('enrolled node to receive status', () =>
      e.mesh.statuses().some(x => x.body.revision === 'r1')
    )
    assert.equal(d.mesh.peers().find(p => p.peerId === e.mesh.peerId)?.admission, 'node')
    await e.mesh.stop()

    const browser = async (
      session: { viewerToken: string } | { voucher: Uint8Array },
      identity = generateKeyPair()
    ) => {
      const replica = await Replica.open({ store: new MemoryStore(), ed, genesis: fleet.genesis })
      const mesh = await createBrowserMesh({
        replica,
        identity,
        bootstrap: [wsAddr],
        credential: session,
        limits: TEST_LIMITS
      })
      const answer = nextEvent(mesh, 'session')
      await mesh.start()
      return { replica, mesh, answer: await answer }
    }

    // A bad viewer token: refused, nothing received.
    const bad = await browser({ viewerToken: 'not-a-token' })
    assert.equal(bad.answer.ok, false)
    assert.equal(bad.replica.documentIds().length, 0)
    assert.equal(bad.mesh.statuses().length, 0)
    await bad.mesh.stop()

    // A viewer token issued by the daemon: admitted as viewer, receives the fleet's data.
    const token = d.mesh.issueViewerToken()
    const viewer = await browser({ viewerToken: token })
    assert.equal(viewer.answer.admission, 'viewer')
    await waitFor('viewer to receive fleet', () => sameHeads(viewer.replica, d.replica))
    assert.equal((await viewer.replica.open('fleet')).value.secret, 'config')
    await waitFor('viewer to receive status', () => viewer.mesh.statuses().length === 1)
    await viewer.mesh.stop()
    // The token was one-time.
    const again = await browser({ viewerToken: token })
    assert.equal(again.answer.ok, false)
    await again.mesh.stop()

    // An admin-signed voucher: admitted as admin session; its signed change reaches the daemon.
    const tab = generateKeyPair()
    const voucher = await signSessionVoucher(
      {
        peerPublicKey: tab.publicKey,
        expires: Date.now() + 60_000,
        signer: fleet.admins[0]!,
        fleetId: d.replica.fleetId
      },
      ed
    )
    const adminTab = await browser({ voucher }, tab)
    assert.equal(adminTab.answer.admission, 'admin-session')
    await waitFor('admin tab to receive fleet', () => sameHeads(adminTab.replica, d.replica))
    await (
      await adminTab.replica.open('fleet')
    ).change(Replica.signer(fleet.admins[0]!), x => {
      x.fromBrowser = true
    })
    await waitFor(
      "daemon to apply the browser's change",
      async () => (await d.replica.open('fleet')).value.fromBrowser === true
    )
    await adminTab.mesh.stop()

    // A voucher signed by a key that is not admin/operator is refused.
    const nobody = generateKeyPair()
    const tab2 = generateKeyPair()
    const forged = await signSessionVoucher(
      {
        peerPublicKey: tab2.publicKey,
        expires: Date.now() + 60_000,
        signer: nobody,
        fleetId: d.replica.fleetId
      },
      ed
    )
    const refused = await browser({ voucher: forged }, tab2)
    assert.equal(refused.answer.ok, false)
    assert.equal(refused.replica.documentIds().length, 0)
    await refused.mesh.stop()
  } finally {
    await d.mesh.stop()
  }
})
