/**
 * The daemon's HTTP API is not open to every local user or web page (issue 10.7). One real
 * daemon: without its API token every read and write is refused (a process running as uid 65534
 * cannot read the token file and is refused); /api/health and /metrics stay open on loopback; a
 * request naming another host (DNS rebinding), a cross-site request and a text/plain write are
 * refused even with the token; a client posting invalid batches is refused for a while;
 * `rhizome dashboard` prints a URL whose one-time token lets the page read the trust chain and
 * nothing else, and that token never appears in the daemon's log; the CLI says which token file
 * it could not read.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { chmod, copyFile, mkdtemp, readFile, rm } from 'node:fs/promises'
import { createServer, request } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { apiProof, INVALID_WRITES_PER_WINDOW } from '../node/http-access.ts'
import { DaemonFleet, type RunningDaemon } from './fixtures/daemon-fleet.ts'
import { rhizome, stopAll } from './fixtures/node-harness.ts'

const PASS = 'correct horse battery'

interface Answer {
  status: number
  body: string
}

/** An HTTP request with exactly these headers (fetch will not send a foreign Host). */
function raw(
  url: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string | Uint8Array } = {}
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: opts.method ?? 'GET', headers: opts.headers }, res => {
      let body = ''
      res.setEncoding('utf8').on('data', (d: string) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
    })
    req.on('error', reject)
    req.end(opts.body)
  })
}

describe('HTTP API access (one daemon process)', { timeout: 120_000 }, () => {
  let dir: string
  let d: RunningDaemon
  let token: string

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rhizome-auth-'))
    // Directories others may pass through: only the token file's own mode keeps it private.
    await chmod(dir, 0o755)
    const env = { RHIZOME_PASSPHRASE: PASS }
    const f = await DaemonFleet.init(dir, 'auth', ['n1'], env)
    await f.writeConfig('n1', { listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws'] })
    d = await f.start('n1')
    await chmod(join(dir, 'data-n1'), 0o755)
    token = (await readFile(d.tokenFile, 'utf8')).trim()
    await f.enrol(d)
  })

  after(async () => {
    await stopAll()
    if (dir !== undefined) await rm(dir, { recursive: true, force: true })
  })

  it('refuses reads and writes without the token, and serves them with it', async () => {
    const bearer = { authorization: `Bearer ${token}` }
    for (const path of [
      '/api/status',
      '/api/docs',
      '/api/docs/devices',
      '/api/trust',
      '/api/history'
    ]) {
      assert.equal((await raw(d.url + path)).status, 401, path)
      assert.equal(
        (await raw(d.url + path, { headers: { authorization: `Bearer ${'0'.repeat(64)}` } }))
          .status,
        403,
        path
      )
      assert.equal((await raw(d.url + path, { headers: bearer })).status, 200, path)
    }
    const write = await raw(`${d.url}/api/batches`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: new Uint8Array(8)
    })
    assert.equal(write.status, 401)
    assert.match(write.body, /api\.token/)
    // health checks and Prometheus on this machine need nothing
    assert.equal((await raw(`${d.url}/api/health`)).status, 200)
    assert.equal((await raw(`${d.url}/metrics`)).status, 200)
  })

  it('refuses a process running as uid 65534: it cannot read the token, and is refused without it', async () => {
    const script = `
      const fs = require('node:fs')
      let read = 'read'
      try { fs.readFileSync(${JSON.stringify(d.tokenFile)}) } catch (e) { read = e.code }
      const get = p => fetch(${JSON.stringify(d.url)} + p).then(r => r.status)
      Promise.all([get('/api/docs/devices'), get('/api/workloads/x/logs'),
        fetch(${JSON.stringify(d.url)} + '/api/trust', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' }).then(r => r.status)])
        .then(s => console.log(JSON.stringify({ read, statuses: s })))`
    // That user must be able to run Node: the repository may sit in a directory only root can
    // enter (a fresh CI clone in a 0700 temporary directory), so run a copy from one it can.
    const bin = await mkdtemp(join(tmpdir(), 'rhizome-node-'))
    await chmod(bin, 0o755)
    await copyFile(process.execPath, join(bin, 'node'))
    await chmod(join(bin, 'node'), 0o755)
    const out = await new Promise<string>((resolve, reject) => {
      const p = spawn(join(bin, 'node'), ['-e', script], {
        uid: 65534,
        gid: 65534,
        stdio: ['ignore', 'pipe', 'inherit']
      })
      let text = ''
      p.stdout.setEncoding('utf8').on('data', (x: string) => (text += x))
      p.once('error', reject)
      p.once('exit', () => resolve(text))
    })
    await rm(bin, { recursive: true, force: true })
    assert.deepEqual(JSON.parse(out), { read: 'EACCES', statuses: [401, 401, 401] })
  })

  it('refuses another Host (DNS rebinding), cross-site requests and text/plain writes, even with the token', async () => {
    const bearer = { authorization: `Bearer ${token}` }
    const rebound = await raw(`${d.url}/api/status`, {
      headers: { ...bearer, host: 'attacker.example' }
    })
    assert.equal(rebound.status, 403)
    assert.match(rebound.body, /ForbiddenHost/)
    const crossSite = await raw(`${d.url}/api/batches`, {
      method: 'POST',
      headers: { 'content-type': 'text/plain', origin: 'http://attacker.example' },
      body: 'x'
    })
    assert.equal(crossSite.status, 403)
    assert.match(crossSite.body, /CrossSiteRequest/)
    const fetchSite = await raw(`${d.url}/api/status`, {
      headers: { ...bearer, 'sec-fetch-site': 'cross-site' }
    })
    assert.equal(fetchSite.status, 403)
    const plain = await raw(`${d.url}/api/batches`, {
      method: 'POST',
      headers: { ...bearer, 'content-type': 'text/plain' },
      body: 'x'
    })
    assert.equal(plain.status, 415)
    const sameOrigin = await raw(`${d.url}/api/status`, {
      headers: { ...bearer, origin: d.url, 'sec-fetch-site': 'same-origin' }
    })
    assert.equal(sameOrigin.status, 200)
  })

  it('refuses a client that keeps posting invalid batches for a while', async () => {
    const post = (): Promise<Answer> =>
      raw(`${d.url}/api/batches`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream' },
        body: new Uint8Array(64).fill(7)
      })
    const statuses: number[] = []
    for (let i = 0; i < INVALID_WRITES_PER_WINDOW + 2; i++) statuses.push((await post()).status)
    assert.deepEqual(
      statuses.slice(0, INVALID_WRITES_PER_WINDOW),
      Array(INVALID_WRITES_PER_WINDOW).fill(400)
    )
    assert.equal(statuses.at(-1), 429)
  })

  it('rhizome dashboard: a one-time token that reads the trust chain only, never logged in full', async () => {
    const r = await rhizome(['dashboard', '--daemon', d.url])
    assert.equal(r.code, 0, r.stderr)
    const viewer = /#token=([0-9a-f]+)/.exec(r.stdout)?.[1]
    assert.ok(viewer !== undefined, r.stdout)
    const as = { authorization: `Bearer ${viewer}` }
    assert.equal((await raw(`${d.url}/api/trust`, { headers: as })).status, 200)
    assert.equal((await raw(`${d.url}/api/status`, { headers: as })).status, 403)
    assert.doesNotMatch(r.stderr, /WebSocket/)
    await d.waitFor(e => e.event === 'dashboard.issued', 5000, 'the issue logged')
    assert.ok(!d.stderr.some(l => l.includes(viewer)), 'the viewer token is not in the log')
    assert.ok(!d.stderr.some(l => l.includes(token)), 'the API token is not in the log')
  })

  it('rhizome dashboard says so when the daemon listens on no WebSocket address', async () => {
    // A daemon (it proves the token) whose mesh listens on plain TCP only.
    const fake = createServer((req, res) => {
      const nonce = new URL(req.url ?? '/', 'http://x').searchParams.get('nonce') ?? ''
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(
        JSON.stringify(
          req.url?.startsWith('/api/proof') === true
            ? { proof: apiProof(token, nonce) }
            : {
                url: 'http://127.0.0.1:1/#token=ab',
                expiresAt: Date.now() + 60_000,
                joinsThrough: null
              }
        )
      )
    })
    await new Promise<void>(resolve => fake.listen(0, '127.0.0.1', resolve))
    try {
      const url = `http://127.0.0.1:${(fake.address() as AddressInfo).port}`
      const r = await rhizome(['dashboard', '--daemon', url], { RHIZOME_TOKEN_FILE: d.tokenFile })
      assert.equal(r.code, 0, r.stderr)
      assert.match(r.stdout, /#token=ab/)
      assert.match(r.stderr, /listens on no WebSocket address.*\/ws/)
    } finally {
      await new Promise(resolve => fake.close(resolve))
    }
  })

  it('the CLI says which token file it could not read', async () => {
    const r = await rhizome(['status', '--daemon', d.url], {
      RHIZOME_TOKEN_FILE: join(dir, 'no-such-file')
    })
    assert.equal(r.code, 2)
    assert.match(r.stderr, /no-such-file \(ENOENT\)/)
  })

  it('the CLI sends its token only to a daemon that proves it holds it, not to a program squatting the port', async () => {
    // Another local program listening where the CLI looks for the daemon (it took the port while
    // the daemon was down): it answers everything, proves nothing, and keeps what it is sent.
    const seen: string[] = []
    for (const proof of ['0'.repeat(64), undefined]) {
      const squatter = createServer((req, res) => {
        seen.push(`${req.url} ${req.headers.authorization ?? ''}`)
        if (req.url?.startsWith('/api/proof') === true && proof === undefined) {
          res.writeHead(404, { 'content-type': 'application/json' })
          res.end('{"error":"NotFound","message":"no such route"}')
          return
        }
        res.writeHead(200, { 'content-type': 'application/json' })
        res.end(JSON.stringify(req.url?.startsWith('/api/proof') === true ? { proof } : {}))
      })
      await new Promise<void>(resolve => squatter.listen(0, '127.0.0.1', resolve))
      const url = `http://127.0.0.1:${(squatter.address() as AddressInfo).port}`
      try {
        const r = await rhizome(['status', '--daemon', url], { RHIZOME_TOKEN_FILE: d.tokenFile })
        assert.equal(r.code, 3, `exit ${r.code}: ${r.stdout}\n${r.stderr}`)
        assert.match(r.stderr, /could not prove|refused to prove/)
        assert.match(r.stderr, /nothing secret was sent/)
      } finally {
        await new Promise(resolve => squatter.close(resolve))
      }
    }
    assert.ok(seen.length > 0, 'the CLI asked the squatter')
    // A squatter that answers the proof with an endless body: the CLI reads a few KiB, not all.
    let streamed = 0
    const flood = createServer((req, res) => {
      seen.push(`${req.url} ${req.headers.authorization ?? ''}`)
      res.writeHead(200, { 'content-type': 'application/json' })
      const piece = Buffer.alloc(64 * 1024, 0x20)
      // Bounded: at most 256 MiB, and only while the CLI keeps reading.
      const more = (): void => {
        while (streamed < 256 * 1024 * 1024 && !res.destroyed) {
          streamed += piece.length
          if (!res.write(piece)) return void res.once('drain', more)
        }
        res.end()
      }
      more()
    })
    await new Promise<void>(resolve => flood.listen(0, '127.0.0.1', resolve))
    try {
      const url = `http://127.0.0.1:${(flood.address() as AddressInfo).port}`
      const r = await rhizome(['status', '--daemon', url], { RHIZOME_TOKEN_FILE: d.tokenFile })
      assert.equal(r.code, 3, `exit ${r.code}: ${r.stdout}\n${r.stderr}`)
      assert.match(r.stderr, /could not prove/)
      assert.ok(streamed < 16 * 1024 * 1024, `the CLI read ${streamed} bytes of a proof reply`)
    } finally {
      flood.closeAllConnections()
      await new Promise(resolve => flood.close(resolve))
    }
    assert.deepEqual(
      seen.filter(l => l.includes(token)),
      [],
      `the token reached the squatter: ${seen.join('; ')}`
    )
    // The real daemon proves it, and the same command works.
    const ok = await rhizome(['status', '--daemon', d.url], { RHIZOME_TOKEN_FILE: d.tokenFile })
    assert.equal(ok.code, 0, ok.stderr)
  })
})
