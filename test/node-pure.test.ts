/**
 * The daemon's pure parts: the apply diff, the fleet file and daemon config checks, the log
 * ring buffer, restart back-off and the bundle container.
 */
import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as Automerge from '@automerge/automerge'
import { applyOps, diffDocument, diffMaps, formatOps, plainValue } from '../crdt/config-diff.ts'
import { parseFleetYaml } from '../crdt/fleet-yaml.ts'
import { loadDaemonConfig } from '../node/config.ts'
import { LineSplitter, RingBuffer } from '../node/ring-buffer.ts'
import { backoffDelay, DEFAULT_BACKOFF } from '../node/backoff.ts'
import { decodeBundle, encodeBundle, readBundle } from '../node/bundle.ts'
import { parseMode } from '../node/appliers/files.ts'
import { concatBytes, utf8 } from '../crdt/bytes.ts'

describe('apply diff', () => {
  it('sets changed leaves, deletes removed keys, leaves equal values alone', () => {
    const current = { defaults: { a: 1, b: { c: 'x', d: [1, 2] }, gone: true }, same: { k: 'v' } }
    const desired = {
      defaults: { a: 2, b: { c: 'x', d: [1, 2, 3] }, added: { n: null } },
      same: { k: 'v' }
    }
    const ops = diffMaps(current, desired)
    assert.deepEqual(
      ops.map(o => `${o.op} ${o.path.join('.')}`),
      ['set defaults.a', 'set defaults.added', 'set defaults.b.d', 'delete defaults.gone']
    )
    const copy = structuredClone(current) as Record<string, unknown>
    applyOps(copy, ops)
    assert.deepEqual(copy, desired)
    assert.deepEqual(formatOps(ops, 'fleet'), [
      '- fleet:defaults.a = 1',
      '+ fleet:defaults.a = 2',
      '+ fleet:defaults.added = {"n":null}',
      '- fleet:defaults.b.d = [1,2]',
      '+ fleet:defaults.b.d = [1,2,3]',
      '- fleet:defaults.gone = true'
    ])
  })

  it('is empty for equal maps and replaces a leaf that changes type', () => {
    assert.deepEqual(diffMaps({ a: { b: 1 } }, { a: { b: 1 } }), [])
    const ops = diffMaps({ a: { b: 1 } }, { a: 'flat' })
    assert.deepEqual(ops, [{ op: 'set', path: ['a'], value: 'flat', old: { b: 1 }, had: true }])
  })

  it('applies to an Automerge document as one small change that merges with a concurrent one', () => {
    let doc = Automerge.from<Record<string, unknown>>({ defaults: { x: 1, y: 2 } })
    let other = Automerge.clone(doc)
    const ops = diffMaps(plainValue(doc) as Record<string, unknown>, { defaults: { x: 10, y: 2 } })
    doc = Automerge.change(doc, d => {
      applyOps(d, ops)
    })
    other = Automerge.change(other, d => {
      ;(d.defaults as Record<string, unknown>).y = 20
    })
    const merged = Automerge.merge(doc, other)
    assert.deepEqual(plainValue(merged), { defaults: { x: 10, y: 20 } })
  })
})

describe('document diff', () => {
  it("empties a document's top-level maps a fleet file leaves out, and never deletes them", () => {
    const current = { defaults: { a: 1 }, groups: { g: { selector: {} } }, nodes: {} }
    const ops = diffDocument({ id: 'fleet', value: current }, { defaults: { a: 2 } })
    // a deleted top-level map would be re-created concurrently by two writers, and one lost
    assert.deepEqual(formatOps(ops), [
      '- defaults.a = 1',
      '+ defaults.a = 2',
      '- groups.g = {"selector":{}}'
    ])
    const fresh = { defaults: {}, groups: {}, nodes: {} }
    assert.deepEqual(
      formatOps(diffDocument({ id: 'site/x', value: fresh }, { selector: { site: 'x' } })),
      ['+ selector = {"site":"x"}']
    )
  })
})

describe('fleet file', () => {
  it('accepts documents by id and names an unknown key with the valid ones', () => {
    const docs = parseFleetYaml(
      'fleet:\n  defaults:\n    files:\n      /etc/motd: { content: hi }\nsite/berlin-3:\n  selector: { site: berlin-3 }\n'
    )
    assert.deepEqual(Object.keys(docs), ['fleet', 'site/berlin-3'])
    assert.throws(() => parseFleetYaml('fleet:\n  default: {}\n'), {
      name: 'InvalidConfigError',
      message: /unknown key "default"; valid keys are selector, defaults, groups, nodes/
    })
    assert.throws(
      () =>
        parseFleetYaml(
          'fleet:\n  nodes:\n    a: { workloads: { w: { command: [x], port: 1 } } }\n'
        ),
      { name: 'InvalidConfigError', message: /fleet\.nodes\.a\.workloads\.w: unknown key "port"/ }
    )
  })

  it('rejects broken YAML, bad document ids, relative paths and the devices document', () => {
    assert.throws(() => parseFleetYaml('fleet: [unclosed'), {
      name: 'InvalidConfigError',
      message: /not valid YAML/
    })
    assert.throws(() => parseFleetYaml('Fleet: {}'), {
      name: 'InvalidConfigError',
      message: /not a document id/
    })
    assert.throws(
      () => parseFleetYaml('fleet:\n  defaults: { files: { etc/motd: { content: x } } }'),
      { message: /not an absolute path/ }
    )
    assert.throws(() => parseFleetYaml('devices: {}'), { message: /rhizome enrol/ })
    assert.throws(() => parseFleetYaml('a: 1\na: 2\n'), { name: 'InvalidConfigError' })
  })
})

/** Two well-formed peer ids (bootstrap addresses must name one). */
const PEER_A = '12D3KooWADXfS4pCXE6LRgcL6kVmtAaDSpCMNKu8WzMNpyxgRZGu'
const PEER_B = '12D3KooWPE46R9vB51tmYocPzB2UX7dFs1dcLhapsyPVark1mnn3'

describe('daemon config', () => {
  it('reads the file, resolves relative paths, lets RHIZOME_* override', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rhizome-cfg-'))
    const f = join(dir, 'd.yaml')
    await writeFile(
      f,
      'name: a\ndataDir: data\nlabels: { site: x }\nhttp: { port: 9000 }\nmdns: false\n'
    )
    const c = loadDaemonConfig(f, {
      RHIZOME_HTTP_PORT: '9100',
      RHIZOME_LABELS: 'site=y,role=pos',
      RHIZOME_BOOTSTRAP: `/ip4/1.2.3.4/tcp/1/p2p/${PEER_A}, /ip4/1.2.3.5/tcp/1/p2p/${PEER_B}`
    })
    assert.equal(c.dataDir, join(dir, 'data'))
    assert.equal(c.http.port, 9100)
    assert.equal(c.http.host, '127.0.0.1')
    assert.deepEqual(c.labels, { site: 'y', role: 'pos' })
    assert.equal(c.bootstrap.length, 2)
    assert.equal(c.mdns, false)
    assert.equal(c.configFile, f)
    // The daemon's own config directory is no default place for managed files.
    assert.deepEqual(c.allowedRoots, ['/opt/rhizome', '/srv/rhizome'])
  })

  it('names an unknown key, a bad value and a missing data dir', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rhizome-cfg-'))
    const f = join(dir, 'd.yaml')
    await writeFile(f, 'dataDir: d\nlisten_addrs: []\n')
    assert.throws(() => loadDaemonConfig(f, {}), {
      name: 'InvalidConfigError',
      message: /unknown key "listen_addrs"; valid keys are name, labels, dataDir/
    })
    await writeFile(f, 'dataDir: d\nhttp: { port: 99999 }\n')
    assert.throws(() => loadDaemonConfig(f, {}), {
      message: /http\.port: expected an integer from 0 to 65535/
    })
    assert.throws(
      () => loadDaemonConfig(undefined, { RHIZOME_DATA_DIR: 'd', RHIZOME_MDNS: 'maybe' }),
      { message: /RHIZOME_MDNS: expected true or false/ }
    )
    assert.throws(() => loadDaemonConfig(undefined, {}), { message: /dataDir is required/ })
    await writeFile(f, 'dataDir: [oops\n')
    assert.throws(() => loadDaemonConfig(f, {}), { message: /not valid YAML/ })
  })

  it('refuses at load a bootstrap address without its peer id, a listen typo or peer id', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rhizome-cfg-'))
    const f = join(dir, 'd.yaml')
    // What a new operator writes first: the address alone. The daemon used to get as far as
    // starting the mesh and die with a stack trace and "this is a bug" (exit 4).
    await writeFile(
      f,
      `dataDir: d\nbootstrap: [/ip4/127.0.0.1/tcp/5101/p2p/${PEER_A}, /ip4/127.0.0.1/tcp/5102]\n`
    )
    assert.throws(() => loadDaemonConfig(f, {}), {
      name: 'InvalidConfigError',
      message:
        /bootstrap\[1\]: "\/ip4\/127.0.0.1\/tcp\/5102" has no \/p2p\/<PeerId>; append the peer's id/
    })
    await writeFile(f, 'dataDir: d\nlisten: [tcp:4001]\n')
    assert.throws(() => loadDaemonConfig(f, {}), {
      name: 'InvalidConfigError',
      message: /listen\[0\]: "tcp:4001" is not a multiaddr/
    })
    await writeFile(f, `dataDir: d\nlisten: [/ip4/0.0.0.0/tcp/4001/p2p/${PEER_A}]\n`)
    assert.throws(() => loadDaemonConfig(f, {}), {
      message: /listen\[0\]: .* a listen address names no peer id; remove its \/p2p\/… part/
    })
    assert.throws(
      () =>
        loadDaemonConfig(f, {
          RHIZOME_LISTEN: '/ip4/0.0.0.0/tcp/4001',
          RHIZOME_BOOTSTRAP: '/dns4/x'
        }),
      {
        message: /RHIZOME_BOOTSTRAP\[0\]: "\/dns4\/x" has no \/p2p/
      }
    )
  })
})

describe('log ring buffer', () => {
  it('keeps the last N lines, oldest first, each capped', () => {
    const r = new RingBuffer(3, 10)
    for (const l of ['a', 'b', 'c', 'd', 'e'.repeat(50)]) r.push(l)
    assert.deepEqual(r.last(), ['c', 'd', 'eeeeeeeee…'])
    assert.deepEqual(r.last(2), ['d', 'eeeeeeeee…'])
    assert.equal(r.size, 3)
  })

  it('splits chunks into lines and bounds a line that never ends', () => {
    const lines: string[] = []
    const s = new LineSplitter(l => lines.push(l), 8)
    s.write('one\ntw')
    s.write('o\r\nthr')
    s.write('ee-and-more-and-more')
    s.flush()
    assert.deepEqual(lines, ['one', 'two', 'three-and-more-and-more'])
  })
})

describe('restart back-off', () => {
  it('doubles from the base and stops at the cap', () => {
    const d = (n: number): number => backoffDelay(n, { ...DEFAULT_BACKOFF, jitter: 0 })
    assert.deepEqual([1, 2, 3, 4].map(d), [500, 1000, 2000, 4000])
    assert.equal(d(30), DEFAULT_BACKOFF.maxMs)
    assert.equal(d(10_000), DEFAULT_BACKOFF.maxMs)
    assert.ok(backoffDelay(2, DEFAULT_BACKOFF, () => 1) <= 1000 * 1.2)
  })
})

describe('bundle container', () => {
  const b = { trust: [new Uint8Array([1, 2])], batches: [new Uint8Array([3]), new Uint8Array(0)] }

  it('round-trips whole and in pieces of any size, and rejects what is not a bundle', async () => {
    const bytes = encodeBundle(b)
    assert.deepEqual(await decodeBundle(bytes), b)
    for (const size of [1, 2, 3, 7]) {
      const pieces: Uint8Array[] = []
      for (let i = 0; i < bytes.length; i += size) pieces.push(bytes.slice(i, i + size))
      const seen: number[] = []
      for await (const s of readBundle(pieces)) seen.push(s.payload.length)
      assert.deepEqual(seen, [2, 1, 0])
    }
    await assert.rejects(decodeBundle(new TextEncoder().encode('hello world')), {
      name: 'InvalidBundleError'
    })
    await assert.rejects(decodeBundle(bytes.slice(0, bytes.length - 1)), {
      name: 'InvalidBundleError',
      message: /damaged.*truncated/
    })
    await assert.rejects(decodeBundle(concatBytes(bytes, new Uint8Array([0]))), {
      name: 'InvalidBundleError',
      message: /bytes follow its end/
    })
  })

  it('reports every single-bit flip anywhere in a bundle as damage', async () => {
    const bytes = encodeBundle({
      trust: [utf8('{"statement":{"version":1}}')],
      batches: [new Uint8Array(300).map((_, i) => i), new Uint8Array(40)]
    })
    for (let bit = 0; bit < bytes.length * 8; bit++) {
      const flipped = bytes.slice()
      flipped[bit >> 3] = (flipped[bit >> 3] as number) ^ (1 << (bit & 7))
      await assert.rejects(
        decodeBundle(flipped),
        { name: 'InvalidBundleError' },
        `a flip of bit ${bit} went unnoticed`
      )
    }
  })

  it('reads a format-1 bundle only to say it must be exported again', async () => {
    const v1 = concatBytes(utf8('RHZB'), new Uint8Array([1, 0, 0]))
    await assert.rejects(decodeBundle(v1), {
      name: 'InvalidBundleError',
      message: /export it again/
    })
  })
})

describe('file modes', () => {
  it('reads modes as people write them', () => {
    assert.equal(parseMode('0644'), 0o644)
    assert.equal(parseMode(644), 0o644)
    assert.equal(parseMode(444), 0o444)
    assert.equal(parseMode(0o4755 + 8), 0o4755 + 8)
    assert.equal(parseMode(undefined), 0o644)
    assert.throws(() => parseMode('rw-r--r--'))
  })
})
