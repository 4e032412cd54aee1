/**
 * The connection keeper (`mesh/connection-keeper.ts`) on its own, over a fake connection manager:
 * a bootstrap peer that does not answer is redialled with a growing back-off that stays bounded,
 * so it is reached soon after it comes back; a banned or revoked peer is never dialled; once a
 * sync stream ran with a peer, losing it redials at once; peers learned from status records are
 * dialled at start, up to the number of extra connections wanted, enrolled ones only, at random.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { TypedEventEmitter } from '@libp2p/interface'
import type { Connection, Libp2pEvents, PeerId } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { PeerSet } from '@libp2p/peer-collections'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import { ConnectionKeeper } from '../mesh/connection-keeper.ts'
import { DEFAULT_LIMITS } from '../mesh/limits.ts'
import type { StatusEvents } from '../mesh/status-service.ts'
import type { SyncEvents } from '../mesh/sync-service.ts'
import type { StatusRecord } from '../mesh/types.ts'
import { waitFor } from './fixtures/wait.ts'

const newPeerId = async (): Promise<PeerId> =>
  peerIdFromPrivateKey(await generateKeyPair('Ed25519'))

/** Dials to addresses: when each was tried; which peers answer. */
class FakeConnections {
  readonly attempts = new Map<string, number[]>()
  readonly up = new PeerSet()
  readonly connected = new PeerSet()
  getConnections(peer?: PeerId): Connection[] {
    if (peer === undefined) {
      return [...this.connected].map(remotePeer => ({ remotePeer }) as Connection)
    }
    return this.connected.has(peer) ? [{ remotePeer: peer } as Connection] : []
  }
  async openConnection(to: Multiaddr | Multiaddr[] | PeerId): Promise<Connection> {
    const target = Array.isArray(to) ? (to[0] as Multiaddr) : to
    const addr = target.toString()
    const list = this.attempts.get(addr) ?? []
    list.push(performance.now())
    this.attempts.set(addr, list)
    const id = (target as Multiaddr).getComponents().findLast(c => c.name === 'p2p')?.value
    const peer = [...this.up].find(p => p.toString() === id)
    if (peer === undefined) throw new Error('connection refused')
    this.connected.add(peer)
    return {} as Connection
  }
}

class FakeStatus extends TypedEventEmitter<StatusEvents> {
  held: StatusRecord[] = []
  records(): StatusRecord[] {
    return this.held
  }
}

interface Who {
  banned?: PeerSet
  revoked?: PeerSet
  nodes?: PeerSet
  records?: StatusRecord[]
  extraPeers?: number
}

async function keeper(
  peers: PeerId[],
  banned: PeerSet,
  redialMinMs: number,
  redialMaxMs: number,
  who: Who = {}
) {
  const cm = new FakeConnections()
  const events = new TypedEventEmitter<Libp2pEvents>()
  const sync = new TypedEventEmitter<SyncEvents>()
  const status = new FakeStatus()
  status.held = who.records ?? []
  const bootstrap = peers.map((peerId, i) => ({
    peerId,
    addr: multiaddr(`/ip4/127.0.0.1/tcp/${4000 + i}/p2p/${peerId.toString()}`)
  }))
  const k = new ConnectionKeeper(
    {
      peerId: await newPeerId(),
      connectionManager: cm,
      events,
      sync,
      status,
      admission: {
        isBanned: p => banned.has(p),
        isNode: p => who.nodes?.has(p) ?? false,
        isRevoked: p => who.revoked?.has(p) ?? false
      }
    },
    {
      bootstrap,
      limits: DEFAULT_LIMITS,
      redialMinMs,
      redialMaxMs,
      ...(who.extraPeers !== undefined ? { extraPeers: who.extraPeers } : {})
    }
  )
  await k.start()
  k.afterStart()
  const tries = (i: number): number[] => cm.attempts.get(bootstrap[i]!.addr.toString()) ?? []
  return { k, cm, events, sync, tries }
}

test('an unanswering bootstrap peer is redialled with a growing, bounded back-off; a banned one never', async () => {
  const [quiet, banned] = [await newPeerId(), await newPeerId()]
  const min = 20
  const max = 160
  const { k, cm, tries } = await keeper([quiet, banned], new PeerSet([banned]), min, max)
  try {
    await waitFor('seven attempts', () => tries(0).length >= 7, 10_000)
    const t = tries(0)
    // Each wait is at least the back-off due then (timers only ever fire late): 20, 40, 80, 160, 160…
    for (let i = 1; i < t.length; i++) {
      const due = Math.min(min * 2 ** (i - 1), max)
      assert.ok(t[i]! - t[i - 1]! >= due - 5, `wait ${i} was ${t[i]! - t[i - 1]!} ms, due ${due}`)
    }
    // Capped: the peer comes back and is reached within the cap (plus slack for a loaded machine).
    cm.up.add(quiet)
    const before = performance.now()
    await waitFor('the peer to be reached', () => cm.connected.has(quiet), 10_000)
    assert.ok(performance.now() - before < max + 1000)
    assert.deepEqual(tries(1), [], 'the banned peer was never dialled')
  } finally {
    await k.stop()
  }
})

test('a peer that ran a sync stream is redialled at once when it goes, not after the back-off it had', async () => {
  const peer = await newPeerId()
  const { k, cm, events, sync, tries } = await keeper([peer], new PeerSet(), 20, 60_000)
  try {
    await waitFor('seven failed attempts', () => tries(0).length >= 7, 10_000)
    cm.up.add(peer)
    // Its back-off is now over 2 s; the connection and a sync stream come up.
    await waitFor('connected', () => cm.connected.has(peer), 10_000)
    sync.safeDispatchEvent('stream:open', { detail: { peerId: peer } as never })
    // The link drops.
    cm.connected.delete(peer)
    const n = tries(0).length
    events.safeDispatchEvent('peer:disconnect', { detail: peer })
    const before = performance.now()
    await waitFor('redialled', () => tries(0).length > n, 10_000)
    assert.ok(performance.now() - before < 1000, 'redialled within a second')
  } finally {
    await k.stop()
  }
})

const recordOf = (peer: PeerId, port: number): StatusRecord => ({
  node: '',
  peerId: peer.toString(),
  seq: 1,
  body: {},
  receivedAt: Date.now(),
  stale: false,
  addresses: [`/ip4/10.0.0.1/tcp/${port}`]
})

test('peers learned from status records are dialled at start, enrolled ones only, as many as wanted; a revoked bootstrap peer never', async () => {
  const enrolled = await Promise.all(Array.from({ length: 6 }, () => newPeerId()))
  const [stranger, banned, revoked, down] = [
    await newPeerId(),
    await newPeerId(),
    await newPeerId(),
    await newPeerId()
  ]
  const records = [...enrolled, stranger, banned].map((p, i) => recordOf(p, 5000 + i))
  const { k, cm, tries } = await keeper([revoked, down], new PeerSet([banned]), 20, 100, {
    nodes: new PeerSet([...enrolled, banned, revoked]),
    revoked: new PeerSet([revoked]),
    records,
    extraPeers: 3
  })
  try {
    for (const p of [...enrolled, stranger, banned]) cm.up.add(p)
    await waitFor('three learned peers to be connected', () => cm.connected.size >= 3, 5000)
    // More rounds run (the bootstrap peer that is down is tried again each time its back-off
    // is up); the count stays at what is wanted.
    const before = tries(1).length
    await waitFor('three more rounds', () => tries(1).length >= before + 3, 5000)
    assert.equal(k.knownPeers, 8)
    assert.equal(cm.connected.size, 3)
    for (const p of cm.connected) {
      assert.ok(
        enrolled.some(e => e.equals(p)),
        'an enrolled peer'
      )
    }
    assert.deepEqual(tries(0), [], 'the revoked bootstrap peer was never dialled')
    const dialled = [...cm.attempts.keys()]
    assert.ok(
      !dialled.some(a => a.includes(stranger.toString())),
      'not a peer that is not enrolled'
    )
    assert.ok(!dialled.some(a => a.includes(banned.toString())), 'not a banned one')
  } finally {
    await k.stop()
  }
})
