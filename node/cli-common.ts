/**
 * What every `rhizome` command module shares (cli.ts and the cli-*.ts modules that register
 * commands on its program): exit codes and their help text, output, the --daemon option.
 */
import { readFile } from 'node:fs/promises'
import { Option } from 'commander'
import {
  decryptKeyFile,
  fingerprint,
  parseKeyFile,
  parsePublicKey,
  type KeyPair
} from '../crdt/keys.ts'
import { readPassphrase } from './passphrase.ts'
import { UsageError } from './errors.ts'
import { categoryOf, ErrorCategory } from '../crdt/errors.ts'

export const EXIT = { ok: 0, usage: 1, rejected: 2, unreachable: 3, internal: 4 } as const

export const EXIT_HELP = `
Exit codes:
  0  ok
  1  usage or configuration error (bad option, broken YAML, unknown key, no such document)
  2  rejected: verification or authorisation failed, wrong passphrase, damaged bundle
  3  daemon unreachable (start it with \`rhizome start\`, or pass --daemon URL)
  4  unexpected internal error

Environment: RHIZOME_DAEMON (daemon URL), RHIZOME_KEY (key file), RHIZOME_PASSPHRASE,
RHIZOME_TOKEN_FILE (the daemon's API token file; else $RHIZOME_DATA_DIR/api.token, else
/var/lib/rhizome/api.token), RHIZOME_API_TOKEN (the token itself).`

const EXIT_OF: Record<ErrorCategory, number> = {
  [ErrorCategory.PeerFault]: EXIT.rejected,
  [ErrorCategory.Unauthorised]: EXIT.rejected,
  [ErrorCategory.Usage]: EXIT.usage,
  [ErrorCategory.Unavailable]: EXIT.unreachable,
  [ErrorCategory.Internal]: EXIT.internal
}

/** The exit code for an error: derived from its category (crdt/errors.ts). */
export function exitCodeFor(err: unknown): number {
  return EXIT_OF[categoryOf(err)]
}

/** One line on standard output. */
export const say = (s = ''): void => {
  process.stdout.write(s + '\n')
}

/** A list command's output: with --json the list as JSON, else `none` when it is empty, else a line an item. */
export function sayList<T>(
  items: T[],
  json: boolean | undefined,
  none: string,
  line: (item: T) => string
): void {
  if (json === true) {
    say(JSON.stringify(items, null, 2))
    return
  }
  if (items.length === 0) say(none)
  for (const item of items) say(line(item))
}

export function daemonOption(): Option {
  return new Option('--daemon <url>', "the daemon's HTTP API").default(
    process.env.RHIZOME_DAEMON ?? 'http://127.0.0.1:8080',
    '$RHIZOME_DAEMON or http://127.0.0.1:8080'
  )
}

/** Read and open the signing key of a command that writes (--key or $RHIZOME_KEY). */
export async function loadSigningKey(opts: {
  key?: string
  passphraseFile?: string
}): Promise<KeyPair> {
  const file = opts.key ?? process.env.RHIZOME_KEY
  if (file === undefined) {
    throw new UsageError(
      'a signing key is needed: pass --key FILE (an admin or operator key file from `rhizome init`) or set RHIZOME_KEY'
    )
  }
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new UsageError(`cannot read key file ${file}: ${(err as Error).message}`)
  }
  const kf = parseKeyFile(text)
  return decryptKeyFile(
    kf,
    await readPassphrase(
      opts,
      `passphrase for ${kf.label} (${fingerprint(parsePublicKey(kf.publicKey))}): `
    )
  )
}

/** The signing key of the commands that write (enrol, apply, rollback). */
export function keyOption(): Option {
  return new Option('--key <file>', 'admin or operator key file (else $RHIZOME_KEY)')
}

export function passphraseOption(): Option {
  return new Option('--passphrase-file <file>', 'read the passphrase from this file')
}
