/**
 * The `rhizome` command as a user runs it: the launcher (bin/rhizome.cjs) on a Node that is
 * too old, `--version`, output into a pipe that closes early, and `npm run rhizome -- …` with
 * paths relative to where the user is.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { CLI } from './fixtures/node-harness.ts'

const ROOT = fileURLToPath(new URL('..', import.meta.url))
const LAUNCHER = join(ROOT, 'bin/rhizome.cjs')
const VERSION = (
  JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }
).version

/** A Node older than 22 on this machine (Debian's is 20), or undefined. */
function oldNode(): string | undefined {
  for (const candidate of ['/usr/bin/node', '/usr/local/bin/node']) {
    if (!existsSync(candidate)) continue
    const v = spawnSync(candidate, ['--version'], { encoding: 'utf8' }).stdout.trim()
    if (/^v\d+/.test(v) && Number(v.slice(1).split('.')[0]) < 22) return candidate
  }
  return undefined
}

test('on a Node older than 22 the command says so and what to do, without a stack trace', t => {
  const node = oldNode()
  if (node === undefined) {
    t.skip('no Node older than 22 on this machine to try the launcher with')
    return
  }
  const r = spawnSync(node, [LAUNCHER, 'status'], { encoding: 'utf8' })
  assert.equal(r.status, 1, r.stderr)
  assert.match(r.stderr, /rhizome needs Node\.js 22 or later/)
  assert.match(r.stderr, /put it first on the PATH/)
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace')
})

test('--version prints the package version', () => {
  const r = spawnSync(process.execPath, [LAUNCHER, '--version'], { encoding: 'utf8' })
  assert.equal(r.status, 0, r.stderr)
  assert.equal(r.stdout.split(' ')[0], VERSION)
})

test('output into a pipe whose reader has gone ends quietly, not with an EPIPE stack trace', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rhizome-epipe-'))
  try {
    // `rhizome init … | true`: the reader exits before the command writes its summary.
    const p = spawn(process.execPath, [CLI, 'init', '--dir', join(dir, 'fleet')], {
      env: { ...process.env, RHIZOME_PASSPHRASE: 'pipe-test-passphrase' },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    p.stdout.destroy()
    let stderr = ''
    p.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d
    })
    const code = await new Promise<number | null>(resolve => p.once('exit', resolve))
    assert.equal(stderr, '')
    assert.equal(code, 0)
    assert.ok(existsSync(join(dir, 'fleet/trust.json')), 'the command still did its work')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})

test('`npm run rhizome -- …` resolves relative paths against the directory it is run from', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rhizome-npm-run-'))
  try {
    const r = spawnSync(
      'npm',
      ['run', '-s', '--prefix', ROOT, 'rhizome', '--', 'init', '--dir', 'keys'],
      {
        cwd: dir,
        encoding: 'utf8',
        env: { ...process.env, RHIZOME_PASSPHRASE: 'npm-run-passphrase' }
      }
    )
    assert.equal(r.status, 0, r.stderr)
    assert.ok(existsSync(join(dir, 'keys/trust.json')), r.stdout)
    assert.ok(!existsSync(join(ROOT, 'keys')), 'nothing was written into the repository')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
})
