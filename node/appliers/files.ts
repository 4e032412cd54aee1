/**
 * Managed files: written atomically (temp file in the same directory, then rename) with their
 * modes, only below the allowed roots, under `root` (default `/`), and never through a symbolic
 * link (safe-path.ts: a link planted below an allowed root, by a workload say, could otherwise
 * send a write anywhere), nor ever to the daemon's own config file, trust file or data directory,
 * compared by real path, whatever the allowed roots (protected-paths.ts). Modes that set setuid or setgid, or that let anyone write, are refused
 * unless the daemon config allows them (`allowUnsafeModes`). A managed file changed by hand is
 * found by `checkDrift` (polled by the daemon), put back, and reported as drifted. Files the
 * config drops are removed. Paths in the config are absolute (`/etc/motd`); `root` is prefixed,
 * so tests and demos write into a temporary directory.
 */
import { createHash } from 'node:crypto'
import { basename, dirname, join, normalize, relative } from 'node:path'
import { logger } from '@libp2p/logger'
import { parseMode } from '../../crdt/file-mode.ts'
import { DRIFT_SHOWN_MS } from '../../crdt/fleet-status.ts'
import type { ProtectedPaths } from './protected-paths.ts'
import {
  belowAllowedRoot,
  openBelow,
  readRegular,
  removeEntry,
  writeReplacing,
  type OpenDir
} from './safe-path.ts'

const log = logger('rhizome:node:files')

export const MAX_MANAGED_FILES = 1000
export const MAX_FILE_BYTES = 4 * 1024 * 1024
export const MAX_DRIFT_REPORTED = 20

export interface FileSpec {
  content: string
  mode: number
}
export interface FileStatus {
  ok: boolean
  /** Paths put back within DRIFT_SHOWN_MS, newest first (at most MAX_DRIFT_REPORTED). */
  drifted: string[]
  /** When each of `drifted` was put back, ms since the epoch. */
  putBackAt: Record<string, number>
  errors: string[]
}

interface Managed {
  spec: FileSpec
  hash: string
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex')

export { parseMode } from '../../crdt/file-mode.ts'

/** Mode bits refused unless the daemon config allows them: setuid, setgid, writable by anyone. */
export const UNSAFE_MODE_BITS = 0o4000 | 0o2000 | 0o002

/** Why `mode` is refused, or undefined if it is allowed. */
export function unsafeMode(mode: number, allowUnsafe: boolean): string | undefined {
  if (allowUnsafe || (mode & UNSAFE_MODE_BITS) === 0) return undefined
  const what = [
    (mode & 0o4000) !== 0 ? 'setuid' : '',
    (mode & 0o2000) !== 0 ? 'setgid' : '',
    (mode & 0o002) !== 0 ? 'writable by anyone' : ''
  ].filter(w => w !== '')
  return `mode ${mode.toString(8).padStart(4, '0')} is ${what.join(' and ')}; the daemon config does not allow that (allowUnsafeModes: true does)`
}

/** Where a managed path lands: its allowed root on disk, the directories below it, its name. */
interface Target {
  root: string
  dirs: string[]
  name: string
}

export class FilesApplier {
  private readonly root: string
  private readonly allowed: string[]
  private readonly allowUnsafeModes: boolean
  private managed = new Map<string, Managed>()
  /** Path → when it was last put back; newest first, at most MAX_DRIFT_REPORTED. */
  private drifted = new Map<string, number>()
  private errors: string[] = []
  private readonly onDrift: (path: string) => void
  private readonly now: () => number
  private readonly protect: ProtectedPaths | undefined

  constructor(opts: {
    root: string
    allowedRoots: string[]
    allowUnsafeModes?: boolean
    /** Never written, whatever allowedRoots says: the daemon's config, trust file, data directory. */
    protect?: ProtectedPaths
    onDrift?: (path: string) => void
    /** The clock put-backs are stamped with (tests move it). */
    now?: () => number
  }) {
    this.root = opts.root
    this.allowed = opts.allowedRoots.map(r => normalize(r.endsWith('/') ? r : r + '/'))
    this.allowUnsafeModes = opts.allowUnsafeModes ?? false
    this.onDrift = opts.onDrift ?? (() => {})
    this.now = opts.now ?? Date.now
    this.protect = opts.protect
  }

  private target(path: string): Target {
    const { path: p, root: allowed } = belowAllowedRoot(path, this.allowed)
    const rel = relative(allowed, dirname(p))
    return {
      root: join(this.root, allowed).replace(/(.)\/+$/, '$1'),
      dirs: rel === '' ? [] : rel.split('/'),
      name: basename(p)
    }
  }

  private async inDir<T>(
    t: Target,
    create: boolean,
    fn: (dir: OpenDir) => Promise<T>
  ): Promise<T | undefined> {
    const dir = await openBelow(t.root, t.dirs, create)
    if (dir === undefined) return undefined
    try {
      return await fn(dir)
    } finally {
      await dir.close()
    }
  }

  /** Make the managed files equal `desired` (path → {content, mode?}). */
  async apply(desired: Record<string, unknown>): Promise<FileStatus> {
    const errors: string[] = []
    const put: string[] = []
    const next = new Map<string, Managed>()
    const entries = Object.entries(desired).slice(0, MAX_MANAGED_FILES)
    if (Object.keys(desired).length > MAX_MANAGED_FILES) {
      errors.push(`more than ${MAX_MANAGED_FILES} files configured; the rest are ignored`)
    }
    for (const [path, raw] of entries) {
      try {
        const r = raw as { content?: unknown; mode?: unknown }
        if (typeof r !== 'object' || r === null) throw new Error('expected { content, mode? }')
        const content =
          typeof r.content === 'string'
            ? r.content
            : r.content === undefined
              ? ''
              : JSON.stringify(r.content)
        if (content.length > MAX_FILE_BYTES) {
          throw new Error(`content is larger than ${MAX_FILE_BYTES} bytes`)
        }
        const spec = { content, mode: parseMode(r.mode) }
        const refused = unsafeMode(spec.mode, this.allowUnsafeModes)
        if (refused !== undefined) throw new Error(refused)
        const target = this.target(path)
        await this.protect?.check(target.root, [...target.dirs, target.name], path)
        const held = this.managed.get(path)
        const wrote = await this.writeIfDifferent(target, spec)
        // The same spec as the last pass, and yet the file had to be written: changed by hand
        // since, and put back by this pass rather than by `checkDrift`. Drift all the same.
        if (wrote && held?.hash === sha(content) && held.spec.mode === spec.mode) put.push(path)
        next.set(path, { spec, hash: sha(content) })
      } catch (err) {
        errors.push(`${path}: ${(err as Error).message}`)
      }
    }
    for (const path of this.managed.keys()) {
      if (next.has(path) || Object.hasOwn(desired, path)) continue
      try {
        await this.inDir(this.target(path), false, dir => removeEntry(dir, this.target(path).name))
      } catch (err) {
        errors.push(`${path}: remove failed: ${(err as Error).message}`)
      }
    }
    this.managed = next
    this.errors = errors
    this.putBack(put)
    return this.status()
  }

  private async writeIfDifferent(target: Target, spec: FileSpec): Promise<boolean> {
    const wrote = await this.inDir(target, true, async dir => {
      const held = await readRegular(dir, target.name, MAX_FILE_BYTES)
      if (
        held !== undefined &&
        held.mode === spec.mode &&
        held.content.toString() === spec.content
      ) {
        return false
      }
      await writeReplacing(dir, target.name, spec.content, spec.mode)
      return true
    })
    return wrote === true
  }

  /** Compare every managed file with its spec; put changed ones back. Returns the paths put back. */
  async checkDrift(): Promise<string[]> {
    const put: string[] = []
    for (const [path, m] of this.managed) {
      try {
        if (await this.writeIfDifferent(this.target(path), m.spec)) {
          put.push(path)
          log('drift: %s was changed by hand; put back', path)
        }
      } catch (err) {
        log.error('drift check of %s failed: %e', path, err)
      }
    }
    this.putBack(put)
    return put
  }

  /** Record files put back after a change by hand, newest first, and say so. */
  private putBack(put: readonly string[]): void {
    if (put.length === 0) return
    const now = this.now()
    const older = [...this.drifted].filter(([p]) => !put.includes(p))
    this.drifted = new Map(
      [...put.map(p => [p, now] as const), ...older].slice(0, MAX_DRIFT_REPORTED)
    )
    for (const p of put) this.onDrift(p)
  }

  status(): FileStatus {
    // A put-back is news for DRIFT_SHOWN_MS, then it ages out of the status body.
    const since = this.now() - DRIFT_SHOWN_MS
    for (const [p, at] of this.drifted) if (at < since) this.drifted.delete(p)
    return {
      ok: this.errors.length === 0,
      drifted: [...this.drifted.keys()],
      putBackAt: Object.fromEntries(this.drifted),
      errors: [...this.errors]
    }
  }
}
