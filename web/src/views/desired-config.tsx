/**
 * Desired config: a YAML view and editor per document, a diff before publishing, then
 * sign-and-publish with the key unlocked in this page. The diff and the change are the same
 * minimal operations `rhizome apply` makes (node/config-diff.ts), so concurrent edits to other
 * keys merge instead of being overwritten.
 */
import { useEffect, useMemo, useState } from 'preact/hooks'
import { parseDocument, stringify } from 'yaml'
import { diffDocument, formatOps, type DiffOp } from '../../../crdt/config-diff.ts'
import { documentSchema } from '../../../crdt/document-schema.ts'
import { DEVICES_DOC } from '../../../crdt/devices.ts'
import type { FleetSnapshot, FleetSource } from '../fleet-source.ts'
import { shortHeads } from '../../../crdt/fleet-status.ts'
import { DocChips, ErrorAlert } from './parts.tsx'

const MAX_EDIT_BYTES = 1024 * 1024

function parseEdited(text: string): Record<string, unknown> {
  if (text.length > MAX_EDIT_BYTES) {
    throw new Error(
      `the document is ${text.length} bytes; at most ${MAX_EDIT_BYTES} can be published from here`
    )
  }
  const parsed = parseDocument(text, { prettyErrors: true, uniqueKeys: true })
  const first = parsed.errors[0]
  if (first !== undefined) throw new Error(`not valid YAML: ${first.message}`)
  const v: unknown = parsed.toJS({ maxAliasCount: 100 }) ?? {}
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new Error('a config document is a map with selector, defaults, groups, nodes')
  }
  return v as Record<string, unknown>
}

/**
 * Edits in progress, by document id, for as long as the page is open: the editor is unmounted
 * by a switch to another view, by a reconnect, by a failed session upgrade; none of these may
 * throw away what someone typed. Dropped when published or discarded.
 */
const drafts = new Map<string, { text: string; baseHeads: string[] }>()

export function DesiredConfig({
  source,
  snap,
  docId,
  onNeedKey
}: {
  source: FleetSource
  snap: FleetSnapshot
  docId?: string
  onNeedKey: () => void
}) {
  const docs = snap.docs.filter(d => d.id !== DEVICES_DOC)
  const current = docs.find(d => d.id === (docId ?? 'fleet')) ?? docs[0]
  const id = current?.id ?? docId ?? 'fleet'
  const original = useMemo(
    () =>
      current === undefined || Object.keys(current.value).length === 0
        ? ''
        : stringify(current.value, { lineWidth: 0 }),
    [current?.value]
  )
  const [text, setTextState] = useState(drafts.get(id)?.text ?? original)
  const [baseHeads, setBaseHeads] = useState(drafts.get(id)?.baseHeads ?? current?.heads ?? [])
  const [review, setReview] = useState<
    { ops: DiffOp[]; value: Record<string, unknown> } | undefined
  >()
  const [error, setError] = useState<string | undefined>()
  const [message, setMessage] = useState('')
  const [busy, setBusy] = useState(false)
  const [published, setPublished] = useState<string[] | undefined>()
  const dirty = text !== original

  // Follow remote changes while the editor is untouched; once edited, keep the person's text
  // (and the revision it started from, to warn when a newer one came meanwhile).
  useEffect(() => {
    const draft = drafts.get(id)
    setTextState(draft?.text ?? original)
    setBaseHeads(draft?.baseHeads ?? current?.heads ?? [])
  }, [original, id])

  const setText = (t: string): void => {
    setTextState(t)
    if (t === original) drafts.delete(id)
    else drafts.set(id, { text: t, baseHeads: drafts.get(id)?.baseHeads ?? baseHeads })
  }

  const startReview = async (): Promise<void> => {
    setError(undefined)
    setPublished(undefined)
    try {
      const value = parseEdited(text)
      await source.validate(id, value)
      const ops = diffDocument({ id, value: current?.value ?? documentSchema(id) }, value)
      if (ops.length === 0) {
        setError('Nothing changed: the edited YAML equals the current document.')
        return
      }
      setReview({ ops, value })
    } catch (err) {
      setError(`${(err as Error).message}. Fix the YAML and review again; nothing was published.`)
    }
  }

  const publish = async (): Promise<void> => {
    if (review === undefined) return
    if (snap.signer === undefined) {
      onNeedKey()
      setError(
        'Unlock a key file first (button at the top right): changes are signed in this page before they are published.'
      )
      return
    }
    setBusy(true)
    setError(undefined)
    try {
      const { heads } = await source.publish(
        id,
        review.value,
        message.trim() === '' ? `edit ${id} from the dashboard` : message.trim()
      )
      drafts.delete(id)
      setPublished(heads)
      setReview(undefined)
      setMessage('')
    } catch (err) {
      setError((err as Error).message)
    } finally {
      setBusy(false)
    }
  }

  const applied =
    published === undefined
      ? 0
      : snap.nodes.filter(n => published.every(h => (n.applied[id] ?? []).includes(h))).length
  const online = snap.nodes.filter(n => !n.stale).length
  const moved = current !== undefined && baseHeads.join() !== current.heads.join() && dirty

  return (
    <section data-testid='desired-config'>
      <div class='doc-tabs'>
        {docs.length === 0 && (
          <span class='muted'>No config documents yet: write the first one below.</span>
        )}
        <DocChips docs={docs} current={id} view='config' />
        <span class='muted small'>
          revision <code>{shortHeads(current?.heads)}</code>
        </span>
      </div>
      {moved && (
        <div class='alert warn'>
          Someone published a newer revision of “{id}” while you were editing. Your review will diff
          against the newest one; check it before signing.
        </div>
      )}
      <div class='cols'>
        <div class='panel'>
          <h3>Edit “{id}” (YAML)</h3>
          <textarea
            class='editor'
            spellcheck={false}
            value={text}
            data-testid='yaml-editor'
            onInput={e => {
              setText((e.target as HTMLTextAreaElement).value)
              setReview(undefined)
            }}
          />
          <div class='actions'>
            <button
              class='btn primary'
              disabled={!dirty}
              onClick={() => {
                void startReview()
              }}
              data-testid='review'
            >
              Review changes
            </button>
            <button
              class='btn'
              disabled={!dirty}
              onClick={() => {
                setText(original)
                setReview(undefined)
                setError(undefined)
              }}
            >
              Discard edits
            </button>
          </div>
        </div>
        <div class='panel'>
          <h3>Before publishing</h3>
          <ErrorAlert message={error} testid='config-error' />
          {review === undefined && error === undefined && published === undefined && (
            <p class='muted'>
              Edit the YAML, then “Review changes” to see exactly what will change. Nothing leaves
              this page until you sign.
            </p>
          )}
          {review !== undefined && (
            <div data-testid='diff'>
              <pre class='diff'>
                {formatOps(review.ops).map((l, i) => (
                  <div key={i} class={l.startsWith('+') ? 'add' : 'del'}>
                    {l}
                  </div>
                ))}
              </pre>
              <label class='field'>
                Change message
                <input
                  type='text'
                  value={message}
                  placeholder={`edit ${id} from the dashboard`}
                  onInput={e => setMessage((e.target as HTMLInputElement).value)}
                  data-testid='change-message'
                />
              </label>
              {snap.signer === undefined ? (
                <div class='alert warn'>
                  No signing key unlocked.{' '}
                  <button class='btn small' onClick={onNeedKey}>
                    Unlock a key file
                  </button>{' '}
                  — it stays in this tab.
                </div>
              ) : (
                <p class='muted small'>
                  Signed by <strong>{snap.signer.name ?? snap.signer.label}</strong> (
                  {snap.signer.role ?? 'unknown role'}) <code>{snap.signer.fingerprint}</code>
                </p>
              )}
              <button
                class='btn primary'
                disabled={busy || snap.signer === undefined}
                onClick={() => {
                  void publish()
                }}
                data-testid='publish'
              >
                {busy ? 'Signing…' : 'Sign and publish'}
              </button>
            </div>
          )}
          {published !== undefined && (
            <div class='alert ok' data-testid='published'>
              Published revision <code>{shortHeads(published)}</code>. Applied on{' '}
              <strong>{applied}</strong> of {snap.nodes.length} nodes ({online} online); daemons
              apply it within seconds of receiving it.
            </div>
          )}
        </div>
      </div>
    </section>
  )
}
