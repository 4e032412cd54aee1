/**
 * Artifacts in the effective config, between the reconciler and the appliers:
 *
 * ```yaml
 * files:
 *   /opt/rhizome/model.onnx: { artifact: "sha256:…", mode: "0644" }   # a copy of the artifact
 *   /opt/rhizome/app:        { artifact: "sha256:…", unpack: tar }     # a link to it, unpacked
 * workloads:
 *   infer:
 *     artifact: "sha256:…"        # run from it: with `unpack: tar`, cwd defaults to the unpacked
 *     unpack: tar                 # directory and a command starting with ./ runs from there;
 *     command: [./bin/infer]      # env RHIZOME_ARTIFACT_DIR (tar) or RHIZOME_ARTIFACT (the file)
 * ```
 *
 * An entry switches to a new artifact only once it is complete and verified, and atomically: a
 * file is copied beside its target and renamed over it; an unpacked tree is unpacked in the store
 * and the target is a symbolic link swapped by rename; a workload's spec changes (so it restarts)
 * only then. Until then the entry keeps what it had (a workload keeps running its previous
 * artifact) and is reported as waiting, not as an error; the rest of the config applies.
 * What each entry runs and ran before is remembered in `applied.json` (so a restart keeps an old
 * version running while a new one is fetched), and both are kept through garbage collection.
 */
import { randomBytes } from 'node:crypto'
import { constants } from 'node:fs'
import { chmod, copyFile, lstat, readFile, readlink, rename, rm, symlink } from 'node:fs/promises'
import { join, normalize } from 'node:path'
import { logger } from '@libp2p/logger'
import type { ConfigObject, ConfigValue } from '../../crdt/effective-config.ts'
import { parseMode } from '../appliers/files.ts'
import type { ProtectedPaths } from '../appliers/protected-paths.ts'
import { belowAllowedRoot, openBelow, removeEntry, type OpenDir } from '../appliers/safe-path.ts'
import { isDigest, parseDigest, type ArtifactDigest } from './manifest.ts'
import { writeFileAtomic } from './store.ts'
import type { Artifacts } from './manager.ts'
import { isMap } from '../../crdt/config-shape.ts'

const log = logger('rhizome:node:artifacts:apply')

interface AppliedEntry {
  digest: ArtifactDigest
  previous?: ArtifactDigest
  /** Files: what the copy looked like when written (drift is a change of these). */
  stamp?: { ino: number; size: number; mtimeMs: number }
  /** Workloads: the spec handed to the process applier, kept to run on while the next is fetched. */
  spec?: ConfigObject
}

export interface ArtifactPass {
  /** The config with artifact files taken out and artifact workloads made plain. */
  config: ConfigObject
  errors: string[]
  /** Entries (`/path` or `workload:name`) whose artifact is not complete yet. */
  waiting: string[]
}

type Ref = { digest: ArtifactDigest; unpack: 'tar' | undefined }

function ref(v: Record<string, ConfigValue>, where: string): Ref {
  const digest = parseDigest(v.artifact, where)
  if (v.unpack !== undefined && v.unpack !== null && v.unpack !== 'tar') {
    throw new Error(`${where}: unpack must be "tar" (or left out), not ${JSON.stringify(v.unpack)}`)
  }
  return { digest, unpack: v.unpack === 'tar' ? 'tar' : undefined }
}

/** Every artifact digest the config names (files and workloads), in order. */
export function referencedArtifacts(config: ConfigObject): ArtifactDigest[] {
  const out: ArtifactDigest[] = []
  for (const section of [config.files, config.workloads]) {
    if (!isMap(section)) continue
    for (const v of Object.values(section)) {
      if (isMap(v) && isDigest(v.artifact)) out.push(v.artifact)
    }
  }
  return [...new Set(out)]
}

/**
 * A copy of a config section (files or workloads): an entry that names an artifact is replaced by
 * what `take` makes of it (left out when that is undefined), the others are kept as they are, in
 * their order.
 */
async function withArtifacts(
  section: ConfigObject,
  take: (key: string, v: ConfigObject) => Promise<ConfigValue | undefined>
): Promise<ConfigObject> {
  const out: ConfigObject = {}
  for (const [key, v] of Object.entries(section)) {
    const taken = isMap(v) && v.artifact !== undefined ? await take(key, v) : v
    if (taken !== undefined) out[key] = taken
  }
  return out
}

export class ArtifactApplier {
  private readonly artifacts: Artifacts
  private readonly root: string
  private readonly allowed: string[]
  private readonly protect: ProtectedPaths | undefined
  private readonly file: string
  private applied: Record<string, AppliedEntry> | undefined
  private pendingFiles: Array<{ path: string; ref: Ref; mode: number }> = []
  waiting: string[] = []

  constructor(opts: {
    artifacts: Artifacts
    root: string
    allowedRoots: string[]
    /** Never written, whatever allowedRoots says (node/appliers/protected-paths.ts). */
    protect?: ProtectedPaths
  }) {
    this.protect = opts.protect
    this.artifacts = opts.artifacts
    this.root = opts.root
    this.allowed = opts.allowedRoots.map(r => normalize(r.endsWith('/') ? r : r + '/'))
    this.file = join(opts.artifacts.store.dir, 'applied.json')
  }

  private async load(): Promise<Record<string, AppliedEntry>> {
    if (this.applied === undefined) {
      try {
        this.applied = JSON.parse(await readFile(this.file, 'utf8')) as Record<string, AppliedEntry>
      } catch {
        this.applied = {}
      }
    }
    return this.applied
  }

  private async save(): Promise<void> {
    await writeFileAtomic(this.file, Buffer.from(JSON.stringify(this.applied ?? {})))
  }

  /** Digests in use or kept for rollback (never collected). */
  async kept(): Promise<ArtifactDigest[]> {
    const a = await this.load()
    return Object.values(a).flatMap(e =>
      e.previous === undefined ? [e.digest] : [e.digest, e.previous]
    )
  }

  /**
   * Before the appliers: take artifact files out (applyFiles writes them after the files
   * applier), turn artifact workloads into plain ones, and tell the store what to fetch.
   */
  async resolve(config: ConfigObject): Promise<ArtifactPass> {
    const applied = await this.load()
    const errors: string[] = []
    const waiting: string[] = []
    const out: ConfigObject = { ...config }
    this.artifacts.want(referencedArtifacts(config), await this.kept())
    this.pendingFiles = []
    if (isMap(config.files)) {
      out.files = await withArtifacts(config.files, async (path, v) => {
        try {
          this.pendingFiles.push({ path, ref: ref(v, `files["${path}"]`), mode: parseMode(v.mode) })
        } catch (err) {
          errors.push(`${path}: ${(err as Error).message}`)
        }
        return undefined
      })
    }
    const managedWorkloads = new Set<string>()
    if (isMap(config.workloads)) {
      out.workloads = await withArtifacts(config.workloads, async (name, v) => {
        const key = `workload:${name}`
        managedWorkloads.add(key)
        try {
          const r = ref(v, `workloads.${name}`)
          const prev = applied[key]
          if (this.artifacts.isComplete(r.digest)) {
            const spec = await this.plainSpec(v, r)
            if (prev?.digest !== r.digest || JSON.stringify(prev.spec) !== JSON.stringify(spec)) {
              applied[key] = { digest: r.digest, spec, ...previousOf(prev, r.digest) }
            }
            return spec
          }
          waiting.push(key)
          // Keep running what ran before, if it is still on disk.
          if (prev?.spec !== undefined && this.artifacts.isComplete(prev.digest)) return prev.spec
        } catch (err) {
          errors.push(`workload "${name}": ${(err as Error).message}`)
        }
        return undefined
      })
    }
    for (const key of Object.keys(applied)) {
      if (key.startsWith('workload:') && !managedWorkloads.has(key)) delete applied[key]
    }
    this.waiting = waiting
    await this.save()
    return { config: out, errors, waiting }
  }

  private async plainSpec(v: Record<string, ConfigValue>, r: Ref): Promise<ConfigObject> {
    const { artifact: _a, unpack: _u, ...rest } = v
    const env = isMap(rest.env) ? { ...rest.env } : {}
    if (r.unpack === 'tar') {
      const dir = await this.artifacts.store.unpacked(r.digest)
      env.RHIZOME_ARTIFACT_DIR = dir
      const command = Array.isArray(rest.command) ? rest.command.map(String) : []
      if (command[0]?.startsWith('./') === true) command[0] = join(dir, command[0])
      return { ...rest, command, cwd: typeof rest.cwd === 'string' ? rest.cwd : dir, env }
    }
    env.RHIZOME_ARTIFACT = this.artifacts.store.blobPath(r.digest) as string
    return { ...rest, env }
  }

  /** After the files applier: put artifact files in place (those that are complete). */
  async applyFiles(): Promise<{ errors: string[]; waiting: string[] }> {
    const applied = await this.load()
    const errors: string[] = []
    const waiting: string[] = []
    const desired = new Set(this.pendingFiles.map(f => f.path))
    for (const f of this.pendingFiles) {
      try {
        const prev = applied[f.path]
        if (!this.artifacts.isComplete(f.ref.digest)) {
          waiting.push(f.path)
          continue
        }
        const stamp =
          f.ref.unpack === 'tar'
            ? await this.link(f.path, await this.artifacts.store.unpacked(f.ref.digest))
            : await this.copy(
                f.path,
                f.ref.digest,
                f.mode,
                prev?.digest === f.ref.digest ? prev.stamp : undefined
              )
        applied[f.path] = {
          digest: f.ref.digest,
          ...previousOf(prev, f.ref.digest),
          ...(stamp === undefined ? {} : { stamp })
        }
      } catch (err) {
        errors.push(`${f.path}: ${(err as Error).message}`)
      }
    }
    for (const [key, e] of Object.entries(applied)) {
      if (key.startsWith('workload:') || desired.has(key)) continue
      try {
        await this.remove(key, e)
      } catch (err) {
        errors.push(`${key}: remove failed: ${(err as Error).message}`)
      }
      delete applied[key]
    }
    this.waiting = [...this.waiting, ...waiting]
    await this.save()
    return { errors, waiting }
  }

  /**
   * Where an entry lives: its directory opened below the allowed root it is in, never through a
   * symbolic link (node/appliers/safe-path.ts, as the files applier writes), and its name there.
   */
  private async place(
    path: string,
    create: boolean
  ): Promise<{ dir: OpenDir; name: string } | undefined> {
    const { path: p, root } = belowAllowedRoot(path, this.allowed)
    const parts = p
      .slice(root.length)
      .split('/')
      .filter(x => x !== '')
    const name = parts.pop()
    if (name === undefined) {
      throw new Error(`"${path}" names an allowed root itself, not a file in it`)
    }
    await this.protect?.check(join(this.root, root), [...parts, name], path)
    const dir = await openBelow(join(this.root, root), parts, create)
    return dir === undefined ? undefined : { dir, name }
  }

  /** The entry becomes a link to `tree`, swapped by rename (a reader sees the old or the new tree). */
  private async link(path: string, tree: string): Promise<undefined> {
    const at = (await this.place(path, true))!
    try {
      const target = at.dir.entry(at.name)
      const st = await lstat(target).catch(() => undefined)
      if (st?.isSymbolicLink() === true && (await readlink(target)) === tree) return undefined
      if (st !== undefined && !st.isSymbolicLink()) {
        throw new Error(
          `exists and is not a link rhizome made (a ${st.isDirectory() ? 'directory' : 'file'}); move it away so the unpacked artifact can take its place`
        )
      }
      const tmp = `.${at.name}.rhizome-${randomBytes(6).toString('hex')}.link`
      await symlink(tree, at.dir.entry(tmp))
      await rename(at.dir.entry(tmp), target)
      log('%s -> %s', path, tree)
      return undefined
    } finally {
      await at.dir.close()
    }
  }

  /** The entry becomes a copy of the artifact, written beside it and renamed over it. */
  private async copy(
    path: string,
    d: ArtifactDigest,
    mode: number,
    stamp: AppliedEntry['stamp']
  ): Promise<AppliedEntry['stamp']> {
    const at = (await this.place(path, true))!
    try {
      const target = at.dir.entry(at.name)
      const st = await lstat(target).catch(() => undefined)
      if (
        st?.isFile() === true &&
        stamp !== undefined &&
        st.ino === stamp.ino &&
        st.size === stamp.size &&
        st.mtimeMs === stamp.mtimeMs &&
        (st.mode & 0o7777) === mode
      ) {
        return stamp
      }
      const tmp = at.dir.entry(`.${at.name}.rhizome-${randomBytes(6).toString('hex')}.tmp`)
      try {
        await copyFile(
          this.artifacts.store.blobPath(d) as string,
          tmp,
          constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE
        )
        await chmod(tmp, mode)
        await rename(tmp, target)
      } catch (err) {
        await rm(tmp, { force: true })
        throw err
      }
      const now = await lstat(target)
      log('%s <- %s', path, d)
      return { ino: now.ino, size: now.size, mtimeMs: now.mtimeMs }
    } finally {
      await at.dir.close()
    }
  }

  /** Remove what we put at `path`: our link, or a file still as we wrote it. */
  private async remove(path: string, e: AppliedEntry): Promise<void> {
    const at = await this.place(path, false)
    if (at === undefined) return
    try {
      const st = await lstat(at.dir.entry(at.name)).catch(() => undefined)
      if (st?.isSymbolicLink() === true || (st !== undefined && e.stamp?.ino === st.ino)) {
        await removeEntry(at.dir, at.name)
      }
    } finally {
      await at.dir.close()
    }
  }
}

function previousOf(
  prev: AppliedEntry | undefined,
  next: ArtifactDigest
): { previous?: ArtifactDigest } {
  if (prev === undefined) return {}
  if (prev.digest !== next) return { previous: prev.digest }
  return prev.previous === undefined ? {} : { previous: prev.previous }
}
