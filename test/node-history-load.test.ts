/**
 * Reading history does not freeze a daemon (issue 10.2). Two real daemons share a document of
 * 2,000 signed changes; two clients read its whole history page after page, as fast as they can,
 * for several seconds. Meanwhile the daemon under attack answers /api/health within a second
 * every time, and changes made on it keep reaching the other daemon. (Before, two
 * `GET /api/history?limit=1000` froze the daemon for half a minute.)
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { decryptKeyFile, parseKeyFile } from '../crdt/keys.ts'
import { Replica } from '../crdt/replica.ts'
import type { HistoryPage } from '../crdt/change-history.ts'
import { DaemonFleet, type RunningDaemon } from './fixtures/daemon-fleet.ts'
import { daemonClient, fetchAgain, freePort, getJson, stopAll } from './fixtures/node-harness.ts'
import { waitFor } from './fixtures/wait.ts'

const PASS = 'correct horse battery'
const CHANGES = 2000
const ATTACK_MS = 8000

describe('history under load (two processes)', { timeout: 240_000 }, () => {
  let dir: string
  const d: Record<string, RunningDaemon> = {}

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rhizome-history-'))
    const env = { RHIZOME_PASSPHRASE: PASS }
    const f = await DaemonFleet.init(dir, 'history', ['n1', 'n2'], env)
    const port = await freePort()
    await f.writeConfig('n1', { listen: [`/ip4/127.0.0.1/tcp/${port}`] })
    await f.writeConfig('n2', {
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: [`/ip4/127.0.0.1/tcp/${port}/p2p/${f.ids.n1!.peerId}`]
    })
    d.n1 = await f.start('n1')
    await f.enrol(d.n1)
    d.n2 = await f.start('n2')
  })

  after(async () => {
    await stopAll()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('answers health within a second and keeps propagating while history is read flat out', async () => {
    const admin = await decryptKeyFile(
      parseKeyFile(await readFile(join(dir, 'fleet/admin.key'), 'utf8')),
      PASS
    )
    const client = daemonClient(d.n1!)
    const replica = await client.localReplica(['fleet'])
    const doc = await replica.open('fleet')
    const signer = Replica.signer(admin)
    for (let i = 0; i < CHANGES; i++) {
      await doc.change(signer, v => {
        const files = ((v as Record<string, Record<string, unknown>>).defaults!.files ??=
          {}) as Record<string, unknown>
        files[`/etc/rhizome/f${i % 40}`] = { content: `version ${i}\n`.repeat(4), mode: '0644' }
      })
    }
    await client.postBatch(doc.batchFor(doc.changeHashes()))
    const heads = (await getJson<{ heads: string[] }>(`${d.n1!.url}/api/docs/fleet`)).heads
    await waitFor(
      'n2 to hold the 2,000 changes',
      async () =>
        (await getJson<{ heads: string[] }>(`${d.n2!.url}/api/docs/fleet`)).heads.join() ===
        heads.join(),
      60_000,
      200
    )

    const stop = Date.now() + ATTACK_MS
    let pages = 0
    const attacker = async (): Promise<void> => {
      while (Date.now() < stop) {
        let next: string | null = null
        do {
          const q: string = next === null ? '' : `&before=${next}`
          const page: HistoryPage = await getJson<HistoryPage>(
            `${d.n1!.url}/api/history?doc=fleet&limit=1000${q}`
          ).catch(() => ({ items: [], next: null }))
          pages++
          next = page.next
        } while (next !== null && Date.now() < stop)
      }
    }
    let worst = 0
    const prober = async (): Promise<void> => {
      while (Date.now() < stop) {
        const t0 = performance.now()
        const res = await fetchAgain(`${d.n1!.url}/api/health`, {
          signal: AbortSignal.timeout(5000)
        })
        assert.equal(res.status, 200)
        worst = Math.max(worst, performance.now() - t0)
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    }
    let propagated = 0
    const writer = async (): Promise<void> => {
      while (Date.now() < stop - 2000) {
        const batch = await doc.change(signer, v => {
          ;(v as Record<string, Record<string, unknown>>).defaults!.marker = propagated
        })
        await client.postBatch(batch!)
        await waitFor(
          `change ${propagated} to reach n2`,
          async () =>
            (await getJson<{ heads: string[] }>(`${d.n2!.url}/api/docs/fleet`)).heads.join() ===
            doc.heads.join(),
          5000,
          50
        )
        propagated++
      }
    }
    await Promise.all([attacker(), attacker(), prober(), writer()])
    process.stderr.write(
      `# history attack: ${pages} pages read, worst /api/health ${Math.round(worst)} ms, ${propagated} changes propagated\n`
    )
    assert.ok(pages > 40, `the attackers read only ${pages} pages`)
    assert.ok(worst < 1000, `/api/health took ${Math.round(worst)} ms`)
    assert.ok(propagated >= 2, `only ${propagated} changes reached n2 during the attack`)
  })
})
