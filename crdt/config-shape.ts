/**
 * Shape checks shared by everything that reads hand-written configuration (the fleet file's
 * documents, rollout specs): a mapping is a plain object, and a key nobody reads is refused with
 * the keys that are valid, rather than ignored (a misspelt key would otherwise do nothing, silently).
 */
import { InvalidConfigError } from './errors.ts'

/** A YAML/JSON mapping: a plain object, not null and not an array. */
export function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/**
 * A hostile mapping's entries, at most `max`, without `__proto__`: assigning that key to a plain
 * object sets the object's prototype instead of adding an entry (JSON.parse makes it an own key).
 */
export function entriesOf(v: Record<string, unknown>, max: number): Array<[string, unknown]> {
  return Object.entries(v)
    .filter(([k]) => k !== '__proto__')
    .slice(0, max)
}

/**
 * Throws `InvalidConfigError` naming `where` when `v` is not a mapping (saying it expected
 * `expected`) or has a key outside `valid`.
 */
export function checkMap(
  v: unknown,
  valid: readonly string[],
  where: string,
  expected: string
): asserts v is Record<string, unknown> {
  if (!isMap(v)) throw new InvalidConfigError(`${where}: expected ${expected}`)
  checkKeys(v, valid, where)
}

/** Throws `InvalidConfigError` naming `where` when `v` has a key outside `valid`. */
export function checkKeys(
  v: Record<string, unknown>,
  valid: readonly string[],
  where: string
): void {
  for (const k of Object.keys(v)) {
    if (!valid.includes(k)) {
      throw new InvalidConfigError(
        `${where}: unknown key "${k}"; valid keys are ${valid.join(', ')}`
      )
    }
  }
}
