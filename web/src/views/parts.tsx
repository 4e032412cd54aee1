/**
 * Small pieces of markup several views repeat: a table's header row, the document chips, a form
 * that runs an action in the page, an error shown in red.
 */
import type { ComponentChildren } from 'preact'
import { navigate, type ViewName } from '../navigation.ts'

/** A `<thead>` with one plain `<th>` a column. */
export function TableHead({ columns }: { columns: string[] }) {
  return (
    <thead>
      <tr>
        {columns.map((c, i) => (
          <th key={i}>{c}</th>
        ))}
      </tr>
    </thead>
  )
}

/** One chip a document, `current` highlighted; a click opens that document in `view`. */
export function DocChips({
  docs,
  current,
  view
}: {
  docs: Array<{ id: string }>
  current: string | undefined
  view: ViewName
}) {
  return (
    <>
      {docs.map(d => (
        <button
          key={d.id}
          class={d.id === current ? 'chip active' : 'chip'}
          onClick={() => navigate({ view, doc: d.id })}
        >
          {d.id}
        </button>
      ))}
    </>
  )
}

/** A form whose submit runs `action` in this page instead of loading another. */
export function ActionForm({
  action,
  children
}: {
  action: () => Promise<void>
  children: ComponentChildren
}) {
  return (
    <form
      onSubmit={e => {
        e.preventDefault()
        void action()
      }}
    >
      {children}
    </form>
  )
}

/** What went wrong, in a red alert; nothing while `message` is undefined. */
export function ErrorAlert({ message, testid }: { message: string | undefined; testid?: string }) {
  if (message === undefined) return null
  return (
    <div class='alert bad' data-testid={testid}>
      {message}
    </div>
  )
}
