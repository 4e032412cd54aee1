/**
 * File modes as the desired config writes them (`mode: "0644"`), read the same way by
 * `rhizome apply` (crdt/fleet-yaml.ts, which refuses a bad one before anything is signed) and by
 * the daemon's appliers.
 */
import { InvalidConfigError } from './errors.ts'

/** The mode of a managed file whose config gives none. */
export const DEFAULT_FILE_MODE = 0o644

/** Parse `mode: 0644` (YAML gives 644 or 420 or "0644") into a number. */
export function parseMode(v: unknown): number {
  if (v === undefined || v === null) return DEFAULT_FILE_MODE
  if (typeof v === 'string' && /^0?[0-7]{3,4}$/.test(v)) return parseInt(v, 8)
  if (typeof v === 'number' && Number.isInteger(v)) {
    // YAML 1.2 reads `0644` as the decimal 644, and people write modes in octal digits, so
    // three or four octal digits are read as octal. Other numbers are taken as the mode itself.
    const s = String(v)
    if (/^[0-7]{3,4}$/.test(s)) return parseInt(s, 8)
    if (v >= 0 && v <= 0o7777) return v
  }
  throw new InvalidConfigError(
    `mode ${JSON.stringify(v)} is not a file mode (write it as "0644": three or four octal digits)`
  )
}
