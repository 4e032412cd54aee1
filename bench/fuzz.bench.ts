/**
 * The long fuzz run (issue: at least 1,000,000 inputs over every decoder and handler): each
 * target of test/fixtures/fuzz-targets.ts (crdt and node) and test/fixtures/fuzz-mesh-targets.ts
 * (mesh) gets its share of FUZZ_INPUTS (default 1,000,000 in all), with a random seed unless
 * FUZZ_SEED is set; FUZZ_TARGETS=crdt or mesh runs one set only (default both). Prints inputs per second, accepted/refused,
 * crashes, hangs (over 1 s), the slowest input and heap growth per target. Run with
 * `npm run bench -- bench/fuzz.bench.ts`; it asserts nothing, but says FAILED on a crash or hang.
 */
import { cpus } from 'node:os'
import { fuzz } from '../test/fixtures/fuzz.ts'
import { crdtTargets } from '../test/fixtures/fuzz-targets.ts'
import { meshTargets } from '../test/fixtures/fuzz-mesh-targets.ts'

const TOTAL = Number(process.env.FUZZ_INPUTS ?? 1_000_000)
const SEED = Number(process.env.FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31))
const which = process.env.FUZZ_TARGETS ?? 'all'
const targets = [
  ...(which === 'mesh' ? [] : await crdtTargets()),
  ...(which === 'crdt' ? [] : await meshTargets())
]
const each = Math.ceil(TOTAL / targets.length)
const out = (s: string): void => {
  process.stdout.write(s + '\n')
}

out(`fuzz: ${targets.length} targets × ${each.toLocaleString('en-US')} inputs, seed ${SEED}`)
out(`machine: ${cpus()[0]?.model ?? '?'} × ${cpus().length}, Node ${process.version}`)
let bad = 0
let inputs = 0
const t0 = performance.now()
for (const target of targets) {
  const r = await fuzz(target, { inputs: each, seed: SEED })
  inputs += r.inputs
  bad += r.crashes.length + r.hangs.length
  const rate = (r.inputs / (r.ms / 1000)).toFixed(0)
  out(
    `  ${r.name.padEnd(36)} ${r.inputs.toLocaleString('en-US')} inputs, ${rate}/s: ` +
      `${r.accepted} accepted, ${r.refused} refused, ${r.crashes.length} crashes, ` +
      `${r.hangs.length} hangs; slowest ${r.slowestMs.toFixed(1)} ms; heap ` +
      `${(r.heapGrowth / 1048576).toFixed(1)} MiB`
  )
  for (const c of [...r.crashes, ...r.hangs]) {
    out(`    ${c.error.split('\n')[0]}\n    input ${c.input}`)
  }
}
const rss = process.memoryUsage().rss / 1048576
out(
  `${inputs.toLocaleString('en-US')} inputs in ${((performance.now() - t0) / 1000).toFixed(0)} s, ` +
    `RSS ${rss.toFixed(0)} MiB at the end: ${bad === 0 ? 'no crash, no hang' : `FAILED (${bad})`}`
)
