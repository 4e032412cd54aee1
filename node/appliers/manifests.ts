/**
 * Kubernetes manifests for k3s: each one is written to `<dir>/rhizome-<name>.yaml` (k3s's
 * auto-deploy directory applies files placed there) and removed when the config drops it. Only
 * files with the `rhizome-` prefix are ever deleted, so hand-placed manifests are left alone.
 */
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { stringify } from 'yaml'

export const MANIFEST_PREFIX = 'rhizome-'
const NAME = /^[a-z0-9][a-z0-9._-]{0,100}$/

export class ManifestsApplier {
  private readonly dir: string | undefined
  constructor(dir: string | undefined) {
    this.dir = dir
  }

  async apply(desired: Record<string, unknown>): Promise<{ written: string[]; errors: string[] }> {
    const errors: string[] = []
    const written: string[] = []
    if (this.dir === undefined) {
      if (Object.keys(desired).length > 0) {
        errors.push(
          'manifests are configured but this daemon has no manifestDir; set manifestDir in its config'
        )
      }
      return { written, errors }
    }
    await mkdir(this.dir, { recursive: true })
    const keep = new Set<string>()
    for (const [name, m] of Object.entries(desired)) {
      if (!NAME.test(name)) {
        errors.push(`manifest "${name}": names are lower-case letters, digits, . _ -`)
        continue
      }
      const file = `${MANIFEST_PREFIX}${name}.yaml`
      keep.add(file)
      const text = typeof m === 'string' ? m : stringify(m)
      const target = join(this.dir, file)
      let current: string | undefined
      try {
        current = await readFile(target, 'utf8')
      } catch {}
      if (current === text) continue
      const tmp = join(this.dir, `.${file}.tmp`)
      await writeFile(tmp, text, { mode: 0o600 })
      await rename(tmp, target)
      written.push(name)
    }
    for (const f of await readdir(this.dir)) {
      if (f.startsWith(MANIFEST_PREFIX) && f.endsWith('.yaml') && !keep.has(f)) {
        await rm(join(this.dir, f), { force: true })
      }
    }
    return { written, errors }
  }
}
