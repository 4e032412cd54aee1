/**
 * `npm run bench`: runs each benchmark file (bench/*.bench.ts, or those named on the command
 * line) in its own child process, one after another, so one's memory and JIT state cannot
 * colour the next one's figures. Benchmarks print figures; they assert nothing.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readdir } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const named = process.argv.slice(2)
const files =
  named.length > 0
    ? named.map(f => resolve(f))
    : (await readdir(here))
        .filter(f => f.endsWith('.bench.ts'))
        .sort()
        .map(f => join(here, f))

let failed = 0
for (const file of files) {
  process.stdout.write(`\n=== ${file.slice(here.length + 1) || file} ===\n`)
  const started = performance.now()
  const child = spawn(process.execPath, [file], { stdio: 'inherit' })
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null]
  const seconds = ((performance.now() - started) / 1000).toFixed(1)
  if (code !== 0) {
    failed++
    process.stdout.write(
      `--- ${file}: FAILED (${signal ?? `exit code ${code}`}) after ${seconds} s\n`
    )
  } else {
    process.stdout.write(`--- done in ${seconds} s\n`)
  }
}
if (failed > 0) process.exitCode = 1
