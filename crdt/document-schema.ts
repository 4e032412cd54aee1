/**
 * The top-level maps every document starts with (created by its unsigned genesis change,
 * crdt/document.ts). Pure data, so the dashboard page can use it without loading Automerge.
 */
import { DEVICES_DOC } from './devices.ts'

export function documentSchema(docId: string): Record<string, Record<string, never>> {
  return docId === DEVICES_DOC ? { devices: {} } : { defaults: {}, groups: {}, nodes: {} }
}
