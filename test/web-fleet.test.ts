/**
 * The dashboard's fleet views against real daemons, in headless Chromium (fixtures/browser.ts):
 * the daemon the page connects through is listed at once (not after its next status record);
 * every enrolled node is listed, one never started and one stopped marked down with when it was
 * last seen; a node with a config error is counted and labelled degraded by one rule, and files
 * put back show only when some were; an edit in progress survives unlocking a key (the session
 * upgrade); every view fits a 420 px wide screen. Screenshots: test-output/screenshots/fleet-*.png.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Page } from 'playwright-core'
import {
  BROWSER_SUITE,
  browserSuite,
  editorHolding,
  requireChromium,
  shot
} from './fixtures/browser.ts'
import { DaemonFleet, motdAndWebOnN2, type RunningDaemon } from './fixtures/daemon-fleet.ts'
import { freePort, getJson, rhizome, WEB_SERVER, webOn } from './fixtures/node-harness.ts'
import { waitFor } from './fixtures/wait.ts'
import type { FleetStatus } from '../crdt/fleet-status.ts'

const PASS = 'correct horse battery'

requireChromium()

const rowText = (page: Page, node: string, testid: string): Promise<string> =>
  page.locator(`tr[data-node=${node}] [data-testid=${testid}]`).innerText()

describe('dashboard fleet views', BROWSER_SUITE, () => {
  const suite = browserSuite('rhizome-web-fleet-')
  const daemons: Record<string, RunningDaemon> = {}
  let page: Page

  it('lists the daemon it connects through at once, and every enrolled node', async () => {
    const env = { RHIZOME_PASSPHRASE: PASS }
    const f = await DaemonFleet.init(suite.dir, 'web-fleet', ['n1', 'n2', 'n3'], env)
    const tcpPort = await freePort()
    const wsPort = await freePort()
    // n1 publishes its status only when something changes here: its next record is minutes away.
    await f.writeConfig('n1', {
      listen: [`/ip4/127.0.0.1/tcp/${tcpPort}`, `/ip4/127.0.0.1/tcp/${wsPort}/ws`],
      statusIntervalMs: 600_000,
      reconcileIntervalMs: 600_000
    })
    await f.writeConfig('n2', {
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: [`/ip4/127.0.0.1/tcp/${tcpPort}/p2p/${f.ids.n1!.peerId}`],
      driftCheckMs: 200
    })
    daemons.n1 = await f.start('n1')
    await f.enrol(daemons.n1)
    const port = await freePort()
    const web = { command: [process.execPath, WEB_SERVER], ...webOn(port, 500) }
    const applied = await f.apply(motdAndWebOnN2(web), daemons.n1)
    assert.equal(applied.code, 0, applied.stderr)
    daemons.n2 = await f.start('n2')
    await waitFor(
      "n1 to hold n2's healthy record with its error",
      async () => {
        const s = await getJson<FleetStatus>(`${daemons.n1!.url}/api/status`)
        const b = s.nodes.find(n => n.name === 'n2')?.status
        return b?.workloads.web?.healthy === true && b.errors.length > 0
      },
      30_000,
      200
    )

    const issued = await rhizome(['dashboard', '--daemon', daemons.n1.url])
    assert.equal(issued.code, 0, issued.stderr)
    const wsAddr = `/ip4/127.0.0.1/tcp/${wsPort}/ws/p2p/${f.ids.n1!.peerId}`
    page = await suite.newPage()
    await page.goto(`${issued.stdout.split('\n')[0]}&addr=${encodeURIComponent(wsAddr)}&stale=4000`)
    await page.waitForSelector('[data-testid=node-table] tbody tr', { timeout: 30_000 })
    // n1's record went out before the page connected; it comes with the page's first hello,
    // before the enrolments it needs: the page shows it as soon as those have synced.
    await page
      .waitForFunction(
        () =>
          document.querySelector('tr[data-node=n1] [data-testid=node-state]')?.textContent ===
          'online',
        undefined,
        { timeout: 3000 }
      )
      .catch(async (err: Error) => {
        await shot(page, 'fleet-failed-self')
        throw new Error(`n1 is not online on the page: ${err.message}`)
      })
    // n3 is enrolled and never started: listed, down, never seen.
    assert.deepEqual(
      await page
        .locator('[data-testid=node-table] tbody tr')
        .evaluateAll(rows => rows.map(r => (r as HTMLElement).dataset.node)),
      ['n1', 'n2', 'n3']
    )
    assert.equal(await rowText(page, 'n3', 'node-state'), 'down')
    assert.match(await page.locator('tr[data-node=n3] td').nth(4).innerText(), /^unknown/)
    assert.equal(await page.locator('.card:has-text("behind latest") .num').innerText(), '0')
    assert.equal(await page.locator('tr[data-node=n3] td').nth(3).innerText(), 'never')
    await shot(page, 'fleet-overview')
  })

  it('counts and labels a node with a config error by one rule; shows files put back only when some were', async () => {
    await page.waitForFunction(
      () =>
        /1\/1 healthy/.test(
          document.querySelector('tr[data-node=n2] [data-testid=node-health]')?.textContent ?? ''
        ),
      undefined,
      { timeout: 15_000 }
    )
    const pill = page.locator('tr[data-node=n2] [data-testid=node-health]')
    assert.equal(await pill.innerText(), '1/1 healthy · 1 config error')
    assert.match((await pill.getAttribute('class')) ?? '', /health-degraded/)
    assert.equal(
      await page.locator('.card:has-text("degraded or failing") .num').innerText(),
      '1',
      'n2 is counted as the pill says'
    )
    await page.click('tr[data-node=n2]')
    await page.waitForSelector('[data-testid=node-detail]')
    assert.match(await page.locator('[data-testid=detail-health]').innerText(), /config error/)
    assert.equal(await page.locator('[data-testid=put-back]').count(), 0)
    assert.doesNotMatch(await page.locator('main').innerText(), /drifted/i)
    await writeFile(join(suite.dir, 'root-n2/etc/rhizome/motd'), 'by hand\n')
    await page.waitForSelector('[data-testid=put-back]', { timeout: 15_000 })
    assert.match(
      await page.locator('[data-testid=put-back]').innerText(),
      /put back: \/etc\/rhizome\/motd at \d/
    )
    assert.equal(await readFile(join(suite.dir, 'root-n2/etc/rhizome/motd'), 'utf8'), 'hello\n')
    await shot(page, 'fleet-node-put-back')
  })

  it('keeps the edit in progress while a key is unlocked', async () => {
    const editor = await editorHolding(page, 'hello')
    const edited = (await editor.inputValue()).replace('hello', 'edited before the key')
    await editor.fill(edited)
    // Another view unmounts the editor; coming back finds the draft.
    await page.click('a.tab:has-text("History")')
    await page.waitForSelector('[data-testid=history]')
    await page.click('a.tab:has-text("Desired config")')
    assert.equal(await editor.inputValue(), edited, 'the draft outlives a visit to another view')
    await page.click('[data-testid=review]')
    await page.waitForSelector('[data-testid=diff]')
    await page.click('[data-testid=diff] button:has-text("Unlock a key file")')
    await page.setInputFiles('[data-testid=key-file]', join(suite.dir, 'fleet/admin.key'))
    await page.fill('[data-testid=key-passphrase]', PASS)
    await page.click('[data-testid=key-unlock]')
    await page.waitForFunction(
      () =>
        /admin-session/.test(document.querySelector('[data-testid=connection]')?.textContent ?? ''),
      undefined,
      { timeout: 30_000 }
    )
    assert.equal(await editor.inputValue(), edited, 'the draft is kept')
    await page.waitForSelector('[data-testid=diff]')
    await shot(page, 'fleet-draft-kept')
    await page.click('[data-testid=publish]')
    await page.waitForSelector('[data-testid=published]', { timeout: 20_000 })
    await waitFor(
      'n2 to apply the change published from the kept draft',
      async () =>
        (await readFile(join(suite.dir, 'root-n2/etc/rhizome/motd'), 'utf8').catch(() => '')) ===
        'edited before the key\n',
      30_000,
      200
    )
  })

  it('marks a stopped node down with when it was last seen, and keeps it listed', async () => {
    await page.click('a.tab:has-text("Fleet")')
    await daemons.n2!.stop()
    await page.waitForFunction(
      () =>
        document.querySelector('tr[data-node=n2] [data-testid=node-state]')?.textContent === 'down',
      undefined,
      { timeout: 30_000 }
    )
    assert.match(await page.locator('tr[data-node=n2] td').nth(3).innerText(), /ago|just now/)
    assert.equal(await page.locator('[data-testid=node-table] tbody tr').count(), 3)
    await page.click('tr[data-node=n2]')
    assert.match(await page.locator('[data-testid=detail-state]').innerText(), /^down · last seen /)
    await shot(page, 'fleet-node-down')
    await page.click('a.tab:has-text("Fleet")')
  })

  it('fits every view on a 420 px wide screen', async () => {
    await page.setViewportSize({ width: 420, height: 900 })
    // [name, what to click, what shows when the view is there]
    const views: Array<[string, string, string]> = [
      ['overview', 'a.tab:has-text("Fleet")', '[data-testid=overview]'],
      ['node', 'tr[data-node=n1]', '[data-testid=effective-config]'],
      ['config', 'a.tab:has-text("Desired config")', '[data-testid=yaml-editor]'],
      ['history', 'a.tab:has-text("History")', '[data-testid=history] .change'],
      ['rollouts', 'a.tab:has-text("Rollouts")', '[data-testid=rollouts]'],
      ['topology', 'a.tab:has-text("Topology")', 'svg.topology .vertex']
    ]
    const wide: string[] = []
    for (const [name, click, shown] of views) {
      await page.click(click)
      await page.waitForSelector(shown)
      await shot(page, `fleet-420-${name}`)
      const w = await page.evaluate(() => document.documentElement.scrollWidth)
      if (w > 420) wide.push(`${name}: ${w} px`)
    }
    assert.deepEqual(wide, [], 'views wider than the screen')
    assert.deepEqual(suite.pageErrors, [])
  })
})
