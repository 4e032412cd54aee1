/**
 * Canonical JSON: object keys sorted, no whitespace, no undefined, finite numbers only.
 * Signed JSON statements (trust) are signed over these bytes, so every peer hashes the same thing.
 */
import { MalformedInputError } from './errors.ts'

export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') {
    return JSON.stringify(value)
  }
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) {
      throw new MalformedInputError('canonical JSON has no place for NaN or Infinity')
    }
    return JSON.stringify(value)
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).filter(
      ([, v]) => v !== undefined
    )
    entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`
  }
  throw new MalformedInputError(`canonical JSON cannot hold a ${typeof value}`)
}
