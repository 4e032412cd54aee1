/**
 * The trust lifecycle over the mesh, with separate daemon processes on loopback
 * (test/fixtures/mesh-daemon.ts), issue 11:
 * - an admin key is revoked, and a stolen device revoked, while the fleet is partitioned and the
 *   revoked key writes on the other side; after healing every daemon holds the same valid
 *   changes, and the device is disconnected within seconds everywhere, even where it was a
 *   bootstrap peer, and hears nothing more;
 * - signed changes that would readmit the revoked device (its flag reset, its entry deleted and
 *   written again) readmit nothing: it dials every daemon again and is refused;
 * - two root-signed statements of one version meet over the mesh: every daemon sees the fork,
 *   none bans another, and a statement extending one branch resolves it everywhere; a fresh
 *   device then catches up on the history of the rotated-out key;
 * - a key used for two different changes with one sequence number on two sides of a partition
 *   is caught everywhere and its session cut.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { toHex } from '../crdt/bytes.ts'
import { publicKeyHex, type KeyPair } from '../crdt/keys.ts'
import {
  encodeTrustStatement,
  nextStatement,
  type SignedTrustStatement,
  type TrustStatement
} from '../crdt/trust.ts'
import { makeFleet, testKey, type TestFleet } from './fixtures/fleet.ts'
import { spawnDaemon, type DaemonProcess, type Event } from './fixtures/mesh-process.ts'
import { startProxy, tcpPort, peerIdOf, type TcpProxy } from './fixtures/tcp-proxy.ts'
import { waitFor } from './fixtures/wait.ts'

interface DocState {
  heads: string[]
  value: Record<string, unknown>
}
interface State {
  docs: Record<string, DocState>
  trust: { version: number; forked: number | null; held: number; equivocations: number }
}

const state = async (d: DaemonProcess): Promise<State> =>
  (await d.request({ cmd: 'state' })) as unknown as State

/** Wait until every daemon holds the same heads of every document named. */
async function converged(ds: DaemonProcess[], docs: string[], ms = 45_000): Promise<State[]> {
  let last: State[] = []
  await waitFor(
    `${docs.join(', ')} to converge on ${ds.length} daemons`,
    async () => {
      last = await Promise.all(ds.map(state))
      return docs.every(id => {
        const heads = last.map(s => s.docs[id]?.heads.join() ?? '')
        return heads[0] !== '' && heads.every(h => h === heads[0])
      })
    },
    ms,
    250
  )
  return last
}

/** Set `key` to 1 in the fleet document through `d`, signed by `d`'s admin. */
async function write(d: DaemonProcess, key: string): Promise<Event> {
  return d.request({ cmd: 'change', docId: 'fleet', key, value: 1 })
}

/** Set `key` to 1 in the fleet document through `d`, signed by `signer`. */
async function writeAs(d: DaemonProcess, key: string, signer: KeyPair): Promise<Event> {
  return d.request({ cmd: 'change', docId: 'fleet', key, value: 1, signerSeed: toHex(signer.seed) })
}

async function trust(d: DaemonProcess, s: SignedTrustStatement): Promise<Event> {
  return d.request({ cmd: 'trust', statement: toHex(encodeTrustStatement(s)) })
}

/** The statement after `base` removing `key` from the admins, with its cuts as `on` holds them. */
async function removal(
  f: TestFleet,
  on: DaemonProcess,
  base: TrustStatement,
  key: string,
  update: Partial<TrustStatement> = {}
): Promise<SignedTrustStatement> {
  const cuts = (await on.request({ cmd: 'cuts', key })).cuts as Record<string, never>
  return nextStatement(
    base,
    {
      admins: base.admins.filter(a => a.key !== key),
      revocations: [{ key, reason: 'test', cuts }],
      ...update
    },
    [f.root],
    f.ed
  )
}

async function withDaemons(
  label: string,
  body: (f: TestFleet, spawn: Spawn, root: string) => Promise<void>
): Promise<void> {
  const f = await makeFleet({ nodes: 5, admins: 2, replicas: 0, label })
  const root = await mkdtemp(path.join(tmpdir(), `rhizome-${label}-`))
  const procs: DaemonProcess[] = []
  const proxies: TcpProxy[] = []
  const spawn: Spawn = async (name, node, bootstrap, viaProxy = false) => {
    let addrs = bootstrap.map(d => d.addresses[0]!)
    if (viaProxy) {
      const p = await startProxy(tcpPort(addrs[0]!))
      proxies.push(p)
      addrs = [`/ip4/127.0.0.1/tcp/${p.port}/p2p/${peerIdOf(addrs[0]!)}`, ...addrs.slice(1)]
    }
    const d = await spawnDaemon(f, {
      dir: path.join(root, name),
      identity: f.nodes[node]!,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: addrs
    })
    procs.push(d)
    return { d, proxy: viaProxy ? proxies.at(-1) : undefined }
  }
  try {
    await body(f, spawn, root)
  } finally {
    await Promise.all(procs.map(p => p.kill()))
    await Promise.all(proxies.map(p => p.close()))
    await rm(root, { recursive: true, force: true })
  }
}

type Spawn = (
  name: string,
  node: number,
  bootstrap: DaemonProcess[],
  viaProxy?: boolean
) => Promise<{ d: DaemonProcess; proxy: TcpProxy | undefined }>

test('revocation during a partition, concurrent with writes: one valid set everywhere after healing; the revoked device is cut off at once, bootstrap or not', async () => {
  await withDaemons('mesh-revoke', async (f, spawn) => {
    const { d: a } = await spawn('a', 0, [])
    const { d: b } = await spawn('b', 1, [a])
    // c reaches b through a proxy the test cuts; x (a device about to be stolen) is c's
    // bootstrap peer, and bootstraps from c.
    const { d: c, proxy } = await spawn('c', 2, [b], true)
    const { d: x } = await spawn('x', 3, [c])
    await write(a, 'base')
    await writeAs(a, 'byOther', f.admins[1]!)
    await converged([a, b, c, x], ['fleet'])

    proxy!.cut()
    // Side {a, b}: admin-1 is revoked (cut where a has it), device x too; admin-0 writes.
    const admin1 = publicKeyHex(f.admins[1]!.publicKey)
    const v2 = await removal(f, a, f.genesis.statement, admin1)
    assert.equal((await trust(a, v2)).added, true)
    await a.request({ cmd: 'revoke-device', key: publicKeyHex(f.nodes[3]!.publicKey) })
    await write(a, 'a1')
    // Side {c, x}: admin-0 writes, then the revoked admin key (on top: a change made after the
    // thief's would fall with it).
    await write(c, 'c1')
    await writeAs(c, 'stolen', f.admins[1]!)
    await converged([c, x], ['fleet'])

    const xPeer = x.peerId
    const fromC = c.events.length
    proxy!.heal()
    const [sa] = await converged([a, b, c], ['fleet', 'devices'])
    const learnt = await c.next(e => e.event === 'heads' && e.docId === 'devices', 30_000, fromC)
    const gone = await c.next(
      e => e.event === 'peer:disconnect' && e.peerId === xPeer,
      10_000,
      fromC
    )
    const seconds = ((gone.t as number) - (learnt.t as number)) / 1000
    assert.ok(
      seconds < 5,
      `x disconnected ${seconds.toFixed(1)} s after c learnt of its revocation`
    )
    const v = sa!.docs.fleet!.value
    assert.equal(v.base, 1)
    assert.equal(v.byOther, 1, "admin-1's changes before its cut stay")
    assert.equal(v.a1, 1)
    assert.equal(v.c1, 1)
    assert.equal(v.stolen, undefined, "admin-1's change outside its cut is dropped everywhere")
    for (const s of await Promise.all([a, b, c].map(state))) assert.equal(s.trust.version, 2)
    // x is refused from now on, as a bootstrap peer too: it hears nothing more.
    await write(a, 'after')
    await converged([a, b, c], ['fleet'])
    await new Promise(resolve => setTimeout(resolve, 3000))
    assert.equal((await state(x)).docs.fleet!.value.after, undefined)
    assert.equal(
      c.events.filter(e => e.event === 'peer:connect' && e.peerId === xPeer && e.t! > gone.t!)
        .length,
      0,
      'x did not get back in'
    )
    for (const d of [a, b, c]) {
      assert.equal(d.events.filter(e => e.event === 'rejected' && e.peerId !== xPeer).length, 0)
    }
  })
})

test('a revoked device stays refused after signed changes that would readmit it: it dials both daemons again and hears nothing', async () => {
  await withDaemons('mesh-readmit', async (f, spawn) => {
    const { d: a } = await spawn('a', 0, [])
    const { d: b } = await spawn('b', 1, [a])
    const { d: x } = await spawn('x', 3, [a, b])
    await write(a, 'base')
    await converged([a, b, x], ['fleet'])
    const xKey = publicKeyHex(f.nodes[3]!.publicKey)
    const fromB = b.events.length
    await a.request({ cmd: 'revoke-device', key: xKey })
    await b.next(e => e.event === 'peer:disconnect' && e.peerId === x.peerId, 10_000, fromB)
    // An admin signs changes that reset the flag, then delete and re-add x's entry.
    await a.request({ cmd: 'readmit-device', key: xKey })
    await converged([a, b], ['devices'])
    await x.kill()
    // x (wiped, same identity) and an enrolled device y start at once, both dialling a and b.
    const [sa, sb] = [a.events.length, b.events.length]
    const [{ d: x2 }, { d: y }] = await Promise.all([spawn('x2', 3, [a, b]), spawn('y', 4, [a, b])])
    await write(a, 'after')
    const [, , sy] = await converged([a, b, y], ['fleet'])
    assert.equal(sy!.docs.fleet!.value.after, 1)
    assert.equal((await state(x2)).docs.fleet?.value.after, undefined, 'x learnt nothing')
    for (const [d, from] of [
      [a, sa],
      [b, sb]
    ] as const) {
      const back = d.events
        .slice(from)
        .filter(e => e.event === 'peer:connect' && e.peerId === x.peerId)
      assert.equal(back.length, 0, 'x did not get back in')
    }
  })
})

test('a fork meets over the mesh: seen by every daemon, no bans, resolved by the next version; a fresh device catches up after the rotation', async () => {
  await withDaemons('mesh-fork', async (f, spawn) => {
    const { d: a } = await spawn('a', 0, [])
    const { d: b } = await spawn('b', 1, [a])
    const { d: c } = await spawn('c', 2, [b])
    await write(a, 'old')
    await converged([a, b, c], ['fleet'])
    // Two root-signed version-2 statements, one given to a, the other to c: they meet at b.
    const admin0 = publicKeyHex(f.admins[0]!.publicKey)
    const fresh = testKey('mesh-fork/admin-new')
    const s1 = await removal(f, a, f.genesis.statement, admin0, {
      admins: [
        ...f.genesis.statement.admins.filter(e => e.key !== admin0),
        { key: publicKeyHex(fresh.publicKey), name: 'admin-new' }
      ]
    })
    const s2 = await nextStatement(f.genesis.statement, {}, [f.root], f.ed, new Date(2030, 0, 1))
    await Promise.all([trust(a, s1), trust(c, s2)])
    await Promise.all([a, b, c].map(d => d.next(e => e.event === 'fork', 30_000)))
    for (const st of await Promise.all([a, b, c].map(state))) {
      assert.equal(st.trust.forked, 2)
      assert.equal(st.trust.version, 1, 'the statement before the fork stays in force')
    }
    // Resolved at b, in favour of s1 (which rotates admin-0 out, its history kept).
    await trust(b, await nextStatement(s1.statement, {}, [f.root], f.ed))
    await waitFor(
      'every daemon to leave the fork behind',
      async () =>
        (await Promise.all([a, b, c].map(state))).every(
          st => st.trust.forked === null && st.trust.version === 3
        ),
      30_000,
      250
    )
    // A device wiped and started again catches up: the rotated-out key's history is valid.
    const { d: wiped } = await spawn('wiped', 4, [c])
    const [st] = await converged([a, wiped], ['fleet'])
    assert.equal(st!.docs.fleet!.value.old, 1)
    assert.equal((await state(wiped)).trust.version, 3)
    for (const d of [a, b, c, wiped]) {
      assert.equal(
        d.events.filter(e => e.event === 'rejected').length,
        0,
        'no daemon banned another'
      )
    }
  })
})

test('a key used for two changes with one sequence number on two sides of a partition is caught everywhere and its session cut', async () => {
  await withDaemons('mesh-equivocate', async (f, spawn) => {
    const { d: a } = await spawn('a', 0, [])
    const { d: b, proxy } = await spawn('b', 1, [a], true)
    const { d: c } = await spawn('c', 2, [b])
    const first = await write(a, 'first')
    await converged([a, b, c], ['fleet'])
    proxy!.cut()
    // a's admin session writes its second change; on the other side a thief with the admin key
    // writes another second change of the same session.
    await write(a, 'honest')
    const forged = await c.request({
      cmd: 'forge',
      docId: 'fleet',
      actor: first.actor,
      signerSeed: toHex(f.admins[0]!.seed),
      key: 'forged',
      value: 1
    })
    assert.equal(forged.status, 'applied')
    await converged([b, c], ['fleet'])
    proxy!.heal()
    await Promise.all([a, b, c].map(d => d.next(e => e.event === 'equivocation', 30_000)))
    const [sa] = await converged([a, b, c], ['fleet'])
    const v = sa!.docs.fleet!.value
    assert.equal(v.first, 1, 'before the fork point stays')
    assert.equal(v.honest, undefined)
    assert.equal(v.forged, undefined)
    for (const st of await Promise.all([a, b, c].map(state))) {
      assert.equal(st.trust.equivocations, 1)
    }
    for (const d of [a, b, c]) assert.equal(d.events.filter(e => e.event === 'rejected').length, 0)
  })
})
