/**
 * Process helpers shared by the workloads applier, the demo fleet and the test harness, which
 * all stop what they started by its pid.
 */
import type { ChildProcess, ChildProcessByStdio } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import type { Readable } from 'node:stream'

/**
 * Whether `pid` is a running process this one may signal (signal 0 only checks). A zombie (exited,
 * not yet reaped by its parent: an orphan's is init, which may take a moment) answers signal 0 but
 * runs nothing and holds no port, so on Linux it counts as gone.
 */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat[stat.lastIndexOf(')') + 2] !== 'Z'
  } catch {
    // No /proc (not Linux), or it went between the two reads.
    return !existsSync('/proc/self/stat')
  }
}

/**
 * SIGTERM every child still running, SIGKILL one still running `killAfterMs` later; resolves
 * when all have exited.
 */
export async function stopChildren(
  children: Iterable<ChildProcess>,
  killAfterMs = 10_000
): Promise<void> {
  await Promise.all(
    [...children].map(
      p =>
        new Promise<void>(resolve => {
          if (p.exitCode !== null || p.signalCode !== null) {
            resolve()
            return
          }
          p.once('exit', () => resolve())
          p.kill('SIGTERM')
          setTimeout(() => p.kill('SIGKILL'), killAfterMs).unref()
        })
    )
  )
}

/** What a child spawned with piped stdout and stderr printed (as UTF-8), once it has exited. */
export function outputOf(
  p: ChildProcessByStdio<null, Readable, Readable>
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise(resolve => {
    let stdout = ''
    let stderr = ''
    p.stdout.setEncoding('utf8').on('data', (d: string) => {
      stdout += d
    })
    p.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d
    })
    p.once('exit', code => resolve({ code, stdout, stderr }))
  })
}
