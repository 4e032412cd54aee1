/**
 * Errors of the daemon and the CLI, one class per condition, checked by `.name`.
 * Configuration errors reuse `InvalidConfigError` from crdt/.
 */
import { categoryOf, ErrorCategory, RhizomeError } from '../crdt/errors.ts'

export { InvalidConfigError } from '../crdt/errors.ts'

/** The command line was used wrongly (missing option, bad argument). */
export class UsageError extends RhizomeError {
  static override name = 'UsageError'
  override name = 'UsageError'
  readonly category = ErrorCategory.Usage
}

/**
 * A key asked to revoke a device it cannot reach: an operator whose selector the device's labels
 * are outside of (crdt/devices.ts `mayRevoke`). Peers would not count the mark.
 */
export class DeviceOutOfReachError extends RhizomeError {
  static override name = 'DeviceOutOfReachError'
  override name = 'DeviceOutOfReachError'
  readonly category = ErrorCategory.Unauthorised
}

/** The daemon's HTTP API could not be reached. */
export class DaemonUnreachableError extends RhizomeError {
  static override name = 'DaemonUnreachableError'
  override name = 'DaemonUnreachableError'
  readonly category = ErrorCategory.Unavailable
}

/**
 * The process answering at the daemon's address could not prove it holds the daemon's API token
 * (`GET /api/proof`): another program may have taken the port while the daemon was down. The
 * CLI sent it nothing secret.
 */
export class DaemonNotProvenError extends RhizomeError {
  static override name = 'DaemonNotProvenError'
  override name = 'DaemonNotProvenError'
  readonly category = ErrorCategory.Unavailable
}

/**
 * The daemon refused what was sent (invalid signature, out of scope, no such document, ...):
 * `remote` is its error name, and the category is the one the daemon gave it.
 */
export class RejectedByDaemonError extends RhizomeError {
  static override name = 'RejectedByDaemonError'
  override name = 'RejectedByDaemonError'
  readonly remote: string
  readonly category: ErrorCategory
  constructor(remote: string, message: string, category: unknown = ErrorCategory.PeerFault) {
    super(message)
    this.remote = remote
    this.category = categoryOf({ category })
  }
}

/** A bundle file is not a Rhizome bundle or is damaged. */
export class InvalidBundleError extends RhizomeError {
  static override name = 'InvalidBundleError'
  override name = 'InvalidBundleError'
  readonly category = ErrorCategory.PeerFault
}

/** A bundle (or a store) of another fleet than the one it is used with. */
export class WrongFleetError extends RhizomeError {
  static override name = 'WrongFleetError'
  override name = 'WrongFleetError'
  readonly category = ErrorCategory.PeerFault
}

/**
 * The daemon cannot listen on an address it is configured to use: the port is taken (another
 * daemon, another program), the address is not on this host, or the port needs privileges.
 */
export class ListenError extends RhizomeError {
  static override name = 'ListenError'
  override name = 'ListenError'
  readonly category = ErrorCategory.Usage
}

const LISTEN_REASONS: Record<string, string> = {
  EADDRINUSE: 'the port is in use by another program (another rhizome daemon?)',
  EADDRNOTAVAIL: 'this host has no such address',
  EACCES: 'permission denied (ports below 1024 need privileges)'
}

/** Why a listen failed, in words, from its error code or message. */
export function listenReason(err: unknown): string {
  const e = err as { code?: string; message?: string }
  const code = e.code ?? /\b(EADDRINUSE|EADDRNOTAVAIL|EACCES)\b/.exec(e.message ?? '')?.[1]
  return (code === undefined ? undefined : LISTEN_REASONS[code]) ?? e.message ?? String(err)
}

/**
 * libp2p reports every mesh address it could not listen on in one error whose message lists them
 * with their causes; say which addresses, why, and what to change. The same for the artifact
 * link port.
 */
export function meshListenError(err: unknown): unknown {
  if ((err as Error | undefined)?.name === 'ArtifactLinkListenError') {
    const e = err as Error
    return new ListenError(
      `cannot listen for artifact links on ${e.message}: ${listenReason(e.cause)}. Choose another port with "artifactPort" in the daemon config (or RHIZOME_ARTIFACT_PORT; 0 for any free one, off for none), or stop the program that holds it`
    )
  }
  if ((err as Error | undefined)?.name !== 'UnsupportedListenAddressesError') return err
  const failed = [...(err as Error).message.matchAll(/^\s+(\/\S+): (.*)$/gm)].map(
    m => `${m[1]}: ${listenReason({ message: m[2] })}`
  )
  return new ListenError(
    `cannot listen on the mesh address ${failed.join('; ')}. Choose other addresses with "listen" in the daemon config (or RHIZOME_LISTEN), or stop the program that holds them`
  )
}
