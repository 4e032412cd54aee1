/**
 * The artifact protocol between mesh nodes: an enrolled node learns which chunks a peer holds and
 * gets its manifest and chunks; a stranger and a viewer session get nothing; a request the
 * holder cannot answer is "not held", not an error that bans anyone.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { generateKeyPair } from '../crdt/keys.ts'
import { Replica } from '../crdt/replica.ts'
import { MemoryStore } from '../crdt/store.ts'
import { createBrowserMesh } from '../mesh/browser.ts'
import {
  ARTIFACT_PROTOCOL,
  decodeBodyPieces,
  encodeArtifactRequest,
  MAX_REPLY_PIECES
} from '../mesh/artifact-protocol.ts'
import { encodeFrame } from '../mesh/frames.ts'
import type { ArtifactHolder } from '../mesh/types.ts'
import { ed, makeFleet } from './fixtures/fleet.ts'
import { chunkBuffer, startNode, TEST_LIMITS } from './fixtures/mesh-node.ts'
import { waitFor } from './fixtures/wait.ts'
import { collect, openStream, rawPeer } from './fixtures/mesh-raw-peer.ts'

const DIGEST = `sha256:${'12'.repeat(32)}`
const OTHER = `sha256:${'34'.repeat(32)}`

test('artifacts: enrolled peers get chunks, strangers and viewers get nothing', async () => {
  const fleet = await makeFleet({ nodes: 2, replicas: 0, label: 'mesh-artifacts' })
  // The last chunk spans several transport messages: it arrives, and is handed on, in pieces.
  const chunks = [randomBytes(1000), randomBytes(1000), randomBytes(300_000)]
  const manifest = randomBytes(200)
  const holder: ArtifactHolder = {
    have: d => (d === DIGEST ? { bits: Uint8Array.of(0b101) } : undefined),
    manifest: d => (d === DIGEST ? manifest : undefined),
    chunk: async (d, i) => (d === DIGEST && i !== 1 ? chunks[i] : undefined)
  }
  const d = await startNode(fleet, fleet.nodes[0]!, {
    listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws'],
    artifacts: holder
  })
  const tcpAddr = d.mesh.addresses().find(a => !a.includes('/ws'))!
  const wsAddr = d.mesh.addresses().find(a => a.includes('/ws'))!
  const e = await startNode(fleet, fleet.nodes[1]!, { bootstrap: [tcpAddr] })
  try {
    const signal = AbortSignal.timeout(10_000)
    const src = await waitFor('the enrolled peer as a source', () =>
      e.mesh.artifacts.sources().find(s => s.id === d.mesh.peerId)
    )
    const have = await src.have(DIGEST, signal)
    assert.deepEqual(have?.all !== true && [...(have?.bits ?? [])], [0b101])
    assert.equal(await src.have(OTHER, signal), undefined)
    assert.deepEqual(Buffer.from((await src.manifest(DIGEST, signal))!), manifest)
    assert.equal(await src.manifest(OTHER, signal), undefined)
    assert.deepEqual(chunkBuffer(await src.chunk(DIGEST, 2, signal)), chunks[2])
    await assert.rejects(src.chunk(DIGEST, 1, signal), { name: 'SessionRefusedError' })
    assert.equal(d.mesh.metrics().peersBanned, 0, 'asking for what is not held bans no one')
    assert.equal(e.mesh.metrics().peersBanned, 0)

    // A stranger: its stream is reset before anything is read or sent.
    const stranger = await rawPeer(generateKeyPair())
    const s = await openStream(stranger, tcpAddr, ARTIFACT_PROTOCOL).catch(() => undefined)
    if (s !== undefined) {
      try {
        s.send(encodeFrame(encodeArtifactRequest({ kind: 'chunk', digest: DIGEST, index: 0 })))
      } catch {
        // Already reset: as it should be.
      }
      assert.equal((await collect(s, 1500)).bytes, 0, 'a stranger received no bytes')
    }
    await stranger.stop()

    // A viewer session (the dashboard) sees the daemon as a node, but is served nothing.
    const replica = await Replica.open({ store: new MemoryStore(), ed, genesis: fleet.genesis })
    const viewer = await createBrowserMesh({
      replica,
      identity: generateKeyPair(),
      bootstrap: [wsAddr],
      credential: { viewerToken: d.mesh.issueViewerToken() },
      limits: TEST_LIMITS
    })
    await viewer.start()
    try {
      const vsrc = await waitFor('the daemon to be known to the viewer', () =>
        viewer.artifacts.sources().find(x => x.id === d.mesh.peerId)
      )
      await assert.rejects(vsrc.have(DIGEST, AbortSignal.timeout(5000)))
      await assert.rejects(vsrc.chunk(DIGEST, 0, AbortSignal.timeout(5000)))
    } finally {
      await viewer.stop()
    }
  } finally {
    await e.mesh.stop()
    await d.mesh.stop()
  }
})

test('artifacts: a saturated seed answers busy for a chunk it sent to a connected peer; announcements reach the holder', async () => {
  const fleet = await makeFleet({ nodes: 3, replicas: 0, label: 'mesh-artifacts-seed' })
  const chunk = randomBytes(1000)
  let open = (): void => {}
  const gate = new Promise<void>(resolve => {
    open = resolve
  })
  const announced: Array<{ peer: string; indices: number[] }> = []
  let asked = 0
  const holder: ArtifactHolder = {
    have: d => (d === DIGEST ? { all: true } : undefined),
    manifest: () => undefined,
    // The upload is saturated: every reply waits for the gate.
    chunk: async d => {
      asked++
      await gate
      return d === DIGEST ? chunk : undefined
    },
    announced: (peer, d, indices) => {
      if (d === DIGEST) announced.push({ peer, indices })
    }
  }
  const seed = await startNode(fleet, fleet.nodes[0]!, { artifacts: holder })
  const addr = seed.mesh.addresses()[0]!
  const a = await startNode(fleet, fleet.nodes[1]!, { bootstrap: [addr] })
  const b = await startNode(fleet, fleet.nodes[2]!, { bootstrap: [addr] })
  try {
    const signal = AbortSignal.timeout(15_000)
    const fromA = await waitFor('the seed as a source of a', () =>
      a.mesh.artifacts.sources().find(s => s.id === seed.mesh.peerId)
    )
    const fromB = await waitFor('the seed as a source of b', () =>
      b.mesh.artifacts.sources().find(s => s.id === seed.mesh.peerId)
    )
    // a asks for chunks 0-3: the seed's upload queue is full.
    const toA = [0, 1, 2, 3].map(i => fromA.chunk(DIGEST, i, signal))
    await waitFor("a's requests to reach the seed", () => asked === 4)
    // b asks for chunk 0, gone to a (still connected): busy.
    assert.equal(await fromB.chunk(DIGEST, 0, signal), 'busy')
    // A chunk not sent to anyone yet is served, and so is chunk 0 when b insists.
    const fresh = fromB.chunk(DIGEST, 5, signal)
    const insisted = fromB.chunk(DIGEST, 0, signal, { insist: true })
    // a announces what it received; the holder hears it with a's id.
    await fromA.announce(DIGEST, [0, 1], signal)
    open()
    for (const c of [...(await Promise.all(toA)), await fresh, await insisted]) {
      assert.deepEqual(chunkBuffer(c), chunk)
    }
    assert.deepEqual(announced, [{ peer: a.mesh.peerId, indices: [0, 1] }])
    // Not saturated any more: chunk 1 (gone to a) is served to b.
    assert.deepEqual(chunkBuffer(await fromB.chunk(DIGEST, 1, signal)), chunk)
    assert.equal(seed.mesh.metrics().peersBanned, 0)
  } finally {
    await b.mesh.stop()
    await a.mesh.stop()
    await seed.mesh.stop()
  }
})

test('artifacts: a reply read in pieces is its body in pieces, and a reply in too many is joined', () => {
  const body = randomBytes(5000)
  const join = (p: Uint8Array[] | 'busy' | undefined): Buffer =>
    Buffer.concat(Array.isArray(p) ? p : [])
  // The status byte alone in the first piece, or at the start of a longer one.
  assert.deepEqual(
    join(decodeBodyPieces([Uint8Array.of(0), body.subarray(0, 10), body.subarray(10)], 'chunk')),
    body
  )
  assert.deepEqual(join(decodeBodyPieces([Buffer.concat([Uint8Array.of(0), body])], 'chunk')), body)
  assert.equal(decodeBodyPieces([Uint8Array.of(1)], 'chunk'), undefined)
  assert.equal(decodeBodyPieces([Uint8Array.of(2)], 'chunk'), 'busy')
  assert.throws(() => decodeBodyPieces([Uint8Array.of(2), body], 'chunk'), {
    name: 'MalformedMessageError'
  })
  assert.throws(() => decodeBodyPieces([], 'chunk'), { name: 'MalformedMessageError' })
  // A peer that sends a chunk one byte per message: joined, so hashing it is one call, not 5000.
  const tiny = [Uint8Array.of(0), ...[...body].map(b => Uint8Array.of(b))]
  const joined = decodeBodyPieces(tiny, 'chunk')
  assert.ok(tiny.length > MAX_REPLY_PIECES)
  assert.equal(joined?.length, 1)
  assert.deepEqual(join(joined), body)
})

test('artifacts: more requests at once to one peer than it takes streams wait their turn, none fails', async () => {
  const fleet = await makeFleet({ nodes: 2, replicas: 0, label: 'mesh-artifacts-many' })
  const chunk = randomBytes(100_000)
  // Every chunk reply waits until all the requests asked so far are in: 12 chunk requests and
  // 3 "which chunks" polls (two fetches of two artifacts and their polls, say) at once.
  let release: () => void = () => {}
  const gate = new Promise<void>(resolve => {
    release = resolve
  })
  const holder: ArtifactHolder = {
    have: () => ({ all: true }),
    manifest: () => undefined,
    chunk: async () => {
      await gate
      return chunk
    }
  }
  const d = await startNode(fleet, fleet.nodes[0]!, { artifacts: holder })
  const e = await startNode(fleet, fleet.nodes[1]!, { bootstrap: d.mesh.addresses() })
  try {
    const signal = AbortSignal.timeout(20_000)
    const src = await waitFor('the enrolled peer as a source', () =>
      e.mesh.artifacts.sources().find(s => s.id === d.mesh.peerId)
    )
    const asks = [
      ...Array.from({ length: 12 }, async (_, i) =>
        chunkBuffer(await src.chunk(DIGEST, i, signal))
      ),
      ...Array.from({ length: 3 }, async () => src.have(OTHER, signal))
    ]
    setTimeout(release, 500)
    const results = await Promise.allSettled(asks)
    const failed = results.flatMap(r =>
      r.status === 'rejected' ? [(r.reason as Error).message] : []
    )
    assert.deepEqual(failed, [], 'no request failed')
    for (const r of results.slice(0, 12)) {
      assert.deepEqual(r.status === 'fulfilled' && r.value, chunk)
    }
  } finally {
    await e.mesh.stop()
    await d.mesh.stop()
  }
})
