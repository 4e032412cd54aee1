/**
 * A bounded buffer of the most recent text lines: workload logs are kept here (N lines, each
 * at most `maxLineLength` characters), so a chatty process cannot grow the daemon's memory.
 * A line that repeats the one before it but for its numbers (an access-log line for every
 * health probe, a retry counter) replaces it and is shown once with a count, "… (×12)", so
 * periodic noise cannot push everything else out.
 */
export const DEFAULT_LOG_LINES = 200
export const MAX_LINE_LENGTH = 1024

/** A line with every run of digits made one symbol: lines equal under this are repeats. */
const shape = (line: string): string => line.replace(/\d+/g, '#')

export class RingBuffer {
  private readonly lines: string[]
  private readonly repeats: number[]
  private next = 0
  private count = 0
  private lastShape: string | undefined
  readonly capacity: number
  readonly maxLineLength: number

  constructor(capacity = DEFAULT_LOG_LINES, maxLineLength = MAX_LINE_LENGTH) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`ring buffer capacity must be a positive integer, got ${capacity}`)
    }
    this.capacity = capacity
    this.maxLineLength = maxLineLength
    this.lines = Array.from({ length: capacity }, () => '')
    this.repeats = Array.from({ length: capacity }, () => 1)
  }

  push(line: string): void {
    const text =
      line.length > this.maxLineLength ? line.slice(0, this.maxLineLength - 1) + '…' : line
    const s = shape(text)
    if (this.count > 0 && s === this.lastShape) {
      const at = (this.next - 1 + this.capacity) % this.capacity
      this.lines[at] = text
      this.repeats[at] = (this.repeats[at] as number) + 1
      return
    }
    this.lastShape = s
    this.lines[this.next] = text
    this.repeats[this.next] = 1
    this.next = (this.next + 1) % this.capacity
    if (this.count < this.capacity) this.count++
  }

  /** The last `n` lines (all by default), oldest first; a repeated line carries its count. */
  last(n = this.count): string[] {
    const k = Math.max(0, Math.min(n, this.count))
    const out: string[] = []
    for (let i = k; i > 0; i--) {
      const at = (this.next - i + this.capacity) % this.capacity
      const r = this.repeats[at] as number
      out.push(r > 1 ? `${this.lines[at] as string} (×${r})` : (this.lines[at] as string))
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
