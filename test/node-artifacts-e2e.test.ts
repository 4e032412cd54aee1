/**
 * Artifacts over the mesh, four daemon processes on loopback (mDNS off):
 *
 * - n1 holds a 64 MiB artifact (`rhizome artifact add`); the config that names it was applied
 *   before anyone held it: every node reported it as waiting while the rest of its config applied.
 * - n2 reaches n1 only through a TCP proxy, cut mid-transfer and healed: the fetch resumes, no
 *   byte is fetched twice.
 * - n3 is SIGKILLed mid-transfer and restarted: it fetches only what it did not hold.
 * - The workload that uses the artifact starts on each node only once the artifact is complete.
 * - n3's copy is then corrupted on disk (a device serving garbage): n4, joining, bans it and
 *   completes from the honest peers.
 * - n5 has no network at all: a bundle exported with the artifact brings it the config and the
 *   artifact, and its workload runs; the same bundle with one byte flipped is refused whole.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { createHash, randomBytes } from 'node:crypto'
import { open, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { DaemonFleet, type RunningDaemon } from './fixtures/daemon-fleet.ts'
import { freePort, getJson, rhizome, stopAll } from './fixtures/node-harness.ts'
import { startProxy, type TcpProxy } from './fixtures/tcp-proxy.ts'
import { waitFor } from './fixtures/wait.ts'

const PASS = 'correct horse battery'
const NAMES = ['n1', 'n2', 'n3', 'n4', 'n5'] as const
const SIZE = 64 * 1024 * 1024
/** Fetch limit on n2, n3 and n4, so that a cut, a kill and a join land mid-transfer. */
const FETCH_RATE = 16 * 1024 * 1024
const APP = `
import { createHash } from 'node:crypto'
import { createReadStream, writeFileSync } from 'node:fs'
const h = createHash('sha256')
let size = 0
for await (const c of createReadStream(process.env.RHIZOME_ARTIFACT)) { h.update(c); size += c.length }
writeFileSync(process.env.OUT, h.digest('hex') + ' ' + size)
setInterval(() => {}, 1000)
`

interface Listed {
  digest: string
  held: number
  status: { state: string; peers: number; reason?: string }
}

describe('artifacts over the mesh (four processes)', { timeout: 240_000 }, () => {
  let dir: string
  let env: Record<string, string>
  let daemonFleet: DaemonFleet
  let ids: DaemonFleet['ids']
  let proxy: TcpProxy
  let digest: string
  let fileSha: string
  const d: Record<string, RunningDaemon> = {}
  const out = (n: string): string => join(dir, `out-${n}.txt`)

  const start = async (n: string): Promise<RunningDaemon> => {
    d[n] = await daemonFleet.start(n)
    return d[n]
  }
  const listed = async (n: string): Promise<Listed | undefined> =>
    (await getJson<Listed[]>(`${d[n]!.url}/api/artifacts`).catch(() => [])).find(
      a => a.digest === digest
    )
  const metric = async (n: string, name: string): Promise<number> => {
    const text = await (await fetch(`${d[n]!.url}/metrics`)).text()
    const m = new RegExp(`^${name} (\\d+)`, 'm').exec(text)
    return m === null ? NaN : Number(m[1])
  }
  const heldAtLeast = (n: string, bytes: number): Promise<Listed> =>
    waitFor(
      `${n} to hold ${bytes} bytes`,
      async () => {
        const a = await listed(n)
        return a !== undefined && a.held >= bytes ? a : undefined
      },
      60_000,
      20
    )
  const ranWithArtifact = async (n: string): Promise<string> => {
    try {
      return await waitFor(
        `${n}'s workload to run on the complete artifact`,
        async () => {
          const t = await readFile(out(n), 'utf8').catch(() => '')
          return t === '' ? undefined : t
        },
        60_000,
        200
      )
    } catch (err) {
      const tail = d[n]!.stderr.slice(-15).join('\n')
      throw new Error(
        `${(err as Error).message}; ${n} lists ${JSON.stringify(await listed(n))}\n${tail}`,
        { cause: err }
      )
    }
  }
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rhizome-art-e2e-'))
    env = { RHIZOME_PASSPHRASE: PASS }
    daemonFleet = await DaemonFleet.init(dir, 'art', NAMES, env)
    ids = daemonFleet.ids
    const p1 = await freePort()
    const p3 = await freePort()
    proxy = await startProxy(p1)
    const addr = (n: string, port: number): string =>
      `/ip4/127.0.0.1/tcp/${port}/p2p/${ids[n]!.peerId}`
    const writeConfig = (n: string, more: Record<string, unknown>): Promise<void> =>
      daemonFleet.writeConfig(n, { allowedRoots: ['/opt/rhizome'], ...more })
    await writeConfig('n1', { listen: [`/ip4/127.0.0.1/tcp/${p1}`] })
    // n2 listens nowhere and reaches n1 only through the proxy: cutting it cuts n2 off.
    await writeConfig('n2', {
      listen: [],
      bootstrap: [addr('n1', proxy.port)],
      artifactFetchRate: FETCH_RATE
    })
    await writeConfig('n3', {
      listen: [`/ip4/127.0.0.1/tcp/${p3}`],
      bootstrap: [addr('n1', p1)],
      artifactFetchRate: FETCH_RATE
    })
    await writeConfig('n4', {
      listen: [],
      bootstrap: [addr('n3', p3), addr('n1', p1)],
      artifactFetchRate: FETCH_RATE
    })
    // n5 listens nowhere and knows no peer: only a bundle reaches it.
    await writeConfig('n5', { listen: [], bootstrap: [] })
    await writeFile(join(dir, 'app.mjs'), APP)
    const bytes = randomBytes(SIZE)
    fileSha = createHash('sha256').update(bytes).digest('hex')
    await writeFile(join(dir, 'model.bin'), bytes)
  })

  after(async () => {
    await stopAll()
    await proxy?.close()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('reports an artifact no peer holds as waiting, and applies the rest of the config', async () => {
    await start('n1')
    await daemonFleet.enrol(d.n1!)
    await Promise.all([start('n2'), start('n3')])
    // The digest is known before anyone holds the file.
    const dg = await rhizome(['artifact', 'digest', join(dir, 'model.bin')], env)
    assert.equal(dg.code, 0, dg.stderr)
    digest = dg.stdout.trim()
    const nodes: Record<string, unknown> = {}
    for (const n of NAMES) nodes[n] = { workloads: { app: { env: { OUT: out(n) } } } }
    const r = await daemonFleet.apply(
      {
        fleet: {
          defaults: {
            files: {
              '/opt/rhizome/model.bin': { artifact: digest },
              '/opt/rhizome/motd': { content: 'applied\n' }
            },
            workloads: {
              app: { artifact: digest, command: [process.execPath, join(dir, 'app.mjs')] }
            }
          },
          nodes
        }
      },
      d.n1!
    )
    assert.equal(r.code, 0, r.stderr)
    for (const n of ['n1', 'n2', 'n3']) {
      await waitFor(
        `${n} to apply the plain file`,
        async () =>
          (await readFile(join(dir, `root-${n}`, 'opt/rhizome/motd'), 'utf8').catch(() => '')) ===
          'applied\n'
      )
      const a = await waitFor(`${n} to report the artifact waiting`, async () => {
        const x = await listed(n)
        return x?.status.state === 'waiting' && /no reachable peer/.test(x.status.reason ?? '')
          ? x
          : undefined
      })
      assert.match(a.status.reason ?? '', /no reachable peer/)
    }
    const status = await rhizome(['status', '--daemon', d.n1!.url], env)
    assert.match(status.stdout, /waiting/)
  })

  it('spreads a 64 MiB artifact to every node; a cut link and a SIGKILL resume where they were', async () => {
    const add = await rhizome(
      ['artifact', 'add', join(dir, 'model.bin'), '--name', 'model', '--daemon', d.n1!.url],
      env
    )
    assert.equal(add.code, 0, add.stderr)
    assert.match(add.stdout, new RegExp(digest))
    // n2: cut off a quarter of the way in, healed a moment later.
    await heldAtLeast('n2', SIZE / 4)
    proxy.cut()
    const atCut = (await listed('n2'))!.held
    assert.ok(atCut < SIZE, 'the cut came mid-transfer')
    // n3: killed a quarter of the way in.
    const before3 = await heldAtLeast('n3', SIZE / 4)
    d.n3!.proc.kill('SIGKILL')
    await d.n3!.stop()
    assert.ok(before3.held < SIZE, 'the kill came mid-transfer')
    proxy.heal()
    await start('n3')
    for (const n of ['n1', 'n2', 'n3']) {
      assert.equal((await ranWithArtifact(n)).trim(), `${fileSha} ${SIZE}`)
      assert.deepEqual(
        createHash('sha256')
          .update(await readFile(join(dir, `root-${n}`, 'opt/rhizome/model.bin')))
          .digest('hex'),
        fileSha
      )
    }
    // Nothing fetched twice: n2 fetched the artifact once over its cut link.
    assert.equal(await metric('n2', 'rhizome_artifact_bytes_fetched_total'), SIZE)
    assert.equal(await metric('n2', 'rhizome_artifact_bytes_refetched_total'), 0)
    // The restarted n3 fetched only what it did not hold when it was killed.
    const fetched3 = await metric('n3', 'rhizome_artifact_bytes_fetched_total')
    assert.ok(
      fetched3 <= SIZE - before3.held,
      `n3 fetched ${fetched3} after holding ${before3.held}`
    )
    // The workload started only once the artifact was complete.
    for (const n of ['n2', 'n3']) {
      const ev = d[n]!.events
      const complete = ev.findIndex(e => e.event === 'artifact.complete')
      const started = ev.findIndex(
        e => e.event === 'reconciled' && (e.started as string[]).includes('app')
      )
      assert.ok(
        complete >= 0 && started > complete,
        `${n}: complete at ${complete}, app started at ${started}`
      )
    }
  })

  it('cuts off a peer that serves corrupted chunks and completes from honest ones', async () => {
    // n3's copy rots on disk: one byte of every chunk flipped. It still serves it as its own.
    const blob = join(dir, 'data-n3', 'artifacts', 'b', digest.slice(7))
    const fh = await open(blob, 'r+')
    for (let o = 100; o < SIZE; o += 1024 * 1024) await fh.write(Uint8Array.of(0xee ^ o), 0, 1, o)
    await fh.close()
    const d4 = await start('n4')
    const banned = await d4.waitFor(
      e => e.event === 'peer.rejected' && e.peerId === ids.n3!.peerId,
      60_000,
      'n4 to ban n3'
    )
    assert.match(String(banned.reason), /does not match/)
    assert.equal((await ranWithArtifact('n4')).trim(), `${fileSha} ${SIZE}`)
    assert.ok((await metric('n4', 'rhizome_artifact_chunks_rejected_total')) >= 1)
  })

  it('brings an isolated node to the new version with a bundle that carries the artifact', async () => {
    const bundle = join(dir, 'site.bundle')
    const ex = await rhizome(
      ['bundle', 'export', '--with-artifacts', '--out', bundle, '--daemon', d.n1!.url],
      env
    )
    assert.equal(ex.code, 0, ex.stderr)
    assert.match(ex.stdout, /1 artifact\(s\) \(64\.0 MiB\)/)
    const d5 = await start('n5')
    // A copy damaged on the way (one flipped byte in the artifact's part): refused whole.
    const bad = join(dir, 'damaged.bundle')
    await writeFile(bad, await readFile(bundle))
    const fh = await open(bad, 'r+')
    const { size } = await fh.stat()
    // Flip the bits of one byte (writing a fixed value left the random artifact unchanged when
    // its byte already had that value: one run in 256 imported the "damaged" copy).
    const at = size - 1024 * 1024
    const byte = new Uint8Array(1)
    await fh.read(byte, 0, 1, at)
    await fh.write(Uint8Array.of(byte[0]! ^ 0xff), 0, 1, at)
    await fh.close()
    const refused = await rhizome(['bundle', 'import', bad, '--daemon', d5.url], env)
    assert.equal(refused.code, 2, refused.stderr)
    assert.match(refused.stderr, /damaged/)
    assert.equal(await listed('n5'), undefined, 'nothing of the damaged bundle was stored')
    const im = await rhizome(['bundle', 'import', bundle, '--daemon', d5.url], env)
    assert.equal(im.code, 0, im.stderr)
    assert.match(im.stdout, new RegExp(`artifact ${digest}: stored`))
    assert.equal((await ranWithArtifact('n5')).trim(), `${fileSha} ${SIZE}`)
    assert.equal(
      await metric('n5', 'rhizome_artifact_bytes_fetched_total'),
      0,
      'nothing came over a network'
    )
  })
})
