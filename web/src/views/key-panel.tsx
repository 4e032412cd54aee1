/**
 * Unlocking a signing key: an encrypted key file (crdt/keys.ts format) and its passphrase.
 * Decryption and signing happen in this tab (in its worker); the key is never sent anywhere.
 */
import { useState } from 'preact/hooks'
import type { FleetSnapshot, FleetSource } from '../fleet-source.ts'
import { ActionForm, ErrorAlert } from './parts.tsx'

export function KeyPanel({
  source,
  snap,
  onClose
}: {
  source: FleetSource
  snap: FleetSnapshot
  onClose: () => void
}) {
  const [file, setFile] = useState<{ name: string; text: string } | undefined>()
  const [pass, setPass] = useState('')
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | undefined>()

  const unlock = async (): Promise<void> => {
    if (file === undefined) {
      setError('Choose a key file first (made by `rhizome init`).')
      return
    }
    setBusy(true)
    setError(undefined)
    try {
      await source.unlockKey(file.text, pass)
      setPass('')
      onClose()
    } catch (err) {
      setError((err as Error).message)
    } finally {
      setBusy(false)
    }
  }

  return (
    <div class='drawer' data-testid='key-panel'>
      <div class='drawer-head'>
        <h3>Signing key</h3>
        <button class='btn small' onClick={onClose} aria-label='Close'>
          ✕
        </button>
      </div>
      {snap.signer !== undefined ? (
        <div>
          <p>
            Signing as <strong>{snap.signer.name ?? snap.signer.label}</strong> (
            {snap.signer.role ?? 'not in the trust statement'}).
          </p>
          <p class='muted small'>
            fingerprint <code>{snap.signer.fingerprint}</code> · may write{' '}
            {snap.signer.scope.join(', ') || 'nothing'}
          </p>
          <button
            class='btn'
            onClick={() => {
              void source.forgetKey()
            }}
          >
            Forget key
          </button>
        </div>
      ) : (
        <ActionForm action={unlock}>
          <p class='muted small'>
            An admin or operator key file. It is decrypted and used only inside this tab; closing
            the tab forgets it.
          </p>
          <label class='field'>
            Key file
            <input
              type='file'
              accept='.json,.key,application/json'
              data-testid='key-file'
              onChange={async e => {
                const f = (e.target as HTMLInputElement).files?.[0]
                if (f !== undefined) setFile({ name: f.name, text: await f.text() })
              }}
            />
          </label>
          <label class='field'>
            Passphrase
            <input
              type='password'
              value={pass}
              autocomplete='off'
              data-testid='key-passphrase'
              onInput={e => setPass((e.target as HTMLInputElement).value)}
            />
          </label>
          <button class='btn primary' type='submit' disabled={busy} data-testid='key-unlock'>
            {busy ? 'Unlocking…' : 'Unlock'}
          </button>
        </ActionForm>
      )}
      <ErrorAlert message={error} testid='key-error' />
    </div>
  )
}
