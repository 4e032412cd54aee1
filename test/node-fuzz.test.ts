/**
 * A short fuzz run over every decoder and handler of crdt/ and node/ that takes hostile bytes
 * (signed batches, trust statements, bundles, fleet YAML, daemon configuration, key files):
 * mutated valid inputs plus random bytes. Each input is accepted or refused with a categorised
 * error; none crashes (an uncategorised error), none takes a second. The long run, over a million
 * inputs, is `npm run bench -- bench/fuzz.bench.ts`. A failure prints the input in hex and the
 * seed that replays it.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { fuzz } from './fixtures/fuzz.ts'
import { crdtTargets } from './fixtures/fuzz-targets.ts'

const SEED = Number(process.env.FUZZ_SEED ?? 20261126)
const INPUTS = Number(process.env.FUZZ_INPUTS ?? 2500)

test(`fuzz: crdt and node decoders (${INPUTS} inputs each, seed ${SEED})`, async () => {
  for (const target of await crdtTargets()) {
    const r = await fuzz(target, { inputs: INPUTS, seed: SEED })
    assert.deepEqual(r.crashes, [], `${r.name}: inputs that crashed (seed ${SEED})`)
    assert.deepEqual(r.hangs, [], `${r.name}: inputs slower than 1 s (seed ${SEED})`)
    assert.ok(r.accepted >= target.seeds.length, `${r.name}: its valid seeds were accepted`)
    assert.ok(r.refused > INPUTS / 2, `${r.name}: most mutated inputs were refused`)
  }
})

test('a key file that asks for a gigabyte of scrypt is refused before any work', async () => {
  const { parseKeyFile } = await import('../crdt/keys.ts')
  const costly = JSON.stringify({
    rhizome: 'key/v1',
    label: 'costly',
    publicKey: '00'.repeat(32),
    kdf: { name: 'scrypt', N: 1 << 20, r: 64, p: 16, salt: '00'.repeat(16) },
    nonce: '00'.repeat(24),
    box: '00'.repeat(48)
  })
  assert.throws(() => parseKeyFile(costly), { name: 'MalformedInputError' })
})

test('a fleet file with an alias before its anchor is a configuration error, not a crash', async () => {
  const { parseFleetYaml } = await import('../crdt/fleet-yaml.ts')
  assert.throws(() => parseFleetYaml('fleet: *nowhere\n'), { name: 'InvalidConfigError' })
  assert.throws(() => parseFleetYaml('{ [a]: 1 }: x\n'), { name: 'InvalidConfigError' })
})
