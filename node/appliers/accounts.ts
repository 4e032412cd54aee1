/**
 * Who a workload runs as. A workload names a user (`user:` in its spec), else the daemon's
 * `workloadUser` applies: by default the dedicated `rhizome-workload` account when the daemon
 * can switch users (as root, or with CAP_SETUID and CAP_SETGID), the daemon's own user when it
 * cannot. A signed fleet config alone can never give a workload the daemon's privileges: an
 * account that is root, is in group 0, is the daemon's own (it owns the data directory with the
 * device key) or shares the daemon's group (primary or supplementary) is refused, unless the
 * daemon's own config says so: `workloadUser: root` allows every account, `workloadUser` naming
 * the daemon's own account allows that account and its group (the only way a daemon that
 * cannot switch users runs workloads at all).
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
/** Supplementary groups looked at per account (setpriv --init-groups gives it these). */
const MAX_GROUPS = 1024
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
  /** Supplementary groups (/etc/group), which `setpriv --init-groups` gives it. */
  groups: number[]
}

/** The ids of the groups in `group` (an /etc/group file) that list `name` as a member. */
function supplementaryGroups(name: string, group: string): number[] {
  let text = ''
  try {
    text = readFileSync(group, 'utf8').slice(0, MAX_PASSWD_BYTES)
  } catch {
    return []
  }
  const out: number[] = []
  for (const line of text.split('\n')) {
    const [, , gid, members] = line.split(':')
    if (gid === undefined || members === undefined || !/^\d+$/.test(gid)) continue
    if (members.split(',').includes(name)) out.push(Number(gid))
    if (out.length >= MAX_GROUPS) break
  }
  return out
}

/** Look an account up by name, or take a numeric `uid[:gid]`. */
export function lookupAccount(user: string, passwd = '/etc/passwd', group = '/etc/group'): Account {
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
        home,
        groups: supplementaryGroups(name, group)
      }
    }
  }
  if (numeric !== null) {
    const uid = Number(numeric[1])
    return { name: String(uid), uid, gid: Number(numeric[2] ?? uid), home: '/', groups: [] }
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
 * What the daemon config allows of workload accounts: the device owner's word, which no signed
 * fleet config can change.
 */
export interface AccountPolicy {
  /** `workloadUser: root`: any account, root and group 0 included. */
  root: boolean
  /** `workloadUser` names the daemon's own account: that account and the daemon's group too. */
  self: boolean
}

/** The policy the daemon config's `workloadUser` sets (see AccountPolicy). */
export function accountPolicy(workloadUser: string | undefined): AccountPolicy {
  if (workloadUser === undefined) return { root: false, self: false }
  let uid: number | undefined
  try {
    uid = lookupAccount(workloadUser).uid
  } catch {
    uid = undefined
  }
  return { root: uid === 0, self: uid !== undefined && uid === process.getuid?.() }
}

/** Why `account` may not run a workload under `policy` (see the header), or undefined. */
function refusal(account: Account, policy: AccountPolicy): string | undefined {
  if (policy.root) return undefined
  if (account.uid === 0) {
    return 'a workload may run as root only when the daemon config sets workloadUser: root'
  }
  const who = `"${account.name}" (uid ${account.uid}, gid ${account.gid})`
  const groups = [account.gid, ...account.groups]
  if (groups.includes(0)) {
    return `${who} is in group 0 (root's); a workload may run in it only when the daemon config sets workloadUser: root`
  }
  if (policy.self) return undefined
  const uid = process.getuid?.()
  const gid = process.getgid?.()
  const accept = `it could read the daemon's data directory (the device key); name an unprivileged account, or set workloadUser to the daemon's own account in the daemon config to accept that`
  if (account.uid === uid) return `${who} is the daemon's own account: ${accept}`
  if (gid !== undefined && groups.includes(gid)) {
    return `${who} is in the daemon's group (gid ${gid}): ${accept}`
  }
  return undefined
}

/**
 * How to start `argv` as `account` from this daemon (see the header), or a WorkloadUserError
 * saying why it cannot be done or is not allowed under `policy`.
 */
export function launchAs(
  argv: [string, ...string[]],
  account: Account,
  method: SwitchMethod,
  policy: AccountPolicy
): Launch {
  const [command, ...args] = argv
  const refused = refusal(account, policy)
  if (refused !== undefined) throw new WorkloadUserError(refused)
  const self = process.getuid?.()
  if (method === 'root') {
    return account.uid === self && account.gid === process.getgid?.()
      ? { command, args }
      : { command, args, uid: account.uid, gid: account.gid }
  }
  if (method === 'setpriv') {
    // Through setpriv also as the daemon's own account: only setpriv drops the capabilities
    // the daemon holds as an ordinary user (inherited and ambient sets).
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
  if (account.uid === self && account.gid === process.getgid?.()) return { command, args }
  throw new WorkloadUserError(
    `the daemon runs as uid ${self} without CAP_SETUID and CAP_SETGID, so it cannot start a workload as ${account.name}; run the daemon as root, or grant it those capabilities (deploy/rhizome.service does)`
  )
}
