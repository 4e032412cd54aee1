/**
 * Process helpers shared by the workloads applier, the demo fleet and the test harness, which
 * all stop what they started by its pid.
 */
import type { ChildProcess } from 'node:child_process'

/** Whether `pid` is a process this one may signal (signal 0 only checks). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
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
