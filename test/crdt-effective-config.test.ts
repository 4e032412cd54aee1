/**
 * The effective config: defaults, then matching groups in name order, then node overrides;
 * null removes a key; list values in selectors mean "any of"; a scoped document applies only to
 * the nodes its selector matches.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { effectiveConfig, type ConfigDocument } from '../crdt/effective-config.ts'

const till7 = { name: 'till-7', labels: { role: 'pos', site: 'berlin-3' } }
const kiosk = { name: 'kiosk-1', labels: { role: 'kiosk', site: 'paris-1' } }

test('layers apply in order: defaults, groups by name, node overrides', () => {
  const fleet: ConfigDocument = {
    id: 'fleet',
    value: {
      defaults: { ntp: 'pool.ntp.org', till: { version: '1', port: 80 }, motd: 'hello' },
      groups: {
        // Declared out of order: b-late must win over a-early because groups apply by name.
        'b-late': { selector: { role: 'pos' }, config: { till: { version: '3' } } },
        'a-early': { selector: { role: 'pos' }, config: { till: { version: '2', debug: true } } },
        kiosks: { selector: { role: 'kiosk' }, config: { screen: 'on' } }
      },
      nodes: { 'till-7': { till: { port: 8080 }, motd: null } }
    }
  }
  assert.deepEqual(effectiveConfig([fleet], till7), {
    ntp: 'pool.ntp.org',
    till: { version: '3', port: 8080, debug: true }
  })
  assert.deepEqual(effectiveConfig([fleet], kiosk), {
    ntp: 'pool.ntp.org',
    till: { version: '1', port: 80 },
    motd: 'hello',
    screen: 'on'
  })
})

test('null removes a key set by an earlier layer', () => {
  const fleet = {
    id: 'fleet',
    value: { defaults: { a: 1, b: { c: 2, d: 3 } }, groups: { g: { config: { b: { c: null } } } } }
  }
  assert.deepEqual(effectiveConfig([fleet], till7), { a: 1, b: { d: 3 } })
  assert.deepEqual(
    effectiveConfig(
      [{ id: 'fleet', value: { defaults: { a: 1 }, nodes: { 'till-7': { a: null } } } }],
      till7
    ),
    {}
  )
})

test('a list in a selector means any of its values; every label must match', () => {
  const fleet = {
    id: 'fleet',
    value: {
      groups: {
        shops: { selector: { site: ['berlin-3', 'hamburg-1'] }, config: { shop: true } },
        shopTills: { selector: { site: ['berlin-3'], role: 'pos' }, config: { till: true } },
        wrongRole: { selector: { site: 'berlin-3', role: 'kiosk' }, config: { never: true } }
      }
    }
  }
  assert.deepEqual(effectiveConfig([fleet], till7), { shop: true, till: true })
  assert.deepEqual(effectiveConfig([fleet], kiosk), {})
})

test('a scoped document applies only to the nodes it selects, after fleet', () => {
  const fleet = {
    id: 'fleet',
    value: { defaults: { ntp: 'pool.ntp.org', tz: 'UTC' }, nodes: { 'till-7': { owner: 'fleet' } } }
  }
  const berlin = {
    id: 'site/berlin-3',
    value: {
      selector: { site: 'berlin-3' },
      defaults: { tz: 'Europe/Berlin' },
      groups: { tills: { selector: { role: 'pos' }, config: { printer: 'lp0' } } },
      nodes: { 'till-7': { owner: 'berlin' } }
    }
  }
  // Order of the input list does not matter: fleet first, then the rest by id.
  for (const docs of [
    [fleet, berlin],
    [berlin, fleet]
  ]) {
    assert.deepEqual(effectiveConfig(docs, till7), {
      ntp: 'pool.ntp.org',
      tz: 'Europe/Berlin',
      printer: 'lp0',
      owner: 'berlin'
    })
    assert.deepEqual(effectiveConfig(docs, kiosk), { ntp: 'pool.ntp.org', tz: 'UTC' })
  }
})
