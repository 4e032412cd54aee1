/**
 * What an error means is decided once, by its category: every error class of crdt/, mesh/ and
 * node/ has one, and the ban decision, the HTTP status and the CLI exit code follow from it.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as crdtErrors from '../crdt/errors.ts'
import * as meshErrors from '../mesh/errors.ts'
import * as nodeErrors from '../node/errors.ts'
import { categoryOf, ErrorCategory, isPeerFault, RhizomeError } from '../crdt/errors.ts'
import { httpStatusFor, HttpError } from '../node/http-api.ts'
import { exitCodeFor, EXIT } from '../node/cli-common.ts'

const classes = [crdtErrors, meshErrors, nodeErrors, { HttpError }].flatMap(m =>
  Object.values(m).filter(
    (v): v is new (...args: never[]) => Error =>
      typeof v === 'function' && v.prototype instanceof RhizomeError
  )
)

test('every error class has a category, and its name is its class name', () => {
  assert.ok(classes.length >= 25, `found ${classes.length} error classes`)
  const categories = new Set<string>(Object.values(ErrorCategory))
  for (const C of classes) {
    const e =
      C === HttpError
        ? new HttpError(404, 'NotFound', 'x')
        : new (C as new (m: string) => Error)('x')
    assert.equal(e.name, C.name)
    assert.ok(categories.has(categoryOf(e)), `${C.name} has category ${categoryOf(e)}`)
  }
})

test('ban, HTTP status and exit code are derived from the category', () => {
  const invalid = new crdtErrors.InvalidSignatureError('bad signature')
  const unknownKey = new crdtErrors.UnknownKeyError('who?')
  const full = new crdtErrors.PendingSetFullError('full')
  const usage = new nodeErrors.UsageError('no --key')
  const bug = new TypeError('undefined is not a function')
  assert.deepEqual(
    [invalid, unknownKey, full, usage, bug].map(e => [
      isPeerFault(e),
      httpStatusFor(e),
      exitCodeFor(e)
    ]),
    [
      [true, 400, EXIT.rejected],
      [true, 403, EXIT.rejected],
      [false, 503, EXIT.unreachable],
      [false, 400, EXIT.usage],
      [false, 500, EXIT.internal]
    ]
  )
  // A refusal relayed from a daemon keeps the daemon's category.
  const relayed = new nodeErrors.RejectedByDaemonError('NotFound', 'no such document', 'usage')
  assert.equal(exitCodeFor(relayed), EXIT.usage)
  assert.equal(exitCodeFor(new HttpError(404, 'NotFound', 'no such document')), EXIT.usage)
})
