/**
 * The status contract (crdt/fleet-status.ts), which the daemon's API, the CLI and the dashboard
 * all use: a hostile body is parsed into a bounded, typed one; the "up to date" rule counts
 * every document, `devices` included, and tells a node that is ahead from one that is behind;
 * the fleet list shows enrolled nodes never heard from and nodes gone quiet.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import {
  DRIFT_SHOWN_MS,
  fleetNodes,
  parseStatusBody,
  recentPutBacks,
  STATUS_LIMITS,
  syncState,
  type ReceivedStatus
} from '../crdt/fleet-status.ts'

const h = (c: string): string => c.repeat(64)

describe('status body', () => {
  it('parses what a well-behaved daemon sends, unchanged', () => {
    const body = {
      name: 'n1',
      labels: { site: 'lab' },
      revision: { fleet: [h('a')] },
      applied: { fleet: [h('a')] },
      workloads: {
        web: { state: 'running', healthy: true, restarts: 0, version: '2', pid: 7, log: ['up'] }
      },
      files: { ok: true, drifted: [] },
      peers: ['12D3KooWx'],
      errors: [],
      startedAt: 1,
      at: 2
    }
    assert.deepEqual(parseStatusBody(body), body)
  })

  it('turns anything else into a bounded body of the right types, without throwing', () => {
    for (const junk of [null, 'x', 42, [], { files: 'no' }]) {
      const b = parseStatusBody(junk, 'fallback')
      assert.equal(b.name, 'fallback')
      assert.deepEqual(b.workloads, {})
      assert.deepEqual(b.files, { ok: true, drifted: [] })
    }
    const b = parseStatusBody({
      name: 7,
      labels: Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`k${i}`, i])),
      applied: { fleet: 'not a list' },
      workloads: { w: { state: 'exploded', healthy: 'yes', log: Array(10_000).fill('x') } },
      peers: Array(10_000).fill('p'),
      errors: Array(100).fill('e'.repeat(5000))
    })
    assert.equal(b.name, '')
    assert.equal(Object.keys(b.labels).length, STATUS_LIMITS.labels)
    assert.equal(b.labels.k1, '1')
    assert.deepEqual(b.applied, { fleet: [] })
    assert.equal(b.workloads.w?.state, 'unknown')
    assert.equal(b.workloads.w?.healthy, null)
    assert.equal(b.workloads.w?.log.length, STATUS_LIMITS.logLines)
    assert.equal(b.peers.length, STATUS_LIMITS.entries)
    assert.equal(b.errors.length, STATUS_LIMITS.errors)
    assert.equal(b.errors[0]?.length, STATUS_LIMITS.text)
  })
  it('keeps a peer-chosen "__proto__" key from setting an object\'s prototype', () => {
    const report = { digest: 'd'.repeat(64), seenAt: 1 }
    const b = parseStatusBody(
      JSON.parse(
        JSON.stringify({ name: 'n', at: 1 }).replace(
          /}$/,
          `,"revision":{"__proto__":["${h('a')}"]},"workloads":{"__proto__":{"state":"running"}},"artifacts":{"__proto__":{"state":"complete"}},"rollouts":{"__proto__":${JSON.stringify(report)}},"labels":{"__proto__":{"site":"x"}}}`
        )
      )
    )
    for (const [what, o] of Object.entries({
      revision: b.revision,
      workloads: b.workloads,
      labels: b.labels,
      artifacts: b.artifacts ?? {},
      rollouts: b.rollouts ?? {}
    })) {
      assert.equal(Object.getPrototypeOf(o), Object.prototype, what)
    }
    // A document named like an array method is not read from a planted prototype.
    assert.equal(b.revision.push, undefined)
  })
})

describe('up to date', () => {
  const latest = { fleet: [h('a')], devices: [h('d')] }

  it('counts the devices document: a node that has not applied an enrolment is behind', () => {
    assert.equal(syncState({ fleet: [h('a')], devices: [h('d')] }, latest), 'in-sync')
    // what `rhizome status` used to call up to date while the dashboard said behind
    assert.equal(syncState({ fleet: [h('a')], devices: [h('c')] }, latest), 'behind')
    assert.equal(syncState({ fleet: [h('a')] }, latest), 'behind')
  })

  it('tells a node ahead of the judge from one behind it', () => {
    const holds = (_id: string, heads: string[]): boolean => !heads.includes(h('e'))
    assert.equal(
      syncState({ fleet: [h('e')], devices: [h('d')] }, latest, holds),
      'ahead-or-diverged'
    )
    assert.equal(syncState({ fleet: [h('b')], devices: [h('d')] }, latest, holds), 'behind')
    assert.equal(syncState({}, {}), 'unknown')
  })

  it('compares heads as sets', () => {
    assert.equal(syncState({ fleet: [h('b'), h('a')] }, { fleet: [h('a'), h('b')] }), 'in-sync')
  })
})

describe('fleet list', () => {
  it('lists enrolled nodes never heard from, nodes gone quiet, and the judge itself', () => {
    const record = (key: string, stale: boolean, applied: Record<string, string[]>) =>
      ({
        node: key,
        peerId: `peer-${key.slice(0, 4)}`,
        body: { name: `self-named-${key.slice(0, 2)}`, applied },
        receivedAt: 1000,
        stale
      }) satisfies ReceivedStatus
    const nodes = fleetNodes({
      enrolled: new Map<string, { name: string; labels: Record<string, string> }>([
        [h('1'), { name: 'n1', labels: { site: 'lab' } }],
        [h('2'), { name: 'n2', labels: {} }],
        [h('3'), { name: 'n3', labels: {} }]
      ]),
      records: [record(h('1'), false, { fleet: [h('a')] }), record(h('2'), true, {})],
      latest: { fleet: [h('a')] },
      peerIdOf: key => `derived-${key.slice(0, 4)}`,
      self: h('1')
    })
    assert.deepEqual(
      nodes.map(n => [n.name, n.online, n.stale, n.lastSeen, n.upToDate, n.self]),
      [
        ['n1', true, false, 1000, true, true],
        ['n2', false, true, 1000, false, false],
        ['n3', false, null, null, null, false]
      ]
    )
    assert.equal(nodes[2]?.peerId, 'derived-3333')
    assert.equal(nodes[0]?.labels.site, 'lab')
  })
})

describe('files put back', () => {
  const MIN = 60_000
  const node = (files: unknown, at: number, lastSeen: number) => ({
    status: parseStatusBody({ name: 'n', files, at }),
    lastSeen
  })

  it('are shown with when they were put back until DRIFT_SHOWN_MS, then age out', () => {
    const t = 1_000_000_000
    const n = node(
      { ok: true, drifted: ['/etc/b', '/etc/a'], putBackAt: { '/etc/a': t, '/etc/b': t + MIN } },
      t + MIN,
      t + MIN
    )
    assert.deepEqual(recentPutBacks(n, t + MIN), [
      { path: '/etc/b', at: t + MIN },
      { path: '/etc/a', at: t }
    ])
    // The record is kept (the node went down, say): the put-backs still age out on their own.
    assert.deepEqual(recentPutBacks(n, t + DRIFT_SHOWN_MS + MIN / 2), [
      { path: '/etc/b', at: t + MIN }
    ])
    assert.deepEqual(recentPutBacks(n, t + DRIFT_SHOWN_MS + 2 * MIN), [])
  })

  it("are judged on the reader's clock, whatever the node's clock says", () => {
    // The node's clock is an hour ahead: its record says it was made at its 'at', and it arrived
    // at the reader's 1000; the put-back happened 2 min before the record was made.
    const skew = 3600_000
    const made = 5_000_000 + skew
    const n = node(
      { ok: true, drifted: ['/etc/a'], putBackAt: { '/etc/a': made - 2 * MIN } },
      made,
      5_000_000
    )
    assert.deepEqual(recentPutBacks(n, 5_000_000), [{ path: '/etc/a', at: 5_000_000 - 2 * MIN }])
    assert.deepEqual(recentPutBacks(n, 5_000_000 + DRIFT_SHOWN_MS), [])
  })

  it('of older daemons (no times) are listed without a time; none when nothing drifted', () => {
    assert.deepEqual(recentPutBacks(node({ ok: true, drifted: ['/etc/a'] }, 1, 1), 1e12), [
      { path: '/etc/a', at: null }
    ])
    assert.deepEqual(recentPutBacks(node({ ok: false, drifted: [] }, 1, 1), 1), [])
    assert.deepEqual(recentPutBacks({ status: null, lastSeen: null }, 1), [])
  })

  it('parse only times of listed paths, and only numbers', () => {
    const b = parseStatusBody({
      files: { drifted: ['/a'], putBackAt: { '/a': 'soon', '/b': 5, constructor: 1 } }
    })
    assert.deepEqual(b.files, { ok: true, drifted: ['/a'], putBackAt: {} })
  })
})
