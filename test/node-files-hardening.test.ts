/**
 * Managed files against a hostile file system: a symbolic link below an allowed root (planted
 * by a workload, say) never carries a write outside it, a link at the file's own name is
 * replaced rather than written through, a FIFO there does not stall the daemon, and modes that
 * set setuid or setgid or let anyone write are refused unless the daemon config allows them.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { lstat, mkdir, mkdtemp, readFile, readdir, rm, stat, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { FilesApplier } from '../node/appliers/files.ts'

async function sandbox(): Promise<{ dir: string; root: string; outside: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'rhizome-files-'))
  const root = join(dir, 'root')
  const outside = join(dir, 'outside')
  await mkdir(join(root, 'srv/app'), { recursive: true })
  await mkdir(outside)
  return { dir, root, outside }
}

describe('managed files', () => {
  it('never writes through a symbolic link out of an allowed root', async () => {
    const { dir, root, outside } = await sandbox()
    try {
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
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('replaces a link at the file’s own name instead of writing where it points', async () => {
    const { dir, root, outside } = await sandbox()
    try {
      const victim = join(outside, 'victim')
      execFileSync('sh', ['-c', `printf original > ${victim}`])
      await symlink(victim, join(root, 'srv/app/conf'))
      const files = new FilesApplier({ root, allowedRoots: ['/srv/app'] })
      const s = await files.apply({ '/srv/app/conf': { content: 'managed\n' } })
      assert.deepEqual(s.errors, [])
      assert.equal(await readFile(victim, 'utf8'), 'original')
      assert.equal((await lstat(join(root, 'srv/app/conf'))).isFile(), true)
      assert.equal(await readFile(join(root, 'srv/app/conf'), 'utf8'), 'managed\n')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('is not stalled by a FIFO planted at a managed name', async () => {
    const { dir, root } = await sandbox()
    try {
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
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('refuses setuid, setgid and world-writable modes unless the config allows them', async () => {
    const { dir, root } = await sandbox()
    try {
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
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})
