/**
 * Routing around outages (issue 13): five daemon processes whose bootstrap links form a chain
 * a-b-c-d-e learn each other's addresses from their signed status records and connect beyond
 * their bootstrap lists; the middle one is SIGKILLed and a change made at one end reaches the
 * other within seconds. Restarted, it is back in the mesh within seconds (it dials the peers it
 * knows from its stored records).
 */
import { test } from 'node:test'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { makeFleet } from './fixtures/fleet.ts'
import { spawnDaemon, type DaemonProcess } from './fixtures/mesh-process.ts'
import { waitFor } from './fixtures/wait.ts'

const NAMES = ['a', 'b', 'c', 'd', 'e']

async function peersOf(d: DaemonProcess): Promise<string[]> {
  return (await d.request({ cmd: 'metrics' })).peers as string[]
}

/** Are the daemons connected to each other (directly or through others among them)? */
async function connected(ds: DaemonProcess[]): Promise<boolean> {
  const ids = new Set(ds.map(d => d.peerId))
  const edges = new Map<string, string[]>()
  for (const d of ds) {
    edges.set(
      d.peerId,
      (await peersOf(d)).filter(p => ids.has(p))
    )
  }
  const seen = new Set([ds[0]!.peerId])
  const todo = [ds[0]!.peerId]
  while (todo.length > 0) {
    for (const p of edges.get(todo.pop()!) ?? []) {
      if (!seen.has(p)) {
        seen.add(p)
        todo.push(p)
      }
    }
  }
  return seen.size === ds.length
}

async function heads(d: DaemonProcess): Promise<string> {
  const s = await d.request({ cmd: 'state' })
  return JSON.stringify((s.docs as Record<string, { heads: string[] }>).fleet?.heads ?? [])
}

test('a chain of bootstrap links heals around its middle node: the ends converge while it is down, and it is back within seconds of a restart', async t => {
  const fleet = await makeFleet({ replicas: 0, nodes: NAMES.length, label: 'routing' })
  const root = await mkdtemp(path.join(tmpdir(), 'rhizome-routing-'))
  const ds: DaemonProcess[] = []
  try {
    for (let i = 0; i < NAMES.length; i++) {
      ds.push(
        await spawnDaemon(fleet, {
          dir: path.join(root, NAMES[i]!),
          identity: fleet.nodes[i]!,
          listen: ['/ip4/127.0.0.1/tcp/0'],
          bootstrap: i === 0 ? [] : [ds[i - 1]!.addresses[0]!],
          statusMs: 1000
        })
      )
    }
    const [a, b, c, d, e] = ds as [
      DaemonProcess,
      DaemonProcess,
      DaemonProcess,
      DaemonProcess,
      DaemonProcess
    ]
    await a.request({ cmd: 'change', docId: 'fleet', key: 'first', value: 1 })
    await waitFor('all five to hold the first change', async () => {
      const hs = await Promise.all(ds.map(heads))
      return hs.every(h => h === hs[0] && h !== '[]')
    })
    // Status records go round and the daemons connect beyond the chain; give it a few seconds.
    await waitFor(
      'the mesh without c to be connected',
      () => connected([a, b, d, e]),
      15_000
    ).catch(() => undefined)

    await c.kill()
    const t0 = performance.now()
    await a.request({ cmd: 'change', docId: 'fleet', key: 'whileCDown', value: 1 })
    await e.request({ cmd: 'change', docId: 'fleet', key: 'fromEWhileCDown', value: 1 })
    await waitFor(
      'a and e to converge with c down',
      async () => {
        const [ha, he] = [await heads(a), await heads(e)]
        return ha === he
      },
      10_000
    )
    const healed = performance.now() - t0
    t.diagnostic(`a and e converged ${healed.toFixed(0)} ms after c was killed`)

    // c restarts on its data directory and port, its bootstrap peer (b) as before.
    const cAddr = c.addresses[0]!
    const t1 = performance.now()
    const c2 = await spawnDaemon(fleet, {
      dir: path.join(root, 'c'),
      identity: fleet.nodes[2]!,
      listen: [cAddr.slice(0, cAddr.indexOf('/p2p/'))],
      bootstrap: [b.addresses[0]!],
      statusMs: 1000
    })
    ds[2] = c2
    await waitFor(
      'c to catch up after its restart',
      async () => (await heads(c2)) === (await heads(a)),
      10_000
    )
    t.diagnostic(`c caught up ${(performance.now() - t1).toFixed(0)} ms after its restart began`)
  } finally {
    await Promise.all(ds.map(d => d.kill()))
    await rm(root, { recursive: true, force: true })
  }
})
