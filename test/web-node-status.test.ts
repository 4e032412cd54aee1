/**
 * The fleet as the dashboard lists it (web/src/node-status.ts), without a browser: every enrolled
 * node, named as enrolled, one never heard from listed as down; a record that reaches the page
 * long after its node made it (relayed from a daemon's store) is down at once.
 */
import { it } from 'node:test'
import assert from 'node:assert/strict'
import {
  CLOCK_SKEW_ALLOWANCE_MS,
  fleetList,
  seenLabel,
  type RawStatus
} from '../web/src/node-status.ts'

const key = (c: string): string => c.repeat(64)
const STALE = 30_000
const now = 10_000_000

const record = (node: string, at: number, receivedAt = now): RawStatus => ({
  node,
  peerId: `peer-${node.slice(0, 2)}`,
  body: { name: 'self-named', at },
  receivedAt,
  stale: false
})

it('lists every enrolled node, by its enrolment, and marks one never heard from down', () => {
  const enrolled = new Map<string, { name: string; labels: Record<string, string> }>([
    [key('a'), { name: 'n1', labels: { site: 'lab' } }],
    [key('b'), { name: 'n2', labels: {} }]
  ])
  const list = fleetList([record(key('a'), now - 1000)], enrolled, now, STALE, k => `d-${k[0]}`)
  assert.deepEqual(
    list.map(n => [n.name, n.stale, n.neverSeen ?? false, n.peerId, seenLabel(n, now)]),
    [
      ['n1', false, false, 'peer-aa', 'online'],
      ['n2', true, true, 'd-b', 'down · never seen']
    ]
  )
  assert.deepEqual(list[0]?.labels, { site: 'lab' })
})

it('a record made long before it reached the page is down at once; a clock a little off is not', () => {
  const list = fleetList(
    [
      record(key('a'), now - 3600_000),
      record(key('b'), now - STALE - CLOCK_SKEW_ALLOWANCE_MS + 5000),
      record(key('c'), now + 60_000)
    ],
    new Map(),
    now,
    STALE,
    () => ''
  )
  assert.deepEqual(
    list.map(n => n.stale),
    [true, false, false]
  )
  assert.equal(seenLabel(list[0]!, now), 'down · last seen 1 h ago')
})
