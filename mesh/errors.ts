/** One error class per condition in the mesh; check them by `.name`. */
import { ErrorCategory, RhizomeError } from '../crdt/errors.ts'

/** A frame announced or carried more bytes than `maxFrameBytes`. */
export class FrameTooLargeError extends RhizomeError {
  static override name = 'FrameTooLargeError'
  override name = 'FrameTooLargeError'
  readonly category = ErrorCategory.PeerFault
}

/** A frame or message on a Rhizome protocol did not decode. */
export class MalformedMessageError extends RhizomeError {
  static override name = 'MalformedMessageError'
  override name = 'MalformedMessageError'
  readonly category = ErrorCategory.PeerFault
}

/** A peer broke the protocol (e.g. put unsigned changes inside a sync message). */
export class ProtocolViolationError extends RhizomeError {
  static override name = 'ProtocolViolationError'
  override name = 'ProtocolViolationError'
  readonly category = ErrorCategory.PeerFault
}

/** A status record failed verification (bad signature, unenrolled key, other fleet, too big). */
export class InvalidStatusError extends RhizomeError {
  static override name = 'InvalidStatusError'
  override name = 'InvalidStatusError'
  readonly category = ErrorCategory.PeerFault
}

/** A session voucher or viewer token was refused. */
export class SessionRefusedError extends RhizomeError {
  static override name = 'SessionRefusedError'
  override name = 'SessionRefusedError'
  readonly category = ErrorCategory.Unauthorised
}

/** A protocol exchange took longer than `exchangeTimeoutMs`. */
export class ExchangeTimeoutError extends RhizomeError {
  static override name = 'ExchangeTimeoutError'
  override name = 'ExchangeTimeoutError'
  readonly category = ErrorCategory.Unavailable
}

/** The mesh was used before start or after stop. */
export class MeshNotRunningError extends RhizomeError {
  static override name = 'MeshNotRunningError'
  override name = 'MeshNotRunningError'
  readonly category = ErrorCategory.Internal
}

/** The peer has no open connection any more (it went away while a stream was being opened). */
export class PeerGoneError extends RhizomeError {
  static override name = 'PeerGoneError'
  override name = 'PeerGoneError'
  readonly category = ErrorCategory.Unavailable
}

/**
 * A peer sent more messages, or cost more handling time, than its work budget allows
 * (`WORK_BUDGETS` in limits.ts). It is cut off and refused like a peer that sent invalid data.
 */
export class WorkBudgetExceededError extends RhizomeError {
  static override name = 'WorkBudgetExceededError'
  override name = 'WorkBudgetExceededError'
  readonly category = ErrorCategory.PeerFault
}

/** A peer sent a node's status records far faster than that node may publish them. */
export class StatusFloodError extends RhizomeError {
  static override name = 'StatusFloodError'
  override name = 'StatusFloodError'
  readonly category = ErrorCategory.PeerFault
}

/** A node refused a request (logs: not allowed, or asked too often); try again later. */
export class LogsRefusedError extends RhizomeError {
  static override name = 'LogsRefusedError'
  override name = 'LogsRefusedError'
  readonly category = ErrorCategory.Unavailable
}

/** A node was named that is not enrolled in the fleet (by name, PeerId or key). */
export class UnknownNodeError extends RhizomeError {
  static override name = 'UnknownNodeError'
  override name = 'UnknownNodeError'
  readonly category = ErrorCategory.Usage
}

/**
 * The artifact link port the config names cannot be listened on (in use, no such address, needs
 * privileges); `cause` is the system's error.
 */
export class ArtifactLinkListenError extends RhizomeError {
  static override name = 'ArtifactLinkListenError'
  override name = 'ArtifactLinkListenError'
  readonly category = ErrorCategory.Usage
}
