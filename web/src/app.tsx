/**
 * The dashboard's frame: header (fleet, connection, signing key), navigation, and the current
 * view. Navigation lives in the URL hash so views can be linked and the back button works.
 */
import { useEffect, useMemo, useState } from 'preact/hooks'
import type { FleetSnapshot, FleetSource } from './fleet-source.ts'
import { NAVIGATE_EVENT, navigate, routeFromHash, type Route, type ViewName } from './navigation.ts'
import { ConnectPanel } from './views/connect-panel.tsx'
import { KeyPanel } from './views/key-panel.tsx'
import { Overview } from './views/overview.tsx'
import { NodeDetail } from './views/node-detail.tsx'
import { DesiredConfig } from './views/desired-config.tsx'
import { History } from './views/history.tsx'
import { Topology } from './views/topology.tsx'
import { Rollouts } from './views/rollouts.tsx'

const VIEWS: Array<{ id: ViewName; label: string }> = [
  { id: 'overview', label: 'Fleet' },
  { id: 'config', label: 'Desired config' },
  { id: 'history', label: 'History' },
  { id: 'rollouts', label: 'Rollouts' },
  { id: 'topology', label: 'Topology' }
]

function useSnapshot(source: FleetSource): FleetSnapshot {
  const [snap, setSnap] = useState(source.snapshot())
  useEffect(() => source.subscribe(setSnap), [source])
  return snap
}

function useRoute(): Route {
  const [route, setRoute] = useState(routeFromHash())
  useEffect(() => {
    const on = (): void => setRoute(routeFromHash())
    addEventListener('popstate', on)
    addEventListener('hashchange', on)
    addEventListener(NAVIGATE_EVENT, on)
    return () => {
      removeEventListener('popstate', on)
      removeEventListener('hashchange', on)
      removeEventListener(NAVIGATE_EVENT, on)
    }
  }, [])
  return route
}

/** Re-render every few seconds so "last seen" and staleness age on screen without new events. */
function useNow(ms = 2000): number {
  const [now, setNow] = useState(Date.now())
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms)
    return () => clearInterval(t)
  }, [ms])
  return now
}

export function App({ source }: { source: FleetSource }) {
  const snap = useSnapshot(source)
  const route = useRoute()
  const now = useNow()
  const [keyOpen, setKeyOpen] = useState(false)
  const c = snap.connection
  // once a key is unlocked the drawer has done its job
  const signerKey = snap.signer?.publicKey
  useEffect(() => {
    if (signerKey !== undefined) setKeyOpen(false)
  }, [signerKey])
  const connected = c.state === 'connected'
  const counts = useMemo(
    () => ({ nodes: snap.nodes.length, stale: snap.nodes.filter(n => n.stale).length }),
    [snap.nodes]
  )

  return (
    <div class='shell'>
      <header class='topbar'>
        <div class='brand'>
          <svg width='22' height='22' viewBox='0 0 16 16' aria-hidden='true'>
            <circle cx='8' cy='8' r='6' fill='#2f855a' />
            <circle cx='8' cy='8' r='2.5' fill='#fff' />
          </svg>
          <span>Rhizome</span>
          {c.fleet !== undefined && (
            <span class='fleet-name' title={c.fleetId}>
              {c.fleet}
            </span>
          )}
        </div>
        <nav class='tabs' aria-label='Views'>
          {VIEWS.map(v => (
            <a
              href={`#view=${v.id}`}
              class={
                route.view === v.id || (v.id === 'overview' && route.view === 'node')
                  ? 'tab active'
                  : 'tab'
              }
              onClick={e => {
                e.preventDefault()
                navigate({ view: v.id })
              }}
            >
              {v.label}
            </a>
          ))}
        </nav>
        <div class='session'>
          <span class={`pill conn-${c.state}`} data-testid='connection' title={c.address}>
            {c.state === 'connected'
              ? c.upgrading === true
                ? 'connected · signing in with the unlocked key…'
                : `connected · ${c.admission ?? 'peer'} · ${c.connectedTo.length} daemon${c.connectedTo.length === 1 ? '' : 's'}`
              : c.state}
          </span>
          <button
            class={snap.signer !== undefined ? 'btn small signer-on' : 'btn small'}
            data-testid='key-button'
            onClick={() => setKeyOpen(!keyOpen)}
          >
            {snap.signer !== undefined
              ? `Signing as ${snap.signer.name ?? snap.signer.label}`
              : 'Unlock signing key'}
          </button>
        </div>
      </header>
      {keyOpen && <KeyPanel source={source} snap={snap} onClose={() => setKeyOpen(false)} />}
      {!connected && <ConnectPanel source={source} snap={snap} />}
      <main class='content'>
        {connected && route.view === 'overview' && <Overview snap={snap} now={now} />}
        {connected && route.view === 'node' && (
          <NodeDetail snap={snap} now={now} nodeName={route.node} />
        )}
        {connected && route.view === 'config' && (
          <DesiredConfig
            source={source}
            snap={snap}
            docId={route.doc}
            onNeedKey={() => setKeyOpen(true)}
          />
        )}
        {connected && route.view === 'history' && (
          <History source={source} snap={snap} docId={route.doc} />
        )}
        {connected && route.view === 'topology' && <Topology snap={snap} />}
        {connected && route.view === 'rollouts' && (
          <Rollouts source={source} snap={snap} onNeedKey={() => setKeyOpen(true)} />
        )}
      </main>
      <footer class='footer'>
        {connected ? (
          <span>
            {counts.nodes} nodes · {counts.stale} down · this browser is peer{' '}
            <code>{c.selfPeerId?.slice(-10)}</code> via <code>{c.address}</code>
          </span>
        ) : (
          <span>Not connected. Nothing is shown until a daemon admits this browser.</span>
        )}
      </footer>
    </div>
  )
}
