/**
 * Managed files against a hostile file system: a symbolic link below an allowed root (planted
 * by a workload, say) never carries a write outside it, a link at the file's own name is
 * replaced rather than written through, a FIFO there does not stall the daemon, and modes that
 * set setuid or setgid or let anyone write are refused unless the daemon config allows them, and
 * the daemon's own config file, trust file and data directory are never written, whatever the
 * allowed roots say (by the applier, and through a real daemon whose allowed root holds them).
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import {
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  rm,
  stat,
  symlink,
  writeFile
} from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { stringify } from 'yaml'
import { FilesApplier } from '../node/appliers/files.ts'
import { ProtectedPaths } from '../node/appliers/protected-paths.ts'
import {
  applyFleet,
  daemonConfig,
  getJson,
  initFleet,
  startDaemon,
  stopAll
} from './fixtures/node-harness.ts'
import { waitFor } from './fixtures/wait.ts'

/**
 * Run `fn` in a scratch directory holding `root` (the files root, with srv/app made) and
 * `outside` (a directory beside it), removed afterwards.
 */
async function inSandbox(fn: (dirs: { root: string; outside: string }) => Promise<void>) {
  const dir = await mkdtemp(join(tmpdir(), 'rhizome-files-'))
  try {
    const root = join(dir, 'root')
    const outside = join(dir, 'outside')
    await mkdir(join(root, 'srv/app'), { recursive: true })
    await mkdir(outside)
    await fn({ root, outside })
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

describe('managed files', () => {
  it('never writes through a symbolic link out of an allowed root', async () => {
    await inSandbox(async ({ root, outside }) => {
      await symlink(outside, join(root, 'srv/app/data'))
      await mkdir(join(root, 'srv/app/deep/er'), { recursive: true })
      await symlink(outside, join(root, 'srv/app/deep/er/link'))
      const files = new FilesApplier({ root, allowedRoots: ['/srv/app'] })
      const s = await files.apply({
        '/srv/app/data/passwd': { content: 'pwned\n' },
        '/srv/app/deep/er/link/x/y': { content: 'pwned\n' },
        '/srv/app/fine/conf': { content: 'ok\n' }
      })
      assert.deepEqual(await readdir(outside), [], 'nothing was written outside')
      assert.equal(s.errors.length, 2, s.errors.join('\n'))
      for (const e of s.errors) assert.match(e, /is a symbolic link .*never written through links/)
      assert.equal(await readFile(join(root, 'srv/app/fine/conf'), 'utf8'), 'ok\n')
      // Drift checks go the same way: still nothing outside.
      await files.checkDrift()
      assert.deepEqual(await readdir(outside), [])
    })
  })

  it('replaces a link at the file’s own name instead of writing where it points', async () => {
    await inSandbox(async ({ root, outside }) => {
      const victim = join(outside, 'victim')
      execFileSync('sh', ['-c', `printf original > ${victim}`])
      await symlink(victim, join(root, 'srv/app/conf'))
      const files = new FilesApplier({ root, allowedRoots: ['/srv/app'] })
      const s = await files.apply({ '/srv/app/conf': { content: 'managed\n' } })
      assert.deepEqual(s.errors, [])
      assert.equal(await readFile(victim, 'utf8'), 'original')
      assert.equal((await lstat(join(root, 'srv/app/conf'))).isFile(), true)
      assert.equal(await readFile(join(root, 'srv/app/conf'), 'utf8'), 'managed\n')
    })
  })

  it('is not stalled by a FIFO planted at a managed name', async () => {
    await inSandbox(async ({ root }) => {
      execFileSync('mkfifo', [join(root, 'srv/app/conf')])
      const files = new FilesApplier({ root, allowedRoots: ['/srv/app'] })
      const s = await Promise.race([
        files.apply({ '/srv/app/conf': { content: 'managed\n' } }),
        new Promise<never>((_, reject) =>
          setTimeout(() => reject(new Error('the apply hung on the FIFO')), 5000).unref()
        )
      ])
      assert.deepEqual(s.errors, [])
      assert.equal(await readFile(join(root, 'srv/app/conf'), 'utf8'), 'managed\n')
    })
  })

  it('refuses setuid, setgid and world-writable modes unless the config allows them', async () => {
    await inSandbox(async ({ root }) => {
      const desired = {
        '/srv/app/suid': { content: '#!/bin/sh\n', mode: '4755' },
        '/srv/app/sgid': { content: '#!/bin/sh\n', mode: '2755' },
        '/srv/app/open': { content: 'x', mode: '0666' },
        '/srv/app/plain': { content: 'x', mode: '0640' }
      }
      const strict = await new FilesApplier({ root, allowedRoots: ['/srv/app'] }).apply(desired)
      assert.equal(strict.errors.length, 3, strict.errors.join('\n'))
      assert.match(strict.errors.join('\n'), /4755 is setuid.*allowUnsafeModes/)
      assert.deepEqual(await readdir(join(root, 'srv/app')), ['plain'])
      assert.equal((await stat(join(root, 'srv/app/plain'))).mode & 0o7777, 0o640)
      const lax = await new FilesApplier({
        root,
        allowedRoots: ['/srv/app'],
        allowUnsafeModes: true
      }).apply(desired)
      assert.deepEqual(lax.errors, [])
      assert.equal((await stat(join(root, 'srv/app/suid'))).mode & 0o7777, 0o4755)
    })
  })

  it('never writes the daemon’s config file, trust file or data directory, whatever allowedRoots says, also through a linked allowed root', async () => {
    await inSandbox(async ({ root }) => {
      const etc = join(root, 'etc/rhizome')
      const data = join(root, 'var/lib/rhizome')
      await mkdir(etc, { recursive: true })
      await mkdir(join(data, 'store'), { recursive: true })
      await writeFile(join(etc, 'rhizome.yaml'), 'workloadUser: rhizome-workload\n')
      await writeFile(join(etc, 'trust.json'), '{}')
      await writeFile(join(data, 'identity.key'), 'the key')
      // An allowed root that is itself a link to the daemon's config directory.
      await symlink(etc, join(root, 'srv/cfg'))
      const protect = new ProtectedPaths([
        { path: join(etc, 'rhizome.yaml'), what: 'config file' },
        { path: join(etc, 'trust.json'), what: 'trust file' },
        { path: data, what: 'data directory' }
      ])
      const files = new FilesApplier({
        root,
        allowedRoots: ['/etc/rhizome', '/var/lib', '/srv/cfg'],
        protect
      })
      const s = await files.apply({
        '/etc/rhizome/rhizome.yaml': { content: 'workloadUser: root\n' },
        '/etc/rhizome/trust.json': { content: '{"forged":true}' },
        '/var/lib/rhizome/identity.key': { content: 'another key' },
        '/var/lib/rhizome/store/new/x': { content: 'x' },
        '/srv/cfg/rhizome.yaml': { content: 'workloadUser: root\n' },
        '/etc/rhizome/motd': { content: 'hello\n' },
        '/var/lib/other/conf': { content: 'ok\n' }
      })
      assert.equal(s.errors.length, 5, s.errors.join('\n'))
      for (const e of s.errors) {
        assert.match(
          e,
          /the daemon's own (config file|trust file|data directory) .*whatever allowedRoots says/
        )
      }
      assert.match(
        s.errors.join('\n'),
        /^\/srv\/cfg\/rhizome\.yaml: .* is the daemon's own config file/m
      )
      assert.equal(
        await readFile(join(etc, 'rhizome.yaml'), 'utf8'),
        'workloadUser: rhizome-workload\n'
      )
      assert.equal(await readFile(join(etc, 'trust.json'), 'utf8'), '{}')
      assert.equal(await readFile(join(data, 'identity.key'), 'utf8'), 'the key')
      assert.deepEqual(await readdir(join(data, 'store')), [], 'no directory was made in it')
      // The rest applies.
      assert.equal(await readFile(join(etc, 'motd'), 'utf8'), 'hello\n')
      assert.equal(await readFile(join(root, 'var/lib/other/conf'), 'utf8'), 'ok\n')
    })
  })
})

describe('a daemon whose allowed root holds its own config', { timeout: 120_000 }, () => {
  it('refuses a signed config that would rewrite its config file or data directory, and applies the rest', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rhizome-own-config-'))
    try {
      const env = { RHIZOME_PASSPHRASE: 'own config test passphrase' }
      await initFleet(dir, 'own', ['n1'], env)
      const config = join(dir, 'n1.yaml')
      // Files land on the real file system, below the directory that holds the daemon's config,
      // trust file and data directory.
      const text = stringify(
        daemonConfig(dir, 'n1', { filesRoot: '/', allowedRoots: [dir], mdns: false })
      )
      await writeFile(config, text)
      const d = await startDaemon(config)
      const apply = await applyFleet(
        dir,
        {
          fleet: {
            defaults: {
              files: {
                [config]: { content: 'workloadUser: root\n' },
                [join(dir, 'fleet/trust.json')]: { content: '{}' },
                [join(dir, 'data-n1/api.token')]: { content: 'known\n' },
                [join(dir, 'fine.txt')]: { content: 'applied\n' }
              }
            }
          }
        },
        d.url,
        env
      )
      assert.equal(apply.code, 0, apply.stderr)
      await waitFor(
        'the rest of the config to apply',
        async () => (await readFile(join(dir, 'fine.txt'), 'utf8').catch(() => '')) === 'applied\n'
      )
      const errors = await waitFor('the refusals in the status', async () => {
        const s = await getJson<{ nodes: Array<{ status: { errors?: string[] } }> }>(
          `${d.url}/api/status`
        )
        const e = s.nodes[0]?.status?.errors ?? []
        return e.length >= 3 ? e : undefined
      })
      assert.match(errors.join('\n'), /n1\.yaml: .*the daemon's own config file/)
      assert.match(errors.join('\n'), /trust\.json: .*the daemon's own trust file/)
      assert.match(errors.join('\n'), /api\.token: .*in the daemon's own data directory/)
      assert.equal(await readFile(config, 'utf8'), text)
      assert.notEqual(await readFile(join(dir, 'data-n1/api.token'), 'utf8'), 'known\n')
      await d.stop()
    } finally {
      await stopAll()
      await rm(dir, { recursive: true, force: true })
    }
  })
})
