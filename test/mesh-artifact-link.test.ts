/**
 * Artifact links (mesh/artifact-link.ts): chunks over a TLS connection keyed over the mesh.
 * An enrolled fetcher's chunks move to a link once it is open; a stranger is offered none; an
 * offer is good once and only with its key; a holder bans an enrolled peer that sends on a link
 * what links do not carry, and stops serving one whose mesh connection is gone; idle and garbage
 * sockets on the link port lock no honest fetcher out; a holder with `artifactPort: false` is
 * asked over streams, as an older daemon is.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { connect as tcpConnect, createServer, type AddressInfo, type Socket } from 'node:net'
import { connect, createServer as createTlsServer, type TLSSocket } from 'node:tls'
import { generateKeyPair } from '../crdt/keys.ts'
import {
  ARTIFACT_LINK_PROTOCOL,
  decodeLinkOffer,
  encodeArtifactRequest,
  type ArtifactRequest,
  type LinkOffer
} from '../mesh/artifact-protocol.ts'
import { tlsArtifactLinks } from '../mesh/artifact-link.ts'
import { LINK_STALL_MS, MAX_LINK_SOCKETS } from '../mesh/limits.ts'
import { encodeFrame, readOneFrame } from '../mesh/frames.ts'
import type { ArtifactHolder, ArtifactSource } from '../mesh/types.ts'
import { makeFleet } from './fixtures/fleet.ts'
import { chunkBuffer, startNode, type TestNode } from './fixtures/mesh-node.ts'
import { collect, openStream, rawPeer } from './fixtures/mesh-raw-peer.ts'
import { waitFor } from './fixtures/wait.ts'

const DIGEST = `sha256:${'56'.repeat(32)}`
const CHUNK = 1024 * 1024
const chunks = Array.from({ length: 6 }, () => randomBytes(CHUNK))
const manifest = randomBytes(2100)
const holder: ArtifactHolder = {
  have: d => (d === DIGEST ? { all: true } : undefined),
  manifest: d => (d === DIGEST ? manifest : undefined),
  chunk: async (d, i, into) => {
    const c = d === DIGEST ? chunks[i] : undefined
    if (c === undefined || into === undefined || into.length < c.length) return c
    into.set(c)
    return into.subarray(0, c.length)
  }
}

async function allChunks(src: ArtifactSource): Promise<void> {
  const signal = AbortSignal.timeout(20_000)
  const got = await Promise.all(chunks.map((_, i) => src.chunk(DIGEST, i, signal)))
  got.forEach((c, i) => assert.ok(chunkBuffer(c).equals(chunks[i]!), `chunk ${i} arrived whole`))
}

async function pair(holderOpts: { artifactPort?: number | false } = {}): Promise<{
  fleet: Awaited<ReturnType<typeof makeFleet>>
  d: TestNode
  e: TestNode
  tcpAddr: string
  src: ArtifactSource
}> {
  const fleet = await makeFleet({ nodes: 3, replicas: 0, label: 'mesh-artifact-link' })
  const d = await startNode(fleet, fleet.nodes[0]!, { artifacts: holder, ...holderOpts })
  const tcpAddr = d.mesh.addresses()[0]!
  const e = await startNode(fleet, fleet.nodes[1]!, { bootstrap: [tcpAddr] })
  const src = await waitFor('the holder as a source', () =>
    e.mesh.artifacts.sources().find(s => s.id === d.mesh.peerId)
  )
  return { fleet, d, e, tcpAddr, src }
}

/** Ask the holder at `addr` for a link offer over the mesh, as `peer`. */
async function askOffer(
  peer: Awaited<ReturnType<typeof rawPeer>>,
  addr: string
): Promise<LinkOffer | undefined> {
  const s = await openStream(peer, addr, ARTIFACT_LINK_PROTOCOL)
  s.send(encodeFrame(Uint8Array.of(1)))
  return decodeLinkOffer(await readOneFrame(s, 64, 5000))
}

/** A TLS handshake with `offer` (or another key); resolves with the socket, rejects if refused. */
function openTls(offer: LinkOffer, key: Uint8Array = offer.key): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = connect({
      host: '127.0.0.1',
      port: offer.port,
      ciphers: 'PSK-AES128-GCM-SHA256',
      maxVersion: 'TLSv1.2',
      pskCallback: () => ({ psk: Buffer.from(key), identity: offer.identity }),
      checkServerIdentity: () => undefined
    })
    s.once('secureConnect', () => resolve(s))
    s.once('error', reject)
    s.once('close', () => reject(new Error('closed before the handshake')))
  })
}

function send(s: TLSSocket, req: ArtifactRequest): void {
  s.write(encodeFrame(encodeArtifactRequest(req)))
}

/** Wait for the socket to close; resolves with the bytes it received first. */
function closed(s: TLSSocket | Socket, ms = 10_000): Promise<number> {
  return new Promise((resolve, reject) => {
    let n = 0
    s.on('data', (b: Buffer) => {
      n += b.length
    })
    const timer = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms)
    s.once('close', () => {
      clearTimeout(timer)
      resolve(n)
    })
  })
}

test('artifact links: an enrolled fetcher gets its chunks over a link; strangers, stale offers and wrong keys get none', async () => {
  const { fleet, d, e, tcpAddr, src } = await pair()
  const hostile = await rawPeer(fleet.nodes[2]!)
  const stranger = await rawPeer(generateKeyPair())
  try {
    // The first request goes over a stream and starts the link; the rest go over the link.
    chunkBuffer(await src.chunk(DIGEST, 0, AbortSignal.timeout(10_000)))
    await waitFor('the link to open', () => e.mesh.metrics().artifactLinksOut === 1 || undefined)
    // A manifest is the caller's to keep: the chunks that come after it into the link's reused
    // buffers leave it as it was.
    const kept = (await src.manifest(DIGEST, AbortSignal.timeout(5000)))!
    await allChunks(src)
    assert.ok(Buffer.from(kept).equals(manifest), 'the manifest is unchanged by later replies')
    assert.ok(
      e.mesh.metrics().artifactChunksOverLinks >= chunks.length,
      'chunks came over the link'
    )
    assert.equal(d.mesh.metrics().artifactLinksIn, 1)

    // A stranger is offered nothing: its stream is reset unanswered.
    const s = await openStream(stranger, tcpAddr, ARTIFACT_LINK_PROTOCOL).catch(() => undefined)
    if (s !== undefined) {
      try {
        s.send(encodeFrame(Uint8Array.of(1)))
      } catch {
        // Already reset: as it should be.
      }
      assert.equal((await collect(s, 1500)).bytes, 0, 'a stranger received no offer')
    }

    // An offer with another key fails the handshake, and is spent: its own key fails after.
    const offer = (await askOffer(hostile, tcpAddr))!
    assert.ok(offer.port > 0)
    await assert.rejects(openTls(offer, randomBytes(32)))
    await assert.rejects(openTls(offer), 'an offer is good for one handshake')
    // Unknown identities are refused too.
    await assert.rejects(openTls({ ...offer, identity: randomBytes(16).toString('hex') }))

    // With a fresh offer and its key the link works, for chunks and manifests only.
    const good = await openTls((await askOffer(hostile, tcpAddr))!)
    const got = closed(good)
    send(good, { kind: 'have', digest: DIGEST })
    assert.equal(await got, 0, 'a have request over a link is answered by hanging up')
    await waitFor(
      'the holder to ban the peer',
      () => d.mesh.metrics().peersBanned === 1 || undefined
    )

    // The honest fetcher's link was never disturbed.
    await allChunks(src)
    assert.equal(e.mesh.metrics().artifactLinksOut, 1)
    assert.equal(e.mesh.metrics().peersBanned, 0)
  } finally {
    await hostile.stop()
    await stranger.stop()
    await e.mesh.stop()
    await d.mesh.stop()
  }
})

test('artifact links: a peer whose mesh connection is gone is served nothing more on its link', async () => {
  const { fleet, d, e, tcpAddr } = await pair()
  const peer = await rawPeer(fleet.nodes[2]!)
  try {
    const link = await openTls((await askOffer(peer, tcpAddr))!)
    // Served while connected.
    const first = new Promise<number>(resolve => {
      let n = 0
      const onData = (b: Buffer): void => {
        n += b.length
        if (n >= CHUNK) {
          link.off('data', onData)
          resolve(n)
        }
      }
      link.on('data', onData)
    })
    send(link, { kind: 'chunk', digest: DIGEST, index: 1 })
    assert.ok((await first) >= CHUNK)
    await peer.stop()
    await waitFor(
      'the holder to see the peer gone',
      () => d.mesh.peers().every(p => p.peerId !== peer.peerId.toString()) || undefined
    )
    const ended = closed(link)
    send(link, { kind: 'chunk', digest: DIGEST, index: 2 })
    assert.equal(await ended, 0, 'no chunk after the mesh connection ended')
  } finally {
    await peer.stop()
    await e.mesh.stop()
    await d.mesh.stop()
  }
})

test('artifact links: idle and garbage sockets on the link port lock no honest fetcher out', async () => {
  const { fleet, d, e, tcpAddr, src } = await pair()
  const peer = await rawPeer(fleet.nodes[2]!)
  const sockets: Socket[] = []
  try {
    const { port } = (await askOffer(peer, tcpAddr))!
    // More idle sockets than the server holds, and more sending garbage as fast as they can.
    const opened = (n: number): Promise<void> =>
      Promise.all(
        Array.from(
          { length: n },
          () =>
            new Promise<void>(resolve => {
              const s = tcpConnect(port, '127.0.0.1', () => resolve())
              s.on('error', () => resolve())
              sockets.push(s)
            })
        )
      ).then(() => {})
    await opened(MAX_LINK_SOCKETS + 16)
    const garbage = randomBytes(64 * 1024)
    const until = performance.now() + 3000
    const lag = monitorEventLoopDelay({ resolution: 10 })
    lag.enable()
    const flood = (async () => {
      let rounds = 0
      while (performance.now() < until && rounds++ < 200) {
        await opened(8)
        for (const s of sockets.slice(-8)) if (!s.destroyed) s.write(garbage)
        await new Promise(resolve => setImmediate(resolve))
      }
    })()
    // The honest fetcher gets every chunk meanwhile, over its link or over streams.
    await allChunks(src)
    await flood
    lag.disable()
    await allChunks(src)
    // Holder and fetcher share this process: neither's event loop was held up by the flood.
    const worst = lag.max / 1e6
    assert.ok(worst < 1000, `the event loop stalled for ${worst.toFixed(0)} ms`)
    assert.equal(e.mesh.metrics().peersBanned, 0)
    assert.equal(d.mesh.metrics().peersBanned, 0)
  } finally {
    for (const s of sockets) s.destroy()
    await peer.stop()
    await e.mesh.stop()
    await d.mesh.stop()
  }
})

test('artifact links: a holder that offers none (artifactPort false, or an older daemon) is asked over streams', async () => {
  const { fleet, d, e, tcpAddr, src } = await pair({ artifactPort: false })
  const peer = await rawPeer(fleet.nodes[2]!)
  try {
    await allChunks(src)
    await allChunks(src)
    assert.equal(e.mesh.metrics().artifactLinksOut, 0)
    assert.equal(e.mesh.metrics().artifactChunksOverLinks, 0)
    assert.ok(e.mesh.metrics().artifactChunksOverStreams >= 2 * chunks.length)
    await assert.rejects(askOffer(peer, tcpAddr), 'the link protocol is not spoken')
    assert.equal(e.mesh.metrics().peersBanned, 0)
  } finally {
    await peer.stop()
    await e.mesh.stop()
    await d.mesh.stop()
  }
})

test('artifact links: served on the port the config names; a taken port stops the start with a named error', async () => {
  const fleet = await makeFleet({ nodes: 3, replicas: 0, label: 'mesh-artifact-link-port' })
  const taken = createServer()
  await new Promise<void>(resolve => taken.listen(0, '127.0.0.1', resolve))
  const busy = (taken.address() as AddressInfo).port
  const free = createServer()
  await new Promise<void>(resolve => free.listen(0, '127.0.0.1', resolve))
  const port = (free.address() as AddressInfo).port
  await new Promise(resolve => free.close(resolve))
  const d = await startNode(fleet, fleet.nodes[0]!, { artifacts: holder, artifactPort: port })
  const peer = await rawPeer(fleet.nodes[2]!)
  try {
    assert.equal((await askOffer(peer, d.mesh.addresses()[0]!))!.port, port)
    await assert.rejects(
      startNode(fleet, fleet.nodes[1]!, { artifacts: holder, artifactPort: busy }),
      (err: Error) => {
        assert.equal(err.name, 'ArtifactLinkListenError')
        assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${busy}`))
        assert.equal((err.cause as { code?: string }).code, 'EADDRINUSE')
        return true
      }
    )
  } finally {
    await peer.stop()
    await d.mesh.stop()
    await new Promise(resolve => taken.close(resolve))
  }
})

/** A holder's side by hand: a PSK server with `offer`'s key that does what `serve` says. */
async function fakeHolder(
  serve: (socket: TLSSocket) => void
): Promise<{ offer: LinkOffer; close(): Promise<void> }> {
  const key = randomBytes(32)
  const identity = randomBytes(16).toString('hex')
  const server = createTlsServer(
    {
      ciphers: 'PSK-AES128-GCM-SHA256',
      maxVersion: 'TLSv1.2',
      pskCallback: (_s, id) => (id === identity ? key : null)
    },
    serve
  )
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    offer: { port, identity, key },
    close: () => new Promise(resolve => server.close(() => resolve()))
  }
}

test('artifact links: a link gone silent fails its requests within seconds; one kept alive while the holder works does not', async () => {
  const chunkReq = { kind: 'chunk', digest: DIGEST, index: 0 } as const
  // Silent: takes the request, never answers (a firewall or a NAT dropping the link).
  const sockets: TLSSocket[] = []
  const silent = await fakeHolder(s => sockets.push(s))
  // Slow: keep-alives every second for 7 s, then the reply (a holder held by its serve rate).
  const reply = Buffer.concat([Buffer.of(0x81, 0x80, 0x01, 0), Buffer.alloc(16384, 7)])
  const slow = await fakeHolder(s => {
    sockets.push(s)
    s.once('data', () => {
      const beat = setInterval(() => s.write(Uint8Array.of(0)), 1000)
      setTimeout(() => {
        clearInterval(beat)
        s.write(reply)
      }, 7000)
    })
  })
  try {
    const quiet = await tlsArtifactLinks.open(
      '127.0.0.1',
      silent.offer,
      10_000,
      AbortSignal.timeout(5000)
    )
    let stalled = false
    quiet.onClose = (_fault, s) => {
      stalled = s
    }
    const t0 = performance.now()
    await assert.rejects(quiet.request(chunkReq, AbortSignal.timeout(60_000))!, {
      name: 'ExchangeTimeoutError'
    })
    const waited = performance.now() - t0
    assert.ok(waited < LINK_STALL_MS + 3000, `gave up after ${waited.toFixed(0)} ms`)
    assert.ok(stalled, 'reported as stalled')
    assert.equal(quiet.open, false)

    const kept = await tlsArtifactLinks.open(
      '127.0.0.1',
      slow.offer,
      10_000,
      AbortSignal.timeout(5000)
    )
    const got = await kept.request(chunkReq, AbortSignal.timeout(20_000))!
    assert.equal(got.bytes.length, 16385, 'the reply came, after 7 s of keep-alives')
    got.release()
    kept.close()
  } finally {
    for (const s of sockets) s.destroy()
    await silent.close()
    await slow.close()
  }
})
