/**
 * The browser dashboard in real headless Chromium (Debian's /usr/bin/chromium, driven by
 * playwright-core). Builds the dashboard once (vite build), then:
 *  1. a fabricated 100-node fleet (`#fake=100`): measures how long the overview takes to show
 *     and screenshots every view;
 *  2. three real daemons: the page joins their mesh as a peer through one daemon's WebSocket
 *     address with its one-time viewer token, shows every node, unlocks the admin key file
 *     (uploaded through the file input, passphrase typed), edits the desired config as YAML,
 *     reviews the diff, signs in the page and publishes; every daemon applies it; a paused
 *     rollout is resumed from the Rollouts view and completes, another is aborted from it (both
 *     signed in the page); a stopped node turns down on the page.
 * Screenshots go to test-output/screenshots/. Without Chromium the tests are skipped loudly,
 * unless CI is set, where they fail.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { extname, join, normalize } from 'node:path'
import { stringify } from 'yaml'
import type { Page } from 'playwright-core'
import {
  BROWSER_SUITE,
  browserSuite,
  editorHolding,
  requireChromium,
  ROOT,
  shot
} from './fixtures/browser.ts'
import { DaemonFleet, type RunningDaemon } from './fixtures/daemon-fleet.ts'
import { freePort, getJson, rhizome } from './fixtures/node-harness.ts'
import { waitFor } from './fixtures/wait.ts'

const DIST = join(ROOT, 'web/dist')
const PASS = 'correct horse battery'
const NAMES = ['n1', 'n2', 'n3'] as const

requireChromium()

const TYPES: Record<string, string> = {
  '.html': 'text/html',
  '.js': 'text/javascript',
  '.css': 'text/css',
  '.svg': 'image/svg+xml'
}

/** Serve web/dist on its own (as `npm run dashboard` does), for the fabricated fleet. */
async function staticServer(): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname
    const file = join(
      DIST,
      normalize(path === '/' ? '/index.html' : path).replace(/^(\.\.[/\\])+/, '')
    )
    readFile(file).then(
      b => {
        res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' })
        res.end(b)
      },
      () => {
        res.writeHead(404)
        res.end()
      }
    )
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', () => resolve()))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server }
}

/** Open the `tab` view, wait until it shows `shown`, and screenshot it as `name`. */
async function showView(
  page: Page,
  tab: string,
  shown: string,
  name: string,
  wait?: { timeout: number }
): Promise<void> {
  await page.click(`a.tab:has-text("${tab}")`)
  await page.waitForSelector(shown, wait)
  await shot(page, name)
}

describe('browser dashboard', BROWSER_SUITE, () => {
  const suite = browserSuite('rhizome-web-')

  it('shows a fabricated 100-node fleet quickly, in every view', async () => {
    const { url, server } = await staticServer()
    try {
      const page = await suite.newPage()
      const t0 = Date.now()
      await page.goto(`${url}/#fake=100`)
      await page.waitForFunction(
        () => document.querySelectorAll('[data-testid=node-table] tbody tr').length === 100,
        undefined,
        { timeout: 10_000 }
      )
      const shownMs = Date.now() - t0
      const nav = await page.evaluate(() => performance.now())
      process.stdout.write(
        `# dashboard: overview of a 100-node fleet shown ${shownMs} ms after navigation started (page clock ${Math.round(nav)} ms)\n`
      )
      await shot(page, 'fake-overview')
      await page.fill('[data-testid=filter]', 'site=berlin-3')
      assert.equal(
        await page.locator('[data-testid=node-table] tbody tr').count(),
        25,
        'the label filter keeps one site of four'
      )
      await page.fill('[data-testid=filter]', '')
      await page.locator('[data-testid=node-table] tbody tr').first().click()
      await page.waitForSelector('[data-testid=effective-config]')
      await shot(page, 'fake-node-detail')
      await page.click('a.tab:has-text("Desired config")')
      const editor = page.locator('[data-testid=yaml-editor]')
      await editor.fill((await editor.inputValue()).replace('version: 2.1.0', 'version: 2.2.0'))
      await page.click('[data-testid=review]')
      await page.waitForSelector('[data-testid=diff]')
      await shot(page, 'fake-config-diff')
      await showView(page, 'History', '.change', 'fake-history')
      await showView(page, 'Topology', 'svg.topology .vertex', 'fake-topology')
      assert.deepEqual(suite.pageErrors, [])
      await page.close()
    } finally {
      server.close()
    }
  })

  it("joins three daemons' mesh, publishes a change signed in the page, and sees a stopped node turn down", async () => {
    const env = { RHIZOME_PASSPHRASE: PASS }
    const f = await DaemonFleet.init(suite.dir, 'web-test', NAMES, env)
    const tcpPort = await freePort()
    const wsPort = await freePort()
    const boot = [`/ip4/127.0.0.1/tcp/${tcpPort}/p2p/${f.ids.n1!.peerId}`]
    await f.writeConfig('n1', {
      listen: [`/ip4/127.0.0.1/tcp/${tcpPort}`, `/ip4/127.0.0.1/tcp/${wsPort}/ws`]
    })
    for (const n of ['n2', 'n3']) {
      await f.writeConfig(n, { listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: boot })
    }
    const daemons: Record<string, RunningDaemon> = {}
    daemons.n1 = await f.start('n1')
    await f.enrol(daemons.n1)
    const motd = (n: string): string => join(suite.dir, `root-${n}`, 'etc/rhizome/motd')
    const applied = await f.apply(
      {
        fleet: {
          defaults: { files: { '/etc/rhizome/motd': { content: 'hello v1\n', mode: '0644' } } }
        }
      },
      daemons.n1
    )
    assert.equal(applied.code, 0, applied.stderr)
    ;[daemons.n2, daemons.n3] = await Promise.all([f.start('n2'), f.start('n3')])

    const issued = await rhizome(['dashboard', '--daemon', daemons.n1.url])
    assert.equal(issued.code, 0, issued.stderr)
    const dash = { url: issued.stdout.split('\n')[0] ?? '' }
    assert.match(dash.url, /#token=/)
    const wsAddr = `/ip4/127.0.0.1/tcp/${wsPort}/ws/p2p/${f.ids.n1!.peerId}`
    const page = await suite.newPage()
    // `rhizome dashboard` prints http://127.0.0.1:PORT/#token=…; the page is told the daemon's WebSocket address too
    await page.goto(`${dash.url}&addr=${encodeURIComponent(wsAddr)}&stale=4000`)
    await page
      .waitForFunction(
        () => document.querySelectorAll('[data-testid=node-table] tbody tr').length === 3,
        undefined,
        { timeout: 30_000 }
      )
      .catch(async (err: Error) => {
        await shot(page, 'real-failed-connect')
        throw new Error(`${err.message}; page says: ${await page.locator('body').innerText()}`)
      })
    assert.match(await page.locator('[data-testid=connection]').innerText(), /connected · viewer/)
    assert.ok(!page.url().includes('token='), 'the spent token is removed from the address bar')
    await page.waitForFunction(
      () =>
        [...document.querySelectorAll('[data-testid=node-state]')].every(
          e => e.textContent === 'online'
        ),
      undefined,
      { timeout: 10_000 }
    )
    await shot(page, 'real-overview')

    // unlock the admin key in the page: file input + passphrase
    await page.click('[data-testid=key-button]')
    await page.setInputFiles('[data-testid=key-file]', join(suite.dir, 'fleet/admin.key'))
    await page.fill('[data-testid=key-passphrase]', 'not the passphrase')
    await page.click('[data-testid=key-unlock]')
    await page.waitForSelector('[data-testid=key-error]', { timeout: 20_000 })
    assert.match(await page.locator('[data-testid=key-error]').innerText(), /wrong passphrase/)
    await page.fill('[data-testid=key-passphrase]', PASS)
    await page.click('[data-testid=key-unlock]')
    await page
      .waitForFunction(
        () =>
          /admin-session/.test(
            document.querySelector('[data-testid=connection]')?.textContent ?? ''
          ),
        undefined,
        { timeout: 30_000 }
      )
      .catch(async (err: Error) => {
        await shot(page, 'real-failed-upgrade')
        throw new Error(`${err.message}; page says: ${await page.locator('body').innerText()}`)
      })

    // edit the desired config, review the diff, sign and publish
    const editor = await editorHolding(page, 'hello v1')
    await editor.fill((await editor.inputValue()).replace('hello v1', 'hello from the browser'))
    await page.click('[data-testid=review]')
    await page.waitForSelector('[data-testid=diff]')
    assert.match(
      await page.locator('[data-testid=diff]').innerText(),
      /\+ defaults\.files\."\/etc\/rhizome\/motd"\.content = \|\s*\nhello from the browser/
    )
    await page.fill('[data-testid=change-message]', 'motd from the dashboard')
    await shot(page, 'real-config-diff')
    await page.click('[data-testid=publish]')
    await page.waitForSelector('[data-testid=published]', { timeout: 20_000 })
    for (const n of NAMES) {
      await waitFor(
        `${n} to apply the change signed in the browser`,
        async () =>
          (await readFile(motd(n), 'utf8').catch(() => '')) === 'hello from the browser\n',
        30_000,
        200
      )
    }
    const doc = await getJson<{
      value: { defaults: { files: Record<string, { content: string }> } }
    }>(`${daemons.n3.url}/api/docs/fleet`)
    assert.equal(doc.value.defaults.files['/etc/rhizome/motd']?.content, 'hello from the browser\n')
    await page.waitForFunction(
      () =>
        /Applied on <strong>3<\/strong>/.test(
          document.querySelector('[data-testid=published]')?.innerHTML ?? ''
        ),
      undefined,
      { timeout: 20_000 }
    )
    await shot(page, 'real-config-published')

    await showView(page, 'History', '.change:has-text("motd from the dashboard")', 'real-history', {
      timeout: 10_000
    })
    await showView(page, 'Topology', 'svg.topology .vertex', 'real-topology')
    await page.click('a.tab:has-text("Fleet")')
    await page.click('tr[data-node=n2]')
    await page.waitForSelector('[data-testid=effective-config]')
    assert.match(
      await page.locator('[data-testid=effective-config]').innerText(),
      /hello from the browser/
    )
    await shot(page, 'real-node-detail')

    // a staged rollout, seen and steered from the page: resumed, then another one aborted
    const rolloutFile = (motdBase: string, rollouts: Record<string, unknown>) =>
      stringify({
        fleet: {
          defaults: { files: { '/etc/rhizome/motd': { content: motdBase, mode: '0644' } } },
          rollouts
        }
      })
    const applyFile = async (text: string): Promise<void> => {
      const r = await f.apply(text, daemons.n1!)
      assert.equal(r.code, 0, r.stderr)
    }
    const motdRollout = (content: string, soak: string, state?: string) => ({
      change: { files: { '/etc/rhizome/motd': { content } } },
      waves: [{ canary: { role: 'hub' } }, { percent: 100 }],
      soak,
      ...(state === undefined ? {} : { state })
    })
    const card = (id: string) => `[data-testid="rollout-${id}"]`
    /** Wait until rollout `id`'s card shows `text` in its `testid` element. */
    const rolloutShown = (id: string, testid: string, text: string, timeout: number) =>
      page.waitForFunction(
        ([sel, t]) => document.querySelector(sel)?.textContent === t,
        [`${card(id)} [data-testid=${testid}]`, text] as const,
        { timeout }
      )
    await applyFile(
      rolloutFile('hello from the browser\n', {
        'motd-v2': motdRollout('rolled out\n', '1s', 'paused')
      })
    )
    await page.click('a.tab:has-text("Rollouts")')
    await rolloutShown('fleet:motd-v2', 'rollout-state', 'paused', 20_000)
    await page.click(`${card('fleet:motd-v2')} [data-testid=rollout-resume]`)
    for (const n of NAMES) {
      await waitFor(
        `${n} to run the rollout resumed in the browser`,
        async () => (await readFile(motd(n), 'utf8').catch(() => '')) === 'rolled out\n',
        30_000,
        200
      )
    }
    await rolloutShown('fleet:motd-v2', 'rollout-state', 'completed', 30_000)
    assert.match(
      await page.locator(`${card('fleet:motd-v2')} [data-testid=wave-0]`).innerText(),
      /through/
    )
    await shot(page, 'real-rollouts')
    // A rollout's card, its waves table and its buttons fit a phone screen too.
    await page.setViewportSize({ width: 420, height: 900 })
    await shot(page, 'real-rollouts-420')
    assert.ok(
      (await page.evaluate(() => document.documentElement.scrollWidth)) <= 420,
      'the Rollouts view fits 420 px'
    )
    await page.setViewportSize({ width: 1360, height: 900 })
    await applyFile(rolloutFile('rolled out\n', { 'motd-v3': motdRollout('v3\n', '5m') }))
    await waitFor(
      'the canary n1 to run motd-v3',
      async () => (await readFile(motd('n1'), 'utf8').catch(() => '')) === 'v3\n',
      30_000,
      200
    )
    page.once('dialog', d => void d.accept())
    await page.click(`${card('fleet:motd-v3')} [data-testid=rollout-abort]`)
    await waitFor(
      'the canary to go back after the abort signed in the browser',
      async () => (await readFile(motd('n1'), 'utf8').catch(() => '')) === 'rolled out\n',
      30_000,
      200
    )
    for (const n of NAMES) {
      await waitFor(
        `${n} to hold motd-v3 aborted by an admin`,
        async () =>
          (
            await getJson<{ abortReason: string | null }>(
              `${daemons[n]!.url}/api/rollouts/${encodeURIComponent('fleet:motd-v3')}`
            ).catch(() => undefined)
          )?.abortReason === 'aborted by an admin',
        20_000,
        200
      )
    }
    await rolloutShown('fleet:motd-v3', 'rollout-state', 'aborted', 20_000)
    await rolloutShown('fleet:motd-v3', 'rollout-reverted', 'n1', 20_000)
    // Its waves say aborted, not waiting (as `rhizome rollout status` does).
    assert.match(
      await page.locator(`${card('fleet:motd-v3')} [data-testid=wave-1]`).innerText(),
      /aborted/
    )
    await shot(page, 'real-rollouts-aborted')

    // a node that falls silent turns down on the page, without a reload
    await page.click('a.tab:has-text("Fleet")')
    await daemons.n3.stop()
    await page.waitForFunction(
      () =>
        document.querySelector('tr[data-node=n3] [data-testid=node-state]')?.textContent === 'down',
      undefined,
      { timeout: 30_000 }
    )
    assert.equal(
      await page.locator('tr[data-node=n1] [data-testid=node-state]').innerText(),
      'online'
    )
    await shot(page, 'real-overview-stale')
    assert.deepEqual(suite.pageErrors, [])
  })
})
