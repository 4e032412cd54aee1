/**
 * A token bucket in bytes per second, shared by everything that moves artifact bytes in one
 * direction on a daemon (its fetches, or what it serves), so the configured limit holds for the
 * sum. A taker waits for its bytes before asking for them: the limit throttles requests, not
 * buffers.
 */
export class RateLimiter {
  /** Bytes per second; 0 means unlimited. */
  readonly rate: number
  private tokens: number
  private last: number
  private readonly burst: number
  private chain: Promise<void> = Promise.resolve()

  constructor(bytesPerSecond: number, burstBytes?: number) {
    this.rate = Math.max(0, bytesPerSecond)
    // A quarter second of traffic, and at least one 4 MiB chunk, may go at once.
    this.burst = burstBytes ?? Math.max(this.rate / 4, 4 * 1024 * 1024)
    this.tokens = this.burst
    this.last = performance.now()
  }

  /** Wait until `n` bytes may go. Takers are served in order. */
  take(n: number, signal?: AbortSignal): Promise<void> {
    if (this.rate === 0) return Promise.resolve()
    const turn = this.chain.then(() => this.wait(n, signal))
    this.chain = turn.catch(() => {})
    return turn
  }

  private async wait(n: number, signal?: AbortSignal): Promise<void> {
    for (;;) {
      signal?.throwIfAborted()
      const now = performance.now()
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate)
      this.last = now
      // A request larger than the burst goes once the bucket is full, leaving it in debt.
      if (this.tokens >= Math.min(n, this.burst)) {
        this.tokens -= n
        return
      }
      const ms = ((Math.min(n, this.burst) - this.tokens) / this.rate) * 1000
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(resolve, Math.max(1, ms))
        signal?.addEventListener(
          'abort',
          () => {
            clearTimeout(t)
            reject(signal.reason as Error)
          },
          { once: true }
        )
      })
    }
  }
}
