/**
 * Every signed change of a document, newest first: signer, time, message and diff. Read a page
 * at a time (the newest, then older ones on request); a new revision reloads the newest page.
 */
import { useEffect, useState } from 'preact/hooks'
import type { FleetSnapshot, FleetSource, HistoryItem } from '../fleet-source.ts'
import { DocChips } from './parts.tsx'

/** Changes kept on the page at most (pages of older changes are appended up to it). */
const MAX_SHOWN = 1000

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
  const [next, setNext] = useState<string | null>(null)
  const [loadingMore, setLoadingMore] = useState(false)
  const [error, setError] = useState<string | undefined>()
  useEffect(() => {
    let live = true
    source.history(id).then(
      h => {
        if (live) {
          setItems(h.items)
          setNext(h.next)
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
  const older = async (): Promise<void> => {
    if (next === null || items === undefined) return
    setLoadingMore(true)
    try {
      const h = await source.history(id, next)
      setItems([...items, ...h.items].slice(0, MAX_SHOWN))
      setNext(items.length + h.items.length >= MAX_SHOWN ? null : h.next)
    } catch (err) {
      setError((err as Error).message)
    } finally {
      setLoadingMore(false)
    }
  }
  return (
    <section data-testid='history'>
      <div class='doc-tabs'>
        <DocChips docs={snap.docs} current={id} view='history' />
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
          {items.map(h => (
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
      {items !== undefined && next !== null && (
        <button
          class='btn'
          disabled={loadingMore}
          onClick={() => {
            void older()
          }}
          data-testid='history-older'
        >
          {loadingMore ? 'Reading…' : 'Show older changes'}
        </button>
      )}
      {items !== undefined && items.length >= MAX_SHOWN && (
        <p class='muted'>
          Showing the newest {MAX_SHOWN} changes; `rhizome history` reads further.
        </p>
      )}
    </section>
  )
}
