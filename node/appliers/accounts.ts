/**
 * Who a workload runs as. A workload names a user (`user:` in its spec), else the daemon's
 * `workloadUser` applies: by default the dedicated `rhizome-workload` account when the daemon
 * can switch users (as root, or with CAP_SETUID and CAP_SETGID), the daemon's own user when it
 * cannot. Root (uid 0) is allowed only when the daemon's own config names it as `workloadUser`;
 * a signed fleet config alone can never make a workload root.
 *
 * How the switch happens depends on the daemon's privileges:
 *  - as root, the child calls setgid/setuid before exec (Node's `uid`/`gid` spawn options): the
 *    kernel drops every capability when a process's uids all leave 0;
 *  - as an ordinary user holding CAP_SETUID and CAP_SETGID (the systemd unit grants them as
 *    ambient capabilities), through `setpriv`, which also clears the inheritable and ambient
 *    sets: between two non-zero uids the kernel keeps capabilities, and Node cannot drop them;
 *  - without them, only as the daemon's own user.
 * Accounts are read from /etc/passwd (bounded), or given as a numeric `uid[:gid]`.
 */
import { existsSync, readFileSync } from 'node:fs'
import { userInfo } from 'node:os'
import { ErrorCategory, RhizomeError } from '../../crdt/errors.ts'

export const DEFAULT_WORKLOAD_USER = 'rhizome-workload'
const MAX_PASSWD_BYTES = 4 * 1024 * 1024
const CAP_SETGID = 6
const CAP_SETUID = 7
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv']

/** A workload's user cannot be used: unknown, root without the daemon's consent, or out of reach. */
export class WorkloadUserError extends RhizomeError {
  static override name = 'WorkloadUserError'
  override name = 'WorkloadUserError'
  readonly category = ErrorCategory.Usage
}

export interface Account {
  name: string
  uid: number
  gid: number
  home: string
}

/** Look an account up by name, or take a numeric `uid[:gid]`. */
export function lookupAccount(user: string, passwd = '/etc/passwd'): Account {
  const numeric = /^(\d+)(?::(\d+))?$/.exec(user)
  let text = ''
  try {
    text = readFileSync(passwd, 'utf8').slice(0, MAX_PASSWD_BYTES)
  } catch {}
  for (const line of text.split('\n')) {
    const f = line.split(':')
    if (f.length < 7) continue
    const [name, , uid, gid, , home] = f as [string, string, string, string, string, string]
    if (name === user || (numeric !== null && uid === numeric[1])) {
      return {
        name,
        uid: Number(uid),
        gid: numeric?.[2] !== undefined ? Number(numeric[2]) : Number(gid),
        home
      }
    }
  }
  if (numeric !== null) {
    const uid = Number(numeric[1])
    return { name: String(uid), uid, gid: Number(numeric[2] ?? uid), home: '/' }
  }
  throw new WorkloadUserError(
    user === DEFAULT_WORKLOAD_USER
      ? `the user ${user} does not exist: create it (useradd --system --no-create-home ${user}, or systemd-sysusers with deploy/rhizome.sysusers), or set workloadUser in the daemon config`
      : `the user "${user}" does not exist on this device`
  )
}

/** How this daemon can start a process as another user. */
export type SwitchMethod = 'root' | 'setpriv' | 'none'

export function switchMethod(): SwitchMethod {
  if (process.getuid?.() === 0) return 'root'
  let status = ''
  try {
    status = readFileSync('/proc/self/status', 'utf8')
  } catch {
    return 'none'
  }
  const eff = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)/m.exec(status)?.[1] ?? '0'}`)
  const has = (cap: number): boolean => ((eff >> BigInt(cap)) & 1n) === 1n
  if (!has(CAP_SETUID) || !has(CAP_SETGID)) return 'none'
  return SETPRIV.some(p => existsSync(p)) ? 'setpriv' : 'none'
}

/** The account workloads run as by default: `configured`, else as described in the header. */
export function defaultWorkloadUser(configured: string | undefined, method: SwitchMethod): string {
  if (configured !== undefined) return configured
  return method === 'none' ? userInfo().username : DEFAULT_WORKLOAD_USER
}

export interface Launch {
  command: string
  args: string[]
  uid?: number
  gid?: number
}

/**
 * How to start `argv` as `account` from this daemon (see the header), or a WorkloadUserError
 * saying why it cannot be done. `rootAllowed`: the daemon's config names root as workloadUser.
 */
export function launchAs(
  argv: [string, ...string[]],
  account: Account,
  method: SwitchMethod,
  rootAllowed: boolean
): Launch {
  const [command, ...args] = argv
  if (account.uid === 0 && !rootAllowed) {
    throw new WorkloadUserError(
      'a workload may run as root only when the daemon config sets workloadUser: root'
    )
  }
  const self = process.getuid?.()
  if (account.uid === self && account.gid === process.getgid?.()) return { command, args }
  if (method === 'root') return { command, args, uid: account.uid, gid: account.gid }
  if (method === 'setpriv') {
    const setpriv = SETPRIV.find(p => existsSync(p)) as string
    return {
      command: setpriv,
      args: [
        `--reuid=${account.uid}`,
        `--regid=${account.gid}`,
        account.name === String(account.uid) ? '--clear-groups' : '--init-groups',
        '--inh-caps=-all',
        '--ambient-caps=-all',
        '--',
        command,
        ...args
      ]
    }
  }
  throw new WorkloadUserError(
    `the daemon runs as uid ${self} without CAP_SETUID and CAP_SETGID, so it cannot start a workload as ${account.name}; run the daemon as root, or grant it those capabilities (deploy/rhizome.service does)`
  )
}
