/** One error class per condition in the mesh; check them by `.name`. */

/** A frame announced or carried more bytes than `maxFrameBytes`. */
export class FrameTooLargeError extends Error {
  static override name = 'FrameTooLargeError'
  override name = 'FrameTooLargeError'
}

/** A frame or message on a Rhizome protocol did not decode. */
export class MalformedMessageError extends Error {
  static override name = 'MalformedMessageError'
  override name = 'MalformedMessageError'
}

/** A peer broke the protocol (e.g. put unsigned changes inside a sync message). */
export class ProtocolViolationError extends Error {
  static override name = 'ProtocolViolationError'
  override name = 'ProtocolViolationError'
}

/** A status record failed verification (bad signature, unenrolled key, other fleet, too big). */
export class InvalidStatusError extends Error {
  static override name = 'InvalidStatusError'
  override name = 'InvalidStatusError'
}

/** A session voucher or viewer token was refused. */
export class SessionRefusedError extends Error {
  static override name = 'SessionRefusedError'
  override name = 'SessionRefusedError'
}

/** A protocol exchange took longer than `exchangeTimeoutMs`. */
export class ExchangeTimeoutError extends Error {
  static override name = 'ExchangeTimeoutError'
  override name = 'ExchangeTimeoutError'
}

/** The mesh was used before start or after stop. */
export class MeshNotRunningError extends Error {
  static override name = 'MeshNotRunningError'
  override name = 'MeshNotRunningError'
}

/** The peer has no open connection any more (it went away while a stream was being opened). */
export class PeerGoneError extends Error {
  static override name = 'PeerGoneError'
  override name = 'PeerGoneError'
}
