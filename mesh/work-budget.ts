/**
 * A peer's work budget (`WORK_BUDGETS` in limits.ts): two token buckets, messages and handling
 * time, refilled continuously at their rate up to their burst. Pure: the clock is passed in.
 */
import type { WorkBudget } from './limits.ts'

/** A token bucket: `rate` tokens per second, at most `burst` held; starts full. */
export class TokenBucket {
  private tokens: number
  private last: number
  private readonly rate: number
  private readonly burst: number

  constructor(rate: number, burst: number, now: number) {
    this.rate = rate
    this.burst = burst
    this.tokens = burst
    this.last = now
  }

  /** Take `n` tokens; false (and the bucket is left empty, below zero) when there were not enough. */
  take(n: number, now: number): boolean {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate)
    this.last = now
    this.tokens -= n
    return this.tokens >= 0
  }

  /** Milliseconds until `n` tokens are there (0: now); takes nothing. */
  msUntil(n: number, now: number): number {
    const tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate)
    return tokens >= n ? 0 : ((n - tokens) / this.rate) * 1000
  }
}

/** What the peer overspent, if anything. */
export type Overspent = 'messages' | 'handling time' | undefined

export class PeerWorkBudget {
  readonly budget: WorkBudget
  private readonly messages: TokenBucket
  private readonly handling: TokenBucket

  constructor(budget: WorkBudget, now: number) {
    this.budget = budget
    this.messages = new TokenBucket(budget.messagesPerSecond, budget.messageBurst, now)
    this.handling = new TokenBucket(budget.handlingMsPerSecond, budget.handlingBurstMs, now)
  }

  /** One message arrived. */
  message(now: number): Overspent {
    return this.messages.take(1, now) ? undefined : 'messages'
  }

  /** Handling the peer's last message took `ms`. */
  handled(ms: number, now: number): Overspent {
    return this.handling.take(ms, now) ? undefined : 'handling time'
  }
}
