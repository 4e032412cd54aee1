/**
 * One error class per condition, checked by `.name` (never by message text). Messages say what
 * happened, to what, and what to do.
 *
 * What an error *means* is decided here and nowhere else: every Rhizome error class has a
 * `category`, and the consequences are derived from it in one place each —
 *
 * | category       | a mesh peer that caused it | HTTP status | `rhizome` exit code |
 * |----------------|----------------------------|-------------|---------------------|
 * | `peer-fault`   | is banned                  | 400         | 2 (rejected)        |
 * | `unauthorised` | is banned                  | 403         | 2 (rejected)        |
 * | `usage`        | —                          | 400         | 1                   |
 * | `unavailable`  | is not banned (retry)      | 503         | 3                   |
 * | `internal`     | is not banned (our bug)    | 500         | 4                   |
 *
 * (`isPeerFault` below, `httpStatusFor` in node/http-api.ts, `exitCodeFor` in node/cli-common.ts.) An
 * error that is not a `RhizomeError` — a bug, or a library's error escaping — is `internal`.
 */

export const ErrorCategory = {
  /** The sender's input is invalid: malformed, forged, oversized, against the protocol. */
  PeerFault: 'peer-fault',
  /** Well-formed, but its signer or sender is not allowed to do this. */
  Unauthorised: 'unauthorised',
  /** The command line, a configuration file or an API call was used wrongly. */
  Usage: 'usage',
  /** Something needed is not there right now (a peer, the daemon, room in a bounded set). */
  Unavailable: 'unavailable',
  /** A bug: nothing the caller did explains it. */
  Internal: 'internal'
} as const
export type ErrorCategory = (typeof ErrorCategory)[keyof typeof ErrorCategory]

const CATEGORIES = new Set<string>(Object.values(ErrorCategory))

/** The base of every Rhizome error: a named condition with a category. */
export abstract class RhizomeError extends Error {
  abstract readonly category: ErrorCategory
}

/** What an error means (see the table above). Anything that does not say is `internal`. */
export function categoryOf(err: unknown): ErrorCategory {
  const c = (err as { category?: unknown } | null)?.category
  return typeof c === 'string' && CATEGORIES.has(c) ? (c as ErrorCategory) : ErrorCategory.Internal
}

/** Did the sender of the input that raised `err` do something wrong? Such a peer is banned. */
export function isPeerFault(err: unknown): boolean {
  const c = categoryOf(err)
  return c === ErrorCategory.PeerFault || c === ErrorCategory.Unauthorised
}

/** Bytes that do not decode: truncated, wrong magic, bad lengths, trailing garbage. */
export class MalformedInputError extends RhizomeError {
  static override name = 'MalformedInputError'
  override name = 'MalformedInputError'
  readonly category = ErrorCategory.PeerFault
}

/** Input larger than the named bound that applies to it. */
export class OversizedInputError extends RhizomeError {
  static override name = 'OversizedInputError'
  override name = 'OversizedInputError'
  readonly category = ErrorCategory.PeerFault
}

/** A wire format version this build does not understand. */
export class UnsupportedVersionError extends RhizomeError {
  static override name = 'UnsupportedVersionError'
  override name = 'UnsupportedVersionError'
  readonly category = ErrorCategory.PeerFault
}

/** A signature that does not verify against the claimed key and digest. */
export class InvalidSignatureError extends RhizomeError {
  static override name = 'InvalidSignatureError'
  override name = 'InvalidSignatureError'
  readonly category = ErrorCategory.PeerFault
}

/** A change that no signature in its batch covers (an unsigned change). */
export class UnsignedChangeError extends RhizomeError {
  static override name = 'UnsignedChangeError'
  override name = 'UnsignedChangeError'
  readonly category = ErrorCategory.PeerFault
}

/** A change signed by a key the trust state does not know. */
export class UnknownKeyError extends RhizomeError {
  static override name = 'UnknownKeyError'
  override name = 'UnknownKeyError'
  readonly category = ErrorCategory.Unauthorised
}

/** A change signed by a known key that may not write the document it targets. */
export class OutOfScopeError extends RhizomeError {
  static override name = 'OutOfScopeError'
  override name = 'OutOfScopeError'
  readonly category = ErrorCategory.Unauthorised
}

/**
 * A local change that would not be valid: its actor was caught reusing a sequence number
 * (equivocation evidence) or its key is cut in the document. Kept, it would be valid here only.
 */
export class CutWriterError extends RhizomeError {
  static override name = 'CutWriterError'
  override name = 'CutWriterError'
  readonly category = ErrorCategory.Unauthorised
}

/** A change whose actor id is not derived from the key that signed it. */
export class ActorMismatchError extends RhizomeError {
  static override name = 'ActorMismatchError'
  override name = 'ActorMismatchError'
  readonly category = ErrorCategory.PeerFault
}

/** A batch addressed to another fleet or document than the one receiving it. */
export class WrongDocumentError extends RhizomeError {
  static override name = 'WrongDocumentError'
  override name = 'WrongDocumentError'
  readonly category = ErrorCategory.PeerFault
}

/** A trust statement that does not extend the chain: wrong fleet, version, predecessor or signatures. */
export class InvalidTrustStatementError extends RhizomeError {
  static override name = 'InvalidTrustStatementError'
  override name = 'InvalidTrustStatementError'
  readonly category = ErrorCategory.PeerFault
}

/** Two different trust statements with the same version: trust changes halt. */
export class TrustForkError extends RhizomeError {
  static override name = 'TrustForkError'
  override name = 'TrustForkError'
  readonly category = ErrorCategory.Unauthorised
}

/** A key file that cannot be opened with the passphrase given. */
export class WrongPassphraseError extends RhizomeError {
  static override name = 'WrongPassphraseError'
  override name = 'WrongPassphraseError'
  readonly category = ErrorCategory.Unauthorised
}

/** The bounded set of changes waiting for their dependencies is full. */
export class PendingSetFullError extends RhizomeError {
  static override name = 'PendingSetFullError'
  override name = 'PendingSetFullError'
  readonly category = ErrorCategory.Unavailable
}

/** A store that another process holds open (LevelDB allows one at a time): a running daemon. */
export class StoreLockedError extends RhizomeError {
  static override name = 'StoreLockedError'
  override name = 'StoreLockedError'
  readonly category = ErrorCategory.Usage
}

/** An operation on a store or replica that has been closed. */
export class ClosedError extends RhizomeError {
  static override name = 'ClosedError'
  override name = 'ClosedError'
  readonly category = ErrorCategory.Unavailable
}

/** Configuration that does not have the expected shape. */
export class InvalidConfigError extends RhizomeError {
  static override name = 'InvalidConfigError'
  override name = 'InvalidConfigError'
  readonly category = ErrorCategory.Usage
}
