/**
 * Managed files: written atomically (temp file in the same directory, then rename) with their
 * modes, only below the allowed roots, under `root` (default `/`). A managed file changed by
 * hand is found by `checkDrift` (polled by the daemon), put back, and reported as drifted.
 * Files the config drops are removed. Paths in the config are absolute (`/etc/motd`);
 * `root` is prefixed, so tests and demos write into a temporary directory.
 */
import { createHash } from 'node:crypto'
import { chmod, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { dirname, join, normalize } from 'node:path'
import { logger } from '@libp2p/logger'
import { parseMode } from '../../crdt/file-mode.ts'

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
  drifted: string[]
  errors: string[]
}

interface Managed {
  spec: FileSpec
  hash: string
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex')

export { parseMode } from '../../crdt/file-mode.ts'

export class FilesApplier {
  private readonly root: string
  private readonly allowed: string[]
  private managed = new Map<string, Managed>()
  private drifted: string[] = []
  private errors: string[] = []
  private readonly onDrift: (path: string) => void

  constructor(opts: { root: string; allowedRoots: string[]; onDrift?: (path: string) => void }) {
    this.root = opts.root
    this.allowed = opts.allowedRoots.map(r => normalize(r.endsWith('/') ? r : r + '/'))
    this.onDrift = opts.onDrift ?? (() => {})
  }

  private target(path: string): string {
    const p = normalize(path)
    if (!p.startsWith('/') || p.includes('\0')) throw new Error(`"${path}" is not an absolute path`)
    if (!this.allowed.some(r => r === '/' || p.startsWith(r))) {
      throw new Error(
        `"${path}" is outside the allowed roots (${this.allowed.join(', ')}); change allowedRoots in the daemon config to manage it`
      )
    }
    return join(this.root, p)
  }

  /** Make the managed files equal `desired` (path → {content, mode?}). */
  async apply(desired: Record<string, unknown>): Promise<FileStatus> {
    const errors: string[] = []
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
        const target = this.target(path)
        await this.writeIfDifferent(target, spec)
        next.set(path, { spec, hash: sha(content) })
      } catch (err) {
        errors.push(`${path}: ${(err as Error).message}`)
      }
    }
    for (const path of this.managed.keys()) {
      if (next.has(path) || Object.hasOwn(desired, path)) continue
      try {
        await rm(this.target(path), { force: true })
      } catch (err) {
        errors.push(`${path}: remove failed: ${(err as Error).message}`)
      }
    }
    this.managed = next
    this.errors = errors
    return this.status()
  }

  private async writeIfDifferent(target: string, spec: FileSpec): Promise<boolean> {
    let same = false
    try {
      const [buf, st] = await Promise.all([readFile(target, 'utf8'), stat(target)])
      same = buf === spec.content && (st.mode & 0o7777) === spec.mode
    } catch {}
    if (same) return false
    await mkdir(dirname(target), { recursive: true })
    const tmp = `${target}.rhizome-${process.pid}-${Date.now()}.tmp`
    await writeFile(tmp, spec.content, { mode: spec.mode })
    await chmod(tmp, spec.mode)
    await rename(tmp, target)
    return true
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
    if (put.length > 0) {
      this.drifted = [...put, ...this.drifted.filter(p => !put.includes(p))].slice(
        0,
        MAX_DRIFT_REPORTED
      )
      for (const p of put) this.onDrift(p)
    }
    return put
  }

  status(): FileStatus {
    return { ok: this.errors.length === 0, drifted: [...this.drifted], errors: [...this.errors] }
  }
}
