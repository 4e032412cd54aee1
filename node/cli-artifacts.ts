/**
 * `rhizome artifact …`: put a file into the local daemon's content store and list what it holds.
 * The file is streamed to the daemon (PUT /api/artifacts), which cuts it into chunks, hashes and
 * stores it; the printed digest is what the desired config names.
 */
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { basename } from 'node:path'
import { Readable } from 'node:stream'
import type { Command } from 'commander'
import { daemonOption, say, sayList } from './cli-common.ts'
import { DaemonClient } from './daemon-client.ts'
import { DaemonUnreachableError, RejectedByDaemonError, UsageError } from './errors.ts'
import { manifestOf } from './artifacts/store.ts'
import type { ArtifactStatus } from '../crdt/fleet-status.ts'
import {
  DEFAULT_CHUNK_SIZE,
  MAX_ARTIFACT_BYTES,
  MAX_CHUNK_SIZE,
  MIN_CHUNK_SIZE
} from './artifacts/limits.ts'

const mib = (n: number): string => `${(n / 1048576).toFixed(n < 10 * 1048576 ? 1 : 0)} MiB`

/** Stream bytes into a daemon's artifact store (PUT /api/artifacts); what it stored. */
export async function uploadArtifact(
  daemon: string,
  body: AsyncIterable<Uint8Array>,
  opts: { name?: string; chunkSize?: number; size?: number }
): Promise<Added> {
  const q = new URLSearchParams()
  if (opts.name !== undefined) q.set('name', opts.name)
  if (opts.chunkSize !== undefined) q.set('chunkSize', String(opts.chunkSize))
  const base = daemon.replace(/\/+$/, '')
  const headers: Record<string, string> = {
    'content-type': 'application/octet-stream',
    ...(await new DaemonClient(base).authHeaders())
  }
  if (opts.size !== undefined) headers['content-length'] = String(opts.size)
  // An error of the body (a damaged bundle) is the error to report, not the aborted upload.
  let bodyError: unknown
  const guarded = async function* (): AsyncGenerator<Uint8Array> {
    try {
      yield* body
    } catch (err) {
      bodyError = err
      throw err
    }
  }
  let res: Response
  try {
    res = await fetch(`${base}/api/artifacts?${q}`, {
      method: 'PUT',
      headers,
      body: Readable.toWeb(Readable.from(guarded())) as ReadableStream<Uint8Array>,
      duplex: 'half'
    } as RequestInit)
  } catch (err) {
    if (bodyError !== undefined) throw bodyError
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message
    throw new DaemonUnreachableError(
      `cannot reach the daemon at ${base} (${cause}); is it running (rhizome start)? pass its address with --daemon or RHIZOME_DAEMON`
    )
  }
  if (!res.ok) {
    const b = (await res.json().catch(() => ({}))) as {
      error?: string
      message?: string
      category?: string
    }
    throw new RejectedByDaemonError(
      b.error ?? `HTTP ${res.status}`,
      b.message ?? `the daemon answered ${res.status}`,
      b.category
    )
  }
  return (await res.json()) as Added
}

interface Added {
  digest: string
  name: string | null
  size: number
  chunkSize: number
  chunks: number
  fileSha256: string
}

async function cmdAdd(
  file: string,
  opts: { name?: string; chunkSize?: string; daemon: string }
): Promise<void> {
  const st = await stat(file).catch((err: Error) => {
    throw new UsageError(`cannot read ${file}: ${err.message}`)
  })
  if (!st.isFile()) throw new UsageError(`${file} is not a regular file`)
  const a = await uploadArtifact(opts.daemon, createReadStream(file), {
    name: opts.name ?? basename(file),
    size: st.size,
    ...(opts.chunkSize === undefined ? {} : { chunkSize: Number(opts.chunkSize) })
  })
  say(a.digest)
  say(
    `  ${a.name ?? ''}: ${a.size} bytes (${mib(a.size)}), ${a.chunks} chunks of ${mib(a.chunkSize)}, file sha-256 ${a.fileSha256}`
  )
  say('  in the fleet file, e.g.:')
  say(`    files: { /opt/rhizome/${a.name ?? 'artifact'}: { artifact: "${a.digest}" } }`)
  say(`    workloads: { app: { artifact: "${a.digest}", unpack: tar, command: [./run] } }`)
}

async function cmdDigest(file: string, opts: { chunkSize?: string }): Promise<void> {
  const chunkSize = opts.chunkSize === undefined ? DEFAULT_CHUNK_SIZE : Number(opts.chunkSize)
  if (!Number.isInteger(chunkSize) || chunkSize < MIN_CHUNK_SIZE || chunkSize > MAX_CHUNK_SIZE) {
    throw new UsageError(
      `--chunk-size must be an integer from ${MIN_CHUNK_SIZE} to ${MAX_CHUNK_SIZE}`
    )
  }
  let m
  try {
    m = await manifestOf(createReadStream(file), { chunkSize, maxBytes: MAX_ARTIFACT_BYTES })
  } catch (err) {
    if ((err as { code?: string }).code !== undefined) {
      throw new UsageError(`cannot read ${file}: ${(err as Error).message}`)
    }
    throw err
  }
  say(m.digest)
}

interface Listed {
  digest: string
  name?: string
  state: string
  size?: number
  held: number
  pinnedBy: string[]
  status: { state: string; peers: number; rate: number; eta?: number; reason?: string }
}

async function cmdList(opts: { daemon: string; json?: boolean }): Promise<void> {
  const list = await new DaemonClient(opts.daemon).json<Listed[]>('/api/artifacts')
  sayList(list, opts.json, 'no artifacts', a => {
    const pct = a.size === undefined ? 0 : a.size === 0 ? 100 : Math.floor((100 * a.held) / a.size)
    const progress =
      a.state === 'complete'
        ? 'complete'
        : `${a.status.state} ${pct}% ${a.status.rate > 0 ? `${mib(a.status.rate)}/s` : ''}${a.status.eta === undefined ? '' : ` eta ${a.status.eta}s`} ${a.status.peers} peer(s)`
    return `${a.digest.slice(0, 19)}…  ${(a.name ?? '').padEnd(20)} ${(a.size === undefined ? 'size ?' : mib(a.size)).padStart(10)}  ${progress}${a.pinnedBy.length > 0 ? `  pinned by ${a.pinnedBy.join(',')}` : ''}`
  })
}

/** `rhizome status` lines for a node's artifacts that are not complete yet. */
export function artifactLines(list: Record<string, ArtifactStatus> | undefined): string[] {
  const out: string[] = []
  for (const [digest, a] of Object.entries(list ?? {})) {
    if (a.state === 'complete') continue
    const pct = a.size === undefined || a.size === 0 ? 0 : Math.floor((100 * a.held) / a.size)
    out.push(
      `artifact ${a.name ?? digest.slice(0, 19) + '…'}: ${a.state} ${pct}%` +
        (a.size === undefined ? '' : ` of ${mib(a.size)}`) +
        (a.state === 'fetching' ? ` from ${a.peers} peer(s), ${mib(a.rate)}/s` : '') +
        (a.eta === undefined ? '' : `, eta ${a.eta} s`) +
        (a.reason === undefined ? '' : ` (${a.reason})`)
    )
  }
  return out
}

/** Register `artifact add`, `digest` and `list` on the program. */
export function registerArtifactCommands(p: Command, exitHelp: string): void {
  const a = p
    .command('artifact')
    .description('content-addressed files (models, binaries, archives) delivered over the mesh')
  a.command('add')
    .description(
      "stream a file into the local daemon's artifact store and print its digest (what the config names)"
    )
    .argument('<file>')
    .option('--name <name>', 'a name shown in listings and status (default: the file name)')
    .option('--chunk-size <bytes>', 'chunk size (16384 to 4194304; default 1048576)')
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdAdd)
  a.command('digest')
    .description(
      'print the digest a file will have as an artifact (computed here; nothing is stored or sent)'
    )
    .argument('<file>')
    .option('--chunk-size <bytes>', 'chunk size (must match the one `add` will use)')
    .addHelpText('after', exitHelp)
    .action(cmdDigest)
  a.command('list')
    .description('artifacts this daemon holds or is fetching, with progress')
    .option('--json', 'machine-readable output (GET /api/artifacts)')
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdList)
}
