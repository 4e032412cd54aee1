/** Errors of the artifact store, fetch engine and protocol, one class per condition (crdt/errors.ts). */
import { ErrorCategory, RhizomeError } from '../../crdt/errors.ts'

/** A chunk whose sha-256 is not the one its manifest names: whoever sent it sent invalid data. */
export class ChunkMismatchError extends RhizomeError {
  static override name = 'ChunkMismatchError'
  override name = 'ChunkMismatchError'
  readonly category = ErrorCategory.PeerFault
}

/** A manifest that does not decode, breaks a bound, or does not hash to the digest asked for. */
export class InvalidManifestError extends RhizomeError {
  static override name = 'InvalidManifestError'
  override name = 'InvalidManifestError'
  readonly category = ErrorCategory.PeerFault
}

/** Text that is not an artifact digest (`sha256:` and 64 hex characters). */
export class InvalidDigestError extends RhizomeError {
  static override name = 'InvalidDigestError'
  override name = 'InvalidDigestError'
  readonly category = ErrorCategory.Usage
}

/** An artifact (or a chunk of it) this daemon does not hold. */
export class ArtifactNotHeldError extends RhizomeError {
  static override name = 'ArtifactNotHeldError'
  override name = 'ArtifactNotHeldError'
  readonly category = ErrorCategory.Unavailable
}

/** An artifact larger than the daemon's bound, or one that would not fit its disk budget. */
export class ArtifactTooLargeError extends RhizomeError {
  static override name = 'ArtifactTooLargeError'
  override name = 'ArtifactTooLargeError'
  readonly category = ErrorCategory.Usage
}

/** A tar artifact that cannot be unpacked safely (bad entries, over the size or entry bounds). */
export class UnpackError extends RhizomeError {
  static override name = 'UnpackError'
  override name = 'UnpackError'
  readonly category = ErrorCategory.Usage
}
