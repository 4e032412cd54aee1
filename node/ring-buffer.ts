/**
 * A bounded buffer of the most recent text lines: workload logs are kept here (N lines, each
 * at most `maxLineLength` characters), so a chatty process cannot grow the daemon's memory.
 */
export const DEFAULT_LOG_LINES = 200
export const MAX_LINE_LENGTH = 1024

export class RingBuffer {
  private readonly lines: string[]
  private next = 0
  private count = 0
  readonly capacity: number
  readonly maxLineLength: number

  constructor(capacity = DEFAULT_LOG_LINES, maxLineLength = MAX_LINE_LENGTH) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`ring buffer capacity must be a positive integer, got ${capacity}`)
    }
    this.capacity = capacity
    this.maxLineLength = maxLineLength
    this.lines = Array.from({ length: capacity }, () => '')
  }

  push(line: string): void {
    this.lines[this.next] =
      line.length > this.maxLineLength ? line.slice(0, this.maxLineLength - 1) + '…' : line
    this.next = (this.next + 1) % this.capacity
    if (this.count < this.capacity) this.count++
  }

  /** The last `n` lines (all by default), oldest first. */
  last(n = this.count): string[] {
    const k = Math.max(0, Math.min(n, this.count))
    const out: string[] = []
    for (let i = k; i > 0; i--) {
      out.push(this.lines[(this.next - i + this.capacity) % this.capacity] as string)
    }
    return out
  }

  get size(): number {
    return this.count
  }
}

/**
 * Splits a byte stream into lines for a RingBuffer; a partial line longer than the cap is
 * flushed as a line of its own so a process that never prints a newline stays bounded.
 */
export class LineSplitter {
  private partial = ''
  private readonly sink: (line: string) => void
  private readonly maxLineLength: number

  constructor(sink: (line: string) => void, maxLineLength = MAX_LINE_LENGTH) {
    this.sink = sink
    this.maxLineLength = maxLineLength
  }

  write(chunk: string): void {
    const parts = (this.partial + chunk).split('\n')
    this.partial = parts.pop() ?? ''
    for (const p of parts) this.sink(p.replace(/\r$/, ''))
    if (this.partial.length > this.maxLineLength) {
      this.sink(this.partial)
      this.partial = ''
    }
  }

  flush(): void {
    if (this.partial !== '') this.sink(this.partial)
    this.partial = ''
  }
}
