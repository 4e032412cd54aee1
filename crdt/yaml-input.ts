/**
 * YAML from a person or a file, read in one place (fleet files, daemon configuration): size
 * bounded, duplicate keys refused, every mapping key a string, aliases bounded, and every way the
 * text can be wrong reported as an `InvalidConfigError` that names the source — never a library
 * error escaping as an internal one (an alias used before its anchor made `yaml` throw a
 * ReferenceError).
 */
import { parseDocument } from 'yaml'
import { InvalidConfigError } from './errors.ts'

/** Aliases expanded at most this many times per document (a "billion laughs" stays small). */
export const MAX_YAML_ALIASES = 100

/** The plain value of a YAML text of at most `maxBytes` (undefined or null for an empty one). */
export function parseYamlInput(text: string, source: string, maxBytes: number): unknown {
  if (text.length > maxBytes) {
    throw new InvalidConfigError(
      `${source} is ${text.length} bytes; at most ${maxBytes} are accepted`
    )
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true, stringKeys: true })
  const first = doc.errors[0]
  if (first !== undefined) {
    throw new InvalidConfigError(`${source} is not valid YAML: ${first.message}`)
  }
  try {
    return doc.toJS({ maxAliasCount: MAX_YAML_ALIASES })
  } catch (err) {
    throw new InvalidConfigError(`${source} is not valid YAML: ${(err as Error).message}`)
  }
}
