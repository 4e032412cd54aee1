/**
 * Errors of the daemon and the CLI, one class per condition, checked by `.name`.
 * Configuration errors reuse `InvalidConfigError` from crdt/.
 */
export { InvalidConfigError } from '../crdt/errors.ts'

/** The command line was used wrongly (missing option, bad argument). */
export class UsageError extends Error {
  static override name = 'UsageError'
  override name = 'UsageError'
}

/** The daemon's HTTP API could not be reached. */
export class DaemonUnreachableError extends Error {
  static override name = 'DaemonUnreachableError'
  override name = 'DaemonUnreachableError'
}

/** The daemon refused what was sent (invalid signature, out of scope, ...); `remote` is its error name. */
export class RejectedByDaemonError extends Error {
  static override name = 'RejectedByDaemonError'
  override name = 'RejectedByDaemonError'
  readonly remote: string
  constructor(remote: string, message: string) {
    super(message)
    this.remote = remote
  }
}

/** A bundle file is not a Rhizome bundle or is damaged. */
export class InvalidBundleError extends Error {
  static override name = 'InvalidBundleError'
  override name = 'InvalidBundleError'
}
