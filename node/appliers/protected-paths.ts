/**
 * What no signed config may write, whatever `allowedRoots` says: the daemon's own config file,
 * its trust file and its data directory (device key, API token, store, trust copy, artifacts).
 * A file there could change the daemon's config for its next start (`workloadUser: root`), swap
 * the fleet's genesis, or replace the device key.
 *
 * Paths are compared as real paths, so an allowed root that is itself a link (or a `filesRoot`
 * that leads back to `/`) does not hide them: a managed path's real location is the real path of
 * its allowed root on disk followed by the components below it, which hold no link (safe-path.ts
 * refuses to walk through one). The check comes before any directory is created.
 */
import { realpath } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { UnsafePathError } from './safe-path.ts'

export interface ProtectedPath {
  /** A file, or a directory with everything below it. */
  path: string
  /** What it is, for the error: "config file", "data directory". */
  what: string
}

/**
 * The real path of `p`, also where it does not exist yet: the real path of its nearest existing
 * ancestor followed by the rest.
 */
async function realPathOf(p: string): Promise<string> {
  const abs = resolve(p)
  try {
    return await realpath(abs)
  } catch {
    const parent = dirname(abs)
    return parent === abs ? abs : join(await realPathOf(parent), basename(abs))
  }
}

const within = (p: string, top: string): boolean =>
  p === top || p.startsWith(top === '/' ? top : `${top}/`)

export class ProtectedPaths {
  private readonly paths: ProtectedPath[]
  private resolved: Promise<ProtectedPath[]> | undefined

  constructor(paths: Array<{ path: string | undefined; what: string }>) {
    this.paths = paths.filter((p): p is ProtectedPath => p.path !== undefined)
  }

  /**
   * Refuse (UnsafePathError) the managed path `shown` whose directory on disk is `root` (an
   * allowed root, taken as it is) followed by `below` (no links), if it lands on or in a
   * protected path.
   */
  async check(root: string, below: string[], shown: string): Promise<void> {
    // Resolved once: they are the device owner's, and exist before the first pass.
    this.resolved ??= Promise.all(
      this.paths.map(async p => ({ ...p, path: await realPathOf(p.path) }))
    )
    const real = join(await realPathOf(root), ...below)
    for (const p of await this.resolved) {
      if (within(real, p.path)) {
        throw new UnsafePathError(
          `${shown} is ${real === p.path ? '' : 'in '}the daemon's own ${p.what} (${p.path}); a signed config never writes the daemon's config file, trust file or data directory, whatever allowedRoots says`
        )
      }
    }
  }
}
