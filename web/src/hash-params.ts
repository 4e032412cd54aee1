/**
 * The page's state in its URL hash (`#view=node&node=till-7`), which also carries what a daemon
 * hands over: `#token=…` (a one-time viewer token) and `addr=…` (its WebSocket multiaddr).
 * The hash never reaches a server, so a token in it is not logged anywhere.
 */
export function readHash(): URLSearchParams {
  return new URLSearchParams(location.hash.replace(/^#/, ''))
}

export function writeHash(update: Record<string, string | undefined>, replace = false): void {
  const p = readHash()
  for (const [k, v] of Object.entries(update)) {
    if (v === undefined) p.delete(k)
    else p.set(k, v)
  }
  const url = `${location.pathname}${location.search}#${p.toString()}`
  if (replace) history.replaceState(null, '', url)
  else history.pushState(null, '', url)
}
