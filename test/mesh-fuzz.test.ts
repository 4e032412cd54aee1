/**
 * A short fuzz run over every mesh decoder and the sync stream's message handler (frames, sync
 * protocol messages, status records, browser session requests, replies and vouchers, remote logs
 * requests and replies; test/fixtures/fuzz-mesh-targets.ts): mutated valid inputs plus random
 * bytes. Each is accepted or refused with a categorised error; none crashes, none takes a second,
 * and the heap does not grow with the inputs. The long run, a million inputs, is
 * `FUZZ_TARGETS=mesh npm run bench -- bench/fuzz.bench.ts`. A failure prints the input in hex and
 * the seed that replays it.
 */
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { fuzz } from './fixtures/fuzz.ts'
import { meshTargets } from './fixtures/fuzz-mesh-targets.ts'

const SEED = Number(process.env.FUZZ_SEED ?? 20261126)
const INPUTS = Number(process.env.FUZZ_INPUTS ?? 2500)

test(`fuzz: mesh decoders and the sync message handler (${INPUTS} inputs each, seed ${SEED})`, async () => {
  for (const target of await meshTargets()) {
    const r = await fuzz(target, { inputs: INPUTS, seed: SEED })
    assert.deepEqual(r.crashes, [], `${r.name}: inputs that crashed (seed ${SEED})`)
    assert.deepEqual(r.hangs, [], `${r.name}: inputs slower than 1 s (seed ${SEED})`)
    assert.ok(r.accepted >= target.seeds.length, `${r.name}: its valid seeds were accepted`)
    assert.ok(r.refused > 0, `${r.name}: mutated inputs were refused`)
    assert.ok(
      r.heapGrowth < 64 * 1024 * 1024,
      `${r.name}: the heap grew by ${(r.heapGrowth / 1048576).toFixed(0)} MiB`
    )
  }
})
