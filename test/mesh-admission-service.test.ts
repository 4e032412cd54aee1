/**
 * The admission service (`mesh/admission-service.ts`) on its own, over fake libp2p components:
 * an enrolled node is admitted on connect; a stranger is hung up on after the grace period; a
 * device enrolled while connected is admitted then, and dismissed and hung up on when revoked; a
 * peer rejected for invalid data is banned and hung up on.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair as libp2pKeyPair, publicKeyFromRaw } from '@libp2p/crypto/keys'
import { TypedEventEmitter } from '@libp2p/interface'
import type { Connection, Libp2pEvents, PeerId } from '@libp2p/interface'
import { PeerSet } from '@libp2p/peer-collections'
import { peerIdFromPrivateKey, peerIdFromPublicKey } from '@libp2p/peer-id'
import { toHex } from '../crdt/bytes.ts'
import { DEVICES_DOC } from '../crdt/devices.ts'
import { generateKeyPair, type KeyPair } from '../crdt/keys.ts'
import { AdmissionControl } from '../mesh/admission.ts'
import { AdmissionService } from '../mesh/admission-service.ts'
import { MeshCounters } from '../mesh/counters.ts'
import { ProtocolViolationError } from '../mesh/errors.ts'
import { DEFAULT_LIMITS } from '../mesh/limits.ts'
import { waitFor } from './fixtures/wait.ts'
import { makeFleet } from './fixtures/fleet.ts'

const peerOf = (k: KeyPair): PeerId => peerIdFromPublicKey(publicKeyFromRaw(k.publicKey))

class FakeConnections {
  readonly connected = new PeerSet()
  readonly hungUp: string[] = []
  getConnections(): Connection[] {
    return [...this.connected].map(remotePeer => ({ remotePeer }) as Connection)
  }
  async closeConnections(peer: PeerId): Promise<void> {
    this.hungUp.push(peer.toString())
    this.connected.delete(peer)
  }
}

test('admission follows enrolment: admitted on connect or when enrolled, hung up on after the grace period otherwise, banned when rejected', async () => {
  const fleet = await makeFleet({ replicas: 1, nodes: 1, label: 'admission-service' })
  const replica = fleet.replicas[0]!
  const events = new TypedEventEmitter<Libp2pEvents>()
  const cm = new FakeConnections()
  const svc = new AdmissionService(
    {
      registrar: { handle: async () => {}, unhandle: async () => {} },
      connectionManager: cm,
      events
    },
    {
      replica,
      control: new AdmissionControl(replica),
      limits: DEFAULT_LIMITS,
      counters: new MeshCounters(),
      bootstrap: new PeerSet(),
      graceMs: 100
    }
  )
  await svc.beforeStart()
  await svc.start()
  const admitted: string[] = []
  const dismissed: string[] = []
  svc.addEventListener('peer:admitted', e => admitted.push(e.detail.toString()))
  svc.addEventListener('peer:dismissed', e => dismissed.push(e.detail.toString()))
  const connect = (p: PeerId): void => {
    cm.connected.add(p)
    events.safeDispatchEvent('peer:connect', { detail: p })
  }
  try {
    const node = peerOf(fleet.nodes[0]!)
    const stranger = peerIdFromPrivateKey(await libp2pKeyPair('Ed25519'))
    const deviceKey = generateKeyPair()
    const device = peerOf(deviceKey)
    connect(node)
    connect(stranger)
    connect(device)
    assert.deepEqual(admitted, [node.toString()])
    assert.equal(svc.admissionOf(node), 'node')

    // The device is enrolled (an admin writes the devices document) while it waits.
    const admin = fleet.signer(0, fleet.admins[0]!)
    const devices = await replica.open(DEVICES_DOC)
    await devices.change(admin, d => {
      d.devices = { [toHex(deviceKey.publicKey)]: { name: 'till-9', labels: { site: 'x' } } }
    })
    await waitFor('the device to be admitted', () => admitted.includes(device.toString()), 5000)
    await waitFor('the stranger to be hung up on', () => cm.hungUp.includes(stranger.toString()))
    assert.ok(!cm.hungUp.includes(device.toString()), 'the enrolled device stays')

    // Revoked: dismissed, and hung up on after the grace period.
    await devices.change(admin, d => {
      ;(d.devices as Record<string, Record<string, unknown>>)[toHex(deviceKey.publicKey)]!.revoked =
        true
    })
    await waitFor('the device to be dismissed', () => dismissed.includes(device.toString()), 5000)
    await waitFor('the device to be hung up on', () => cm.hungUp.includes(device.toString()))
    assert.equal(svc.mayServe(device), false)

    // Invalid data: banned and hung up on, and said so.
    const rejected = new Promise<string>(resolve =>
      svc.addEventListener('rejected', e => resolve(e.detail.error), { once: true })
    )
    svc.reject(node, new ProtocolViolationError('test'))
    assert.equal(await rejected, 'ProtocolViolationError')
    assert.ok(svc.isBanned(node))
    assert.ok(cm.hungUp.includes(node.toString()))
  } finally {
    await svc.stop()
  }
})
