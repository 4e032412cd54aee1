/**
 * Writing below an allowed root without ever following a symbolic link out of it. A managed
 * file's directories are walked one component at a time from the allowed root, each opened
 * with O_NOFOLLOW | O_DIRECTORY relative to the one before; on Linux through
 * `/proc/self/fd/<fd>/<name>`, which resolves `name` inside the directory already open, so a
 * directory swapped for a link after it was checked cannot redirect the write (the openat(2)
 * idiom, which Node lacks). The file itself is written as a temporary file in that directory
 * (O_CREAT | O_EXCL | O_NOFOLLOW) and renamed over the target name, which replaces a link at
 * that name rather than following it. Where /proc is missing, the same walk runs on plain paths
 * (each component checked, with a window between check and use).
 *
 * The allowed root itself is the device owner's configuration and is taken as it is.
 */
import { constants, existsSync } from 'node:fs'
import { mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises'
import { randomBytes } from 'node:crypto'
import { normalize } from 'node:path'
import { ErrorCategory, RhizomeError } from '../../crdt/errors.ts'

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW, O_DIRECTORY, O_NONBLOCK } = constants
const PROC_FD = existsSync('/proc/self/fd')

/** A path below an allowed root goes through a symbolic link (or a non-directory). */
export class UnsafePathError extends RhizomeError {
  static override name = 'UnsafePathError'
  override name = 'UnsafePathError'
  readonly category = ErrorCategory.Usage
}

/**
 * A managed path checked against the allowed roots (each normalised to end in `/`): `path` is
 * the normalised absolute file path, `root` the longest allowed root it is below, from which
 * links are refused down.
 */
export function belowAllowedRoot(
  path: string,
  allowed: readonly string[]
): { path: string; root: string } {
  const p = normalize(path)
  if (!p.startsWith('/') || p.includes('\0') || p.endsWith('/')) {
    throw new Error(`"${path}" is not an absolute path to a file`)
  }
  const root = allowed
    .filter(r => r === '/' || p.startsWith(r))
    .sort((a, b) => b.length - a.length)[0]
  if (root === undefined) {
    throw new Error(
      `"${path}" is outside the allowed roots (${allowed.join(', ')}); change allowedRoots in the daemon config to manage it`
    )
  }
  return { path: p, root }
}

/** A directory below an allowed root, held open. */
export interface OpenDir {
  /** Path of an entry in this directory, resolved inside the open directory where possible. */
  entry(name: string): string
  close(): Promise<void>
}

function handleDir(h: FileHandle, path: string): OpenDir {
  return {
    entry: name => (PROC_FD ? `/proc/self/fd/${h.fd}/${name}` : `${path}/${name}`),
    close: () => h.close()
  }
}

/**
 * Open `root/dirs…`, creating missing directories (mode 0755) when `create`, refusing any
 * component that is a symbolic link. Resolves undefined if a directory is missing and not created.
 */
export async function openBelow(
  root: string,
  dirs: string[],
  create: boolean
): Promise<OpenDir | undefined> {
  if (create) await mkdir(root, { recursive: true })
  let h: FileHandle
  try {
    h = await open(root, O_RDONLY | O_DIRECTORY)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !create) return undefined
    throw err
  }
  let path = root
  for (const name of dirs) {
    const here = handleDir(h, path)
    const next = here.entry(name)
    const child = `${path}/${name}`
    let opened: FileHandle | undefined
    try {
      opened = await open(next, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'ENOENT' && create) {
        try {
          await mkdir(next, { mode: 0o755 })
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e
        }
        try {
          opened = await open(next, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
        } catch (e) {
          await h.close()
          throw refusal(child, (e as NodeJS.ErrnoException).code)
        }
      } else {
        await h.close()
        if (code === 'ENOENT') return undefined
        throw refusal(child, code)
      }
    }
    await h.close()
    h = opened
    path = child
  }
  return handleDir(h, path)
}

function refusal(path: string, code: string | undefined): Error {
  return code === 'ELOOP' || code === 'ENOTDIR'
    ? new UnsafePathError(
        `${path} is a symbolic link or not a directory; managed files are never written through links, which could lead outside the allowed roots`
      )
    : new UnsafePathError(`${path}: ${code ?? 'cannot be opened'}`)
}

/** The content and mode of `name` in `dir` if it is a regular file (links are not followed). */
export async function readRegular(
  dir: OpenDir,
  name: string,
  maxBytes: number
): Promise<{ content: Buffer; mode: number } | undefined> {
  let h: FileHandle
  try {
    // O_NONBLOCK: a FIFO planted at the name must not stall the reconciler.
    h = await open(dir.entry(name), O_RDONLY | O_NOFOLLOW | O_NONBLOCK)
  } catch {
    return undefined
  }
  try {
    const st = await h.stat()
    if (!st.isFile() || st.size > maxBytes) return undefined
    return { content: await h.readFile(), mode: st.mode & 0o7777 }
  } finally {
    await h.close()
  }
}

/** Write `content` to `name` in `dir` with `mode`: a new file renamed over the old name. */
export async function writeReplacing(
  dir: OpenDir,
  name: string,
  content: string | Uint8Array,
  mode: number
): Promise<void> {
  const tmp = `.${name}.rhizome-${randomBytes(6).toString('hex')}.tmp`
  const h = await open(dir.entry(tmp), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600)
  try {
    await h.writeFile(content)
    // fchmod: the mode exactly, whatever the umask.
    await h.chmod(mode)
    await h.sync()
  } catch (err) {
    await h.close()
    await rm(dir.entry(tmp), { force: true })
    throw err
  }
  await h.close()
  await rename(dir.entry(tmp), dir.entry(name))
}

/** Remove `name` from `dir` (a link there is removed, not followed). */
export async function removeEntry(dir: OpenDir, name: string): Promise<void> {
  await rm(dir.entry(name), { force: true })
}
