/**
 * Events a person running the daemon reads: one JSON object per line on stderr
 * (`{"t":"...","level":"info","event":"http.listening","url":"..."}`). Debug tracing stays
 * with `@libp2p/logger` (DEBUG=rhizome:*).
 */
export type EventLevel = 'info' | 'warn' | 'error'

export interface EventLog {
  (level: EventLevel, event: string, fields?: Record<string, unknown>): void
}

export function eventLogger(
  write: (line: string) => void = l => {
    process.stderr.write(l)
  }
): EventLog {
  return (level, event, fields = {}) => {
    const rec: Record<string, unknown> = { t: new Date().toISOString(), level, event }
    for (const [k, v] of Object.entries(fields)) {
      rec[k] = v instanceof Error ? `${v.name}: ${v.message}` : v
    }
    write(JSON.stringify(rec) + '\n')
  }
}
