/**
 * `npm start`'s demo, twice at once from one directory: each claims its own directory and its
 * daemons take ports the system assigns, so neither fails on a port the other took (before, both
 * probed 8080, 4001, … and one died with EADDRINUSE, reported as "this is a bug").
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { getJson } from './fixtures/node-harness.ts'
import { waitFor } from './fixtures/wait.ts'

const DEMO = fileURLToPath(new URL('../node/demo.ts', import.meta.url))

test(
  'two demos started at once from one directory both come up',
  { timeout: 150_000 },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rhizome-demos-'))
    const demos: Array<{ proc: ChildProcess; out: string }> = []
    try {
      for (let i = 0; i < 2; i++) {
        const proc = spawn(process.execPath, [DEMO], {
          cwd: dir,
          stdio: ['ignore', 'pipe', 'pipe']
        })
        const d = { proc, out: '' }
        proc.stdout.setEncoding('utf8').on('data', (s: string) => {
          d.out += s
        })
        proc.stderr.setEncoding('utf8').on('data', (s: string) => {
          d.out += s
        })
        demos.push(d)
      }
      for (const d of demos) {
        await waitFor(
          'the demo to report its fleet up',
          () => {
            if (d.proc.exitCode !== null) throw new Error(`the demo exited:\n${d.out}`)
            // Its last line: what comes before it may arrive in several reads.
            return /Ctrl-C stops everything/.test(d.out)
          },
          120_000,
          200
        )
      }
      const dirs = demos.map(d => /a fresh fleet in (\S+)/.exec(d.out)?.[1])
      assert.deepEqual(
        new Set(dirs),
        new Set([join(dir, '.rhizome-demo'), join(dir, '.rhizome-demo-2')])
      )
      for (const d of demos) {
        const apis = [...d.out.matchAll(/API (http:\/\/127\.0\.0\.1:\d+)/g)].map(
          m => m[1] as string
        )
        assert.equal(apis.length, 3, d.out)
        for (const api of apis) {
          assert.equal((await getJson<{ ok: boolean }>(`${api}/api/health`)).ok, true)
        }
      }
    } finally {
      await Promise.all(
        demos.map(
          d =>
            new Promise<void>(resolve => {
              if (d.proc.exitCode !== null || d.proc.signalCode !== null) {
                resolve()
                return
              }
              d.proc.once('exit', () => resolve())
              d.proc.kill('SIGINT')
              setTimeout(() => d.proc.kill('SIGKILL'), 20_000).unref()
            })
        )
      )
      assert.ok(
        !existsSync(join(dir, '.rhizome-demo.pid')),
        'a stopped demo releases its directory'
      )
      await rm(dir, { recursive: true, force: true })
    }
  }
)
