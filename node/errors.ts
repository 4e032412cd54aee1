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

/** The daemon's HTTP API could not be reached. */
export class DaemonUnreachableError extends RhizomeError {
  static override name = 'DaemonUnreachableError'
  override name = 'DaemonUnreachableError'
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
