/**
 * Browser sessions end with their signer's authority (mesh/browser-session.ts, mesh/admission.ts):
 * a voucher lasts at most `MAX_VOUCHER_LIFETIME_MS` and one asking for more is refused; an admin
 * session open over WebSockets is hung up on within a second of a trust statement revoking the
 * admin key that vouched for it, and cannot open again, while a session vouched for by another
 * admin stays.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { ByteWriter, toHex } from '../crdt/bytes.ts'
import { generateKeyPair, publicKeyHex, type KeyPair } from '../crdt/keys.ts'
import { Replica } from '../crdt/replica.ts'
import { MemoryStore } from '../crdt/store.ts'
import { nextStatement } from '../crdt/trust.ts'
import { signSessionVoucher, verifySessionVoucher } from '../mesh/browser-session.ts'
import { createBrowserMesh } from '../mesh/browser.ts'
import { SessionRefusedError } from '../mesh/errors.ts'
import { MAX_VOUCHER_LIFETIME_MS } from '../mesh/limits.ts'
import type { Mesh, SessionAnswer } from '../mesh/types.ts'
import { ed, makeFleet } from './fixtures/fleet.ts'
import { startNode, TEST_LIMITS } from './fixtures/mesh-node.ts'
import { waitFor } from './fixtures/wait.ts'

test('a voucher lasts at most MAX_VOUCHER_LIFETIME_MS: one asking for more, or issued ahead of the clock, is refused', async () => {
  const fleet = await makeFleet({ replicas: 1, label: 'voucher-lifetime' })
  const trust = fleet.replicas[0]!.trust
  const tab = generateKeyPair()
  const now = Date.now()
  const voucher = (issued: number, expires: number, signer: KeyPair = fleet.admins[0]!) =>
    signSessionVoucher(
      { peerPublicKey: tab.publicKey, issued, expires, signer, fleetId: trust.fleetId },
      ed
    )
  const check = async (bytes: Uint8Array) =>
    verifySessionVoucher(bytes, toHex(tab.publicKey), trust, ed, now)

  const ok = await check(await voucher(now, now + MAX_VOUCHER_LIFETIME_MS))
  assert.equal(ok.expires - ok.issued, MAX_VOUCHER_LIFETIME_MS)
  await assert.rejects(
    check(await voucher(now, now + MAX_VOUCHER_LIFETIME_MS + 60_000)),
    (err: Error) => err instanceof SessionRefusedError && /at most 12 h/.test(err.message)
  )
  // Signed for later: issued a day ahead, so its expiry is far off.
  await assert.rejects(
    check(await voucher(now + 86_400_000, now + 86_400_000 + 60_000)),
    (err: Error) =>
      err instanceof SessionRefusedError && /ahead of this daemon's clock/.test(err.message)
  )
  // Version 1 had no issue time: refused, whatever it asks.
  const v1 = new ByteWriter()
    .u8(1)
    .raw(tab.publicKey)
    .u8(1)
    .varint(now + 60_000)
    .raw(fleet.admins[0]!.publicKey)
    .raw(new Uint8Array(64))
    .finish()
  await assert.rejects(check(v1), /version 1 is not supported/)
})

function sessionAnswer(mesh: Mesh): Promise<SessionAnswer> {
  return new Promise(resolve => {
    mesh.addEventListener('session', e => resolve(e.detail), { once: true })
  })
}

test('an admin session is hung up on within a second of its signer being revoked, and cannot open again', async () => {
  const fleet = await makeFleet({ nodes: 1, admins: 2, replicas: 0, label: 'session-revoked' })
  const d = await startNode(fleet, fleet.nodes[0]!, {
    listen: ['/ip4/127.0.0.1/tcp/0/ws']
  })
  const wsAddr = d.mesh.addresses().find(a => a.includes('/ws'))!
  const browsers: Mesh[] = []
  const open = async (tab: KeyPair, signer: KeyPair) => {
    const voucher = await signSessionVoucher(
      {
        peerPublicKey: tab.publicKey,
        expires: Date.now() + 60 * 60_000,
        signer,
        fleetId: d.replica.fleetId
      },
      ed
    )
    const replica = await Replica.open({ store: new MemoryStore(), ed, genesis: fleet.genesis })
    const mesh = await createBrowserMesh({
      replica,
      identity: tab,
      bootstrap: [wsAddr],
      credential: { voucher },
      limits: TEST_LIMITS
    })
    browsers.push(mesh)
    const answer = sessionAnswer(mesh)
    await mesh.start()
    return { mesh, answer: await answer }
  }
  const admissionOf = (m: Mesh) => d.mesh.peers().find(p => p.peerId === m.peerId)?.admission
  try {
    const [doomedTab, keptTab] = [generateKeyPair(), generateKeyPair()]
    const doomed = await open(doomedTab, fleet.admins[1]!)
    const kept = await open(keptTab, fleet.admins[0]!)
    assert.equal(doomed.answer.admission, 'admin-session')
    assert.equal(kept.answer.admission, 'admin-session')
    await waitFor('both sessions admitted', () =>
      [doomed.mesh, kept.mesh].every(m => admissionOf(m) === 'admin-session')
    )

    // A root-signed statement revokes admin-1, which wrote nothing (an empty cut).
    const admin1 = publicKeyHex(fleet.admins[1]!.publicKey)
    const base = fleet.genesis.statement
    const v2 = await nextStatement(
      base,
      {
        admins: base.admins.filter(a => a.key !== admin1),
        revocations: [{ key: admin1, reason: 'laptop stolen', cuts: {} }]
      },
      [fleet.root],
      ed
    )
    const gone = new Promise<number>(resolve => {
      d.mesh.addEventListener('peer:disconnect', e => {
        if (e.detail.peerId === doomed.mesh.peerId) resolve(performance.now())
      })
    })
    const t0 = performance.now()
    assert.equal(await d.replica.addTrustStatement(v2), true)
    const ms =
      (await Promise.race([
        gone,
        new Promise<number>(resolve => setTimeout(() => resolve(Infinity), 5000))
      ])) - t0
    assert.ok(ms < 1000, `the session was hung up on ${ms.toFixed(0)} ms after the statement`)
    assert.equal(admissionOf(kept.mesh), 'admin-session', "the other admin's session stays")

    // The same tab with the same voucher cannot open a session again.
    await doomed.mesh.stop()
    const again = await open(doomedTab, fleet.admins[1]!)
    assert.equal(again.answer.ok, false)
    assert.match(again.answer.reason ?? '', /revoked|not an admin/)
    assert.notEqual(admissionOf(again.mesh), 'admin-session')
  } finally {
    await Promise.all(browsers.map(b => b.stop().catch(() => {})))
    await d.mesh.stop()
  }
})
