/**
 * One error class per condition, checked by `.name` (never by message text).
 * Messages say what happened, to what, and what to do.
 */

/** Bytes that do not decode: truncated, wrong magic, bad lengths, trailing garbage. */
export class MalformedInputError extends Error {
  static override name = 'MalformedInputError'
  override name = 'MalformedInputError'
}

/** Input larger than the named bound that applies to it. */
export class OversizedInputError extends Error {
  static override name = 'OversizedInputError'
  override name = 'OversizedInputError'
}

/** A wire format version this build does not understand. */
export class UnsupportedVersionError extends Error {
  static override name = 'UnsupportedVersionError'
  override name = 'UnsupportedVersionError'
}

/** A signature that does not verify against the claimed key and digest. */
export class InvalidSignatureError extends Error {
  static override name = 'InvalidSignatureError'
  override name = 'InvalidSignatureError'
}

/** A change that no signature in its batch covers (an unsigned change). */
export class UnsignedChangeError extends Error {
  static override name = 'UnsignedChangeError'
  override name = 'UnsignedChangeError'
}

/** A change signed by a key the trust state does not know. */
export class UnknownKeyError extends Error {
  static override name = 'UnknownKeyError'
  override name = 'UnknownKeyError'
}

/** A change signed by a known key that may not write the document it targets. */
export class OutOfScopeError extends Error {
  static override name = 'OutOfScopeError'
  override name = 'OutOfScopeError'
}

/** A change whose actor id is not derived from the key that signed it. */
export class ActorMismatchError extends Error {
  static override name = 'ActorMismatchError'
  override name = 'ActorMismatchError'
}

/** A batch addressed to another fleet or document than the one receiving it. */
export class WrongDocumentError extends Error {
  static override name = 'WrongDocumentError'
  override name = 'WrongDocumentError'
}

/** A trust statement that does not extend the chain: wrong fleet, version, predecessor or signatures. */
export class InvalidTrustStatementError extends Error {
  static override name = 'InvalidTrustStatementError'
  override name = 'InvalidTrustStatementError'
}

/** Two different trust statements with the same version: trust changes halt. */
export class TrustForkError extends Error {
  static override name = 'TrustForkError'
  override name = 'TrustForkError'
}

/** A key file that cannot be opened with the passphrase given. */
export class WrongPassphraseError extends Error {
  static override name = 'WrongPassphraseError'
  override name = 'WrongPassphraseError'
}

/** The bounded set of changes waiting for their dependencies is full. */
export class PendingSetFullError extends Error {
  static override name = 'PendingSetFullError'
  override name = 'PendingSetFullError'
}

/** An operation on a store or replica that has been closed. */
export class ClosedError extends Error {
  static override name = 'ClosedError'
  override name = 'ClosedError'
}

/** Configuration that does not have the expected shape. */
export class InvalidConfigError extends Error {
  static override name = 'InvalidConfigError'
  override name = 'InvalidConfigError'
}
