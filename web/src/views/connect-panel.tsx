/**
 * Joining the mesh: which daemon to dial (its WebSocket multiaddr) and how this browser is
 * admitted (the one-time viewer token the daemon printed, or a session signed by an unlocked
 * admin or operator key). A daemon's dashboard URL carries both in its hash
 * (`#addr=…&token=…`); the token is removed from the address bar once used.
 */
import { useEffect, useState } from 'preact/hooks'
import type { FleetSnapshot, FleetSource } from '../fleet-source.ts'
import { readHash, writeHash } from '../hash-params.ts'
import { WorkerFleetSource } from '../worker-source.ts'
import { ActionForm, ErrorAlert } from './parts.tsx'

async function discoverAddress(): Promise<string | undefined> {
  // A daemon serving this page may list its addresses in /api/health; use a WebSocket one.
  try {
    const res = await fetch('./api/health', { signal: AbortSignal.timeout(3000) })
    if (!res.ok) return undefined
    const v = (await res.json()) as { addresses?: unknown; wsAddresses?: unknown }
    const list = [v.wsAddresses, v.addresses]
      .flatMap(a => (Array.isArray(a) ? a : []))
      .filter((a): a is string => typeof a === 'string' && /\/ws\/p2p\//.test(a))
    return list.find(a => a.includes('/127.0.0.1/')) ?? list[0]
  } catch {
    return undefined
  }
}

export function ConnectPanel({ source, snap }: { source: FleetSource; snap: FleetSnapshot }) {
  const p = readHash()
  const [address, setAddress] = useState(p.get('addr') ?? '')
  const [token, setToken] = useState(p.get('token') ?? '')
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | undefined>()
  const [trustName, setTrustName] = useState<string | undefined>()
  const stale = Number(p.get('stale') ?? '') || undefined

  const connect = async (addr = address, tok = token): Promise<void> => {
    setBusy(true)
    setError(undefined)
    try {
      await source.connect({
        address: addr.trim(),
        token: tok.trim() === '' ? undefined : tok.trim(),
        staleAfterMs: stale
      })
      // the token is spent: keep it out of the address bar and history
      writeHash({ token: undefined }, true)
      setToken('')
    } catch (err) {
      setError((err as Error).message)
    } finally {
      setBusy(false)
    }
  }

  useEffect(() => {
    void (async () => {
      let addr = address
      if (addr === '') {
        addr = (await discoverAddress()) ?? ''
        if (addr !== '') setAddress(addr)
      }
      if (addr !== '' && (token !== '' || snap.signer !== undefined)) await connect(addr, token)
    })()
  }, [])

  const onTrustFile = async (e: Event): Promise<void> => {
    const f = (e.target as HTMLInputElement).files?.[0]
    if (f === undefined || !(source instanceof WorkerFleetSource)) return
    try {
      const v: unknown = JSON.parse(await f.text())
      source.trustFile = Array.isArray(v) ? v : [v]
      setTrustName(f.name)
      setError(undefined)
    } catch {
      setError(`${f.name} is not JSON; choose the trust.json that \`rhizome init\` wrote`)
    }
  }

  const shownError =
    error ?? (snap.connection.state === 'error' ? snap.connection.error : undefined)
  return (
    <section class='connect' data-testid='connect'>
      <h2>Join the fleet's mesh</h2>
      <p class='muted'>
        This page becomes a peer of the mesh: it dials one daemon over WebSockets, is admitted, and
        then syncs signed changes and status like any node. Nothing is shown before a daemon admits
        it.
      </p>
      <ActionForm action={connect}>
        <label class='field'>
          Daemon WebSocket address
          <input
            type='text'
            value={address}
            placeholder='/ip4/192.168.1.20/tcp/4002/ws/p2p/12D3KooW…'
            onInput={e => setAddress((e.target as HTMLInputElement).value)}
            data-testid='connect-address'
          />
        </label>
        <label class='field'>
          Viewer token <span class='muted small'>(printed by that daemon; one use)</span>
          <input
            type='text'
            value={token}
            placeholder={
              snap.signer !== undefined
                ? 'not needed: your unlocked key signs the session'
                : 'e.g. 3f9c…'
            }
            onInput={e => setToken((e.target as HTMLInputElement).value)}
            data-testid='connect-token'
          />
        </label>
        {source instanceof WorkerFleetSource && (
          <label class='field'>
            Fleet trust file{' '}
            <span class='muted small'>
              (trust.json; only needed when this page was not opened from a daemon)
            </span>
            <input
              type='file'
              accept='.json,application/json'
              onChange={e => {
                void onTrustFile(e)
              }}
            />
            {trustName !== undefined && <span class='muted small'>using {trustName}</span>}
          </label>
        )}
        <div class='actions'>
          <button
            class='btn primary'
            type='submit'
            disabled={busy || address.trim() === ''}
            data-testid='connect-button'
          >
            {busy || snap.connection.state === 'connecting' ? 'Connecting…' : 'Connect'}
          </button>
        </div>
      </ActionForm>
      <ErrorAlert message={shownError} testid='connect-error' />
    </section>
  )
}
