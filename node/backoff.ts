/**
 * Restart back-off for crashed workloads: bounded exponential, `base * 2^(n-1)` capped at
 * `max`, with up to `jitter` (fraction) added so a fleet that crashes together does not restart
 * in lockstep. A process that stayed up for `resetAfterMs` starts again from `base`.
 */
export interface BackoffOptions {
  baseMs: number
  maxMs: number
  /** 0..1: fraction of the delay added at random. */
  jitter: number
  resetAfterMs: number
}

export const DEFAULT_BACKOFF: BackoffOptions = {
  baseMs: 500,
  maxMs: 60_000,
  jitter: 0.2,
  resetAfterMs: 30_000
}

/** Delay before restart number `attempt` (1 = first restart). `random` is injectable for tests. */
export function backoffDelay(
  attempt: number,
  opts: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random
): number {
  const n = Math.max(1, Math.floor(attempt))
  // 2^(n-1) overflows to Infinity for large n; the cap keeps the result finite.
  const raw = Math.min(opts.maxMs, opts.baseMs * 2 ** Math.min(n - 1, 52))
  return Math.min(opts.maxMs, Math.round(raw * (1 + opts.jitter * random())))
}
