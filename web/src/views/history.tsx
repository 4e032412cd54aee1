/** Every signed change of a document, newest first: signer, time, message and diff. */
import { useEffect, useState } from 'preact/hooks'
import type { FleetSnapshot, FleetSource, HistoryItem } from '../fleet-source.ts'
import { navigate } from '../navigation.ts'

const MAX_SHOWN = 500

export function History({
  source,
  snap,
  docId
}: {
  source: FleetSource
  snap: FleetSnapshot
  docId?: string
}) {
  const id = docId ?? 'fleet'
  const heads = snap.docs.find(d => d.id === id)?.heads.join() ?? ''
  const [items, setItems] = useState<HistoryItem[] | undefined>()
  const [error, setError] = useState<string | undefined>()
  useEffect(() => {
    let live = true
    source.history(id).then(
      h => {
        if (live) {
          setItems(h)
          setError(undefined)
        }
      },
      (err: Error) => {
        if (live) setError(err.message)
      }
    )
    return () => {
      live = false
    }
  }, [source, id, heads])
  return (
    <section data-testid='history'>
      <div class='doc-tabs'>
        {snap.docs.map(d => (
          <button
            key={d.id}
            class={d.id === id ? 'chip active' : 'chip'}
            onClick={() => navigate({ view: 'history', doc: d.id })}
          >
            {d.id}
          </button>
        ))}
      </div>
      {error !== undefined && (
        <div class='alert bad'>
          Could not read the history of “{id}”: {error}
        </div>
      )}
      {items === undefined && error === undefined && <p class='muted'>Reading history…</p>}
      {items !== undefined && items.length === 0 && (
        <div class='empty'>
          <h2>No changes to “{id}” yet</h2>
          <p>Publish one from the Desired config view.</p>
        </div>
      )}
      {items !== undefined && items.length > 0 && (
        <ol class='timeline'>
          {items.slice(0, MAX_SHOWN).map(h => (
            <li key={h.hash} class='change'>
              <div class='change-head'>
                <strong>{h.message ?? <span class='muted'>(no message)</span>}</strong>
                <span class={`badge role-${h.signerRole ?? 'unknown'}`}>
                  {h.signerName ?? 'unknown key'}
                  {h.signerRole !== undefined ? ` · ${h.signerRole}` : ''}
                </span>
                <span class='muted small' title='the author’s clock: informational'>
                  {h.time > 0 ? new Date(h.time).toLocaleString() : 'no time'}
                </span>
                <code class='muted small'>{h.hash.slice(0, 10)}</code>
              </div>
              <pre class='diff'>
                {h.diff.length === 0 ? (
                  <div class='muted'>(no visible change)</div>
                ) : (
                  h.diff.map((l, i) => (
                    <div key={i} class={l.startsWith('+') ? 'add' : 'del'}>
                      {l}
                    </div>
                  ))
                )}
              </pre>
              <div class='muted small mono'>signer key {h.signer.slice(0, 16)}…</div>
            </li>
          ))}
        </ol>
      )}
      {items !== undefined && items.length > MAX_SHOWN && (
        <p class='muted'>
          Showing the newest {MAX_SHOWN} of {items.length} changes.
        </p>
      )}
    </section>
  )
}
