/**
 * Where the page is: the view and its subject, kept in the URL hash (hash-params.ts) so views
 * can be linked and the back button works. Views call `navigate`; the frame (app.tsx) listens.
 */
import { readHash, writeHash } from './hash-params.ts'

export type ViewName = 'overview' | 'node' | 'config' | 'history' | 'topology' | 'rollouts'

export interface Route {
  view: ViewName
  node?: string
  doc?: string
}

/** The event `navigate` dispatches on `window` after it changed the hash. */
export const NAVIGATE_EVENT = 'rhizome:navigate'

export function routeFromHash(): Route {
  const p = readHash()
  const v = p.get('view')
  const view: ViewName =
    v === 'node' || v === 'config' || v === 'history' || v === 'topology' || v === 'rollouts'
      ? v
      : 'overview'
  return { view, node: p.get('node') ?? undefined, doc: p.get('doc') ?? undefined }
}

export function navigate(route: Route): void {
  writeHash({ view: route.view, node: route.node, doc: route.doc })
  dispatchEvent(new Event(NAVIGATE_EVENT))
}
