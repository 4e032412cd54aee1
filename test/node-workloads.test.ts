/**
 * Workloads with real processes: a clean environment (nothing of the daemon's own, such as
 * RHIZOME_PASSPHRASE), the configured unprivileged user (root only by the daemon config's
 * word), a data directory they cannot read, orphans of a killed daemon stopped before anything
 * starts, and health probes that do not flood a workload's log. Where switching users needs
 * root, the test says so and is skipped when not run as root.
 */
import { describe, it, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, spawnSync } from 'node:child_process'
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { stringify } from 'yaml'
import { ProcessesApplier } from '../node/appliers/processes.ts'
import { isAlive } from '../node/child-processes.ts'
import {
  applyFleet,
  daemonConfig,
  freePort,
  initFleet,
  rhizome,
  startDaemon,
  stopAll
} from './fixtures/node-harness.ts'
import { waitFor } from './fixtures/wait.ts'

const ROOT_ONLY = process.getuid?.() === 0 ? undefined : 'switching users needs root'
const WORKLOAD_USER = 'rhizome-test-wl'
const DAEMON_USER = 'rhizome-test-daemon'
/** A workload user that is also a member of root's group. */
const WHEEL_USER = 'rhizome-test-wheel'
/** For Node children run as scripts: without the test runner's NODE_TEST_CONTEXT. */
const SCRIPT_ENV = { PATH: process.env.PATH ?? '/usr/bin:/bin' }

/** A system user for the test (created if missing, with extra `groups`; needs root). */
function ensureUser(name: string, groups: string[] = []): { uid: number; gid: number } {
  if (spawnSync('id', ['-u', name]).status !== 0) {
    const r = spawnSync(
      'useradd',
      [
        '--system',
        '--no-create-home',
        '--shell',
        '/bin/false',
        ...(groups.length > 0 ? ['--groups', groups.join(',')] : []),
        name
      ],
      {
        encoding: 'utf8'
      }
    )
    assert.equal(r.status, 0, `useradd ${name}: ${r.stderr}`)
  }
  const id = (flag: string): number =>
    Number(spawnSync('id', [flag, name], { encoding: 'utf8' }).stdout.trim())
  return { uid: id('-u'), gid: id('-g') }
}

/** uid and effective capabilities of a running process, from /proc. */
async function credentials(pid: number): Promise<{ uid: number; capEff: string }> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8')
  return {
    uid: Number(/^Uid:\s+(\d+)/m.exec(s)?.[1]),
    capEff: /^CapEff:\s+([0-9a-f]+)/m.exec(s)?.[1] ?? ''
  }
}

/** A directory anyone may enter and write (the workload users' scratch space). */
async function openDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  await chmod(dir, 0o777)
  return dir
}

/**
 * Run `fn` with a ProcessesApplier made with `options` and a scratch directory (openDir), while
 * this process, standing in for the daemon, holds `secret` as its RHIZOME_PASSPHRASE; then stop
 * the applier's workloads, unset the passphrase and remove the directory.
 */
async function withDaemonSecret(
  prefix: string,
  secret: string,
  options: ConstructorParameters<typeof ProcessesApplier>[0],
  fn: (procs: ProcessesApplier, dir: string) => Promise<void>
): Promise<void> {
  const dir = await openDir(prefix)
  process.env.RHIZOME_PASSPHRASE = secret
  const procs = new ProcessesApplier(options)
  try {
    await fn(procs, dir)
  } finally {
    delete process.env.RHIZOME_PASSPHRASE
    await procs.stopAll()
    await rm(dir, { recursive: true, force: true })
  }
}

/**
 * A ProcessesApplier in a process of its own running as DAEMON_USER with CAP_SETUID, CAP_SETGID
 * and CAP_KILL as ambient capabilities (as under deploy/rhizome.service), applying `workloads`
 * with workloadUser `user` (default WORKLOAD_USER). Undefined (the test skipped) if that user cannot read this
 * checkout. `stop` stops its workloads and waits for it to exit.
 */
async function capableDaemon(
  t: TestContext,
  dir: string,
  workloads: Record<string, unknown>,
  user = WORKLOAD_USER
): Promise<
  | {
      pid: number
      applied: { errors: string[]; pids: Record<string, number | undefined> }
      stop: () => Promise<void>
    }
  | undefined
> {
  const daemonUser = ensureUser(DAEMON_USER)
  ensureUser(WORKLOAD_USER)
  // The daemon user must be able to run this checkout's Node and code (not so in a private
  // CI directory).
  const check = spawnSync(
    'setpriv',
    [
      `--reuid=${daemonUser.uid}`,
      `--regid=${daemonUser.gid}`,
      '--clear-groups',
      process.execPath,
      '-e',
      `require('node:fs').accessSync(${JSON.stringify(fileURLToPath(import.meta.url))})`
    ],
    { env: SCRIPT_ENV }
  )
  if (check.status !== 0) {
    t.skip(`${DAEMON_USER} cannot read this checkout (${check.stderr.toString().trim()})`)
    return undefined
  }
  const script = join(dir, 'run.ts')
  await writeFile(
    script,
    `import { ProcessesApplier } from ${JSON.stringify(fileURLToPath(new URL('../node/appliers/processes.ts', import.meta.url)))}
const p = new ProcessesApplier({ user: ${JSON.stringify(user)} })
const r = await p.apply(${JSON.stringify(workloads)})
await new Promise(resolve => setTimeout(resolve, 300))
const pids = Object.fromEntries(Object.entries(p.status()).map(([n, s]) => [n, s.pid]))
process.stdout.write(JSON.stringify({ errors: r.errors, pids }) + '\\n')
await new Promise(resolve => process.stdin.once('data', resolve))
await p.stopAll()
`
  )
  const child = spawn(
    'setpriv',
    [
      `--reuid=${daemonUser.uid}`,
      `--regid=${daemonUser.gid}`,
      '--clear-groups',
      '--inh-caps=+setuid,+setgid,+kill',
      '--ambient-caps=+setuid,+setgid,+kill',
      process.execPath,
      script
    ],
    { stdio: ['pipe', 'pipe', 'inherit'], env: SCRIPT_ENV }
  )
  const exited = new Promise(resolve => child.once('exit', resolve))
  const line = await new Promise<string>(resolve =>
    child.stdout.setEncoding('utf8').once('data', (d: string) => resolve(d))
  )
  return {
    pid: child.pid as number,
    applied: JSON.parse(line) as { errors: string[]; pids: Record<string, number | undefined> },
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.stdin.end('stop\n')
      await exited
    }
  }
}

describe('workloads', { timeout: 120_000 }, () => {
  it('get a clean environment: their spec, PATH/HOME/USER, the RHIZOME_* identity, nothing of the daemon', async () => {
    const secret = 'daemon-passphrase-must-not-leak'
    const root = process.getuid?.() === 0
    const options = {
      env: { RHIZOME_NODE_NAME: 'n1' },
      user: root ? ensureUser(WORKLOAD_USER) && WORKLOAD_USER : userInfo().username
    }
    await withDaemonSecret('rhizome-env-', secret, options, async (procs, dir) => {
      const out = join(dir, 'env')
      const r = await procs.apply({
        w: { command: ['/bin/sh', '-c', `env > ${out}; exec sleep 60`], env: { FOO: 'bar' } }
      })
      assert.deepEqual(r.errors, [])
      const text = await waitFor('the workload to write its environment', async () =>
        ((await readFile(out, 'utf8').catch(() => '')) || undefined)?.includes('FOO=')
          ? await readFile(out, 'utf8')
          : undefined
      )
      const names = text
        .trim()
        .split('\n')
        .map(l => l.slice(0, l.indexOf('=')))
        // The shell adds these of its own.
        .filter(n => !['PWD', 'SHLVL', '_', 'OLDPWD'].includes(n))
      assert.deepEqual(names.sort(), [
        'FOO',
        'HOME',
        'LOGNAME',
        'PATH',
        'RHIZOME_NODE_NAME',
        'RHIZOME_WORKLOAD',
        'RHIZOME_WORKLOAD_VERSION',
        'USER'
      ])
      assert.doesNotMatch(text, new RegExp(secret))
    })
  })

  it(
    'run as the configured user, and as root only when the daemon config says workloadUser: root',
    {
      skip: ROOT_ONLY
    },
    async () => {
      const wl = ensureUser(WORKLOAD_USER)
      const procs = new ProcessesApplier({ user: WORKLOAD_USER })
      try {
        const r = await procs.apply({
          plain: { command: ['/bin/sleep', '60'] },
          byName: { command: ['/bin/sleep', '61'], user: 'nobody' },
          root: { command: ['/bin/sleep', '62'], user: 'root' },
          ghost: { command: ['/bin/sleep', '63'], user: 'no-such-user-here' }
        })
        assert.equal(r.errors.length, 2, r.errors.join('\n'))
        assert.match(
          r.errors.join('\n'),
          /"root": a workload may run as root only when the daemon config sets workloadUser: root/
        )
        assert.match(r.errors.join('\n'), /"ghost": the user "no-such-user-here" does not exist/)
        const status = procs.status()
        const pid = (n: string): number => status[n]?.pid as number
        assert.deepEqual(await credentials(pid('plain')), {
          uid: wl.uid,
          capEff: '0000000000000000'
        })
        assert.equal((await credentials(pid('byName'))).uid, 65534)
        assert.deepEqual(Object.keys(status).sort(), ['byName', 'plain'])
        // The device owner's word: workloadUser root.
        const asRoot = new ProcessesApplier({ user: 'root' })
        const r2 = await asRoot.apply({ root: { command: ['/bin/sleep', '64'], user: 'root' } })
        assert.deepEqual(r2.errors, [])
        assert.equal((await credentials(asRoot.status().root?.pid as number)).uid, 0)
        await asRoot.stopAll()
      } finally {
        await procs.stopAll()
      }
    }
  )

  it(
    'a health probe command runs as its workload does: its user, its clean environment, a group of its own killed after a timeout',
    {
      skip: ROOT_ONLY
    },
    async () => {
      const wl = ensureUser(WORKLOAD_USER)
      const secret = 'daemon-passphrase-must-not-reach-a-probe'
      const options = { user: WORKLOAD_USER }
      await withDaemonSecret('rhizome-probe-', secret, options, async (procs, dir) => {
        // Written by the probe, then moved into place, so the test never reads half a file.
        const report = [
          `grep -E '^(Uid|Gid):' /proc/$$/status > ${dir}/r`,
          `cut -d' ' -f5 /proc/$$/stat > ${dir}/pgid`,
          `echo $$ > ${dir}/pid`,
          `env > ${dir}/env`,
          `mv ${dir}/r ${dir}/ids`
        ].join('; ')
        // A probe that hangs and leaves a background process: both must be gone after the timeout.
        const hang = `sleep 300 & echo $! > ${dir}/bg; exec sleep 300`
        const r = await procs.apply({
          w: { command: ['/bin/sleep', '60'], health: { command: ['/bin/sh', '-c', report] } },
          hang: { command: ['/bin/sleep', '61'], health: { command: ['/bin/sh', '-c', hang] } }
        })
        assert.deepEqual(r.errors, [])
        const ids = await waitFor(
          'the probe to report',
          async () => (await readFile(join(dir, 'ids'), 'utf8').catch(() => '')) || undefined
        )
        assert.match(ids, new RegExp(`^Uid:\\s+${wl.uid}\\s+${wl.uid}\\s`, 'm'))
        assert.match(ids, new RegExp(`^Gid:\\s+${wl.gid}\\s+${wl.gid}\\s`, 'm'))
        const env = await readFile(join(dir, 'env'), 'utf8')
        assert.doesNotMatch(env, new RegExp(secret))
        assert.match(env, /^RHIZOME_WORKLOAD=w$/m)
        assert.equal(
          (await readFile(join(dir, 'pgid'), 'utf8')).trim(),
          (await readFile(join(dir, 'pid'), 'utf8')).trim(),
          'the probe leads a process group of its own'
        )
        const bg = Number(
          await waitFor(
            'the hanging probe to start',
            async () =>
              (await readFile(join(dir, 'bg'), 'utf8').catch(() => '')).trim() || undefined
          )
        )
        assert.equal((await credentials(bg)).uid, wl.uid)
        await waitFor('the hanging probe’s group to be killed', () => !isAlive(bg), 10_000)
        assert.equal(procs.status().hang?.healthy, false)
      })
    }
  )

  it(
    'started by a daemon that runs as its own user with CAP_SETUID, hold no capabilities',
    {
      skip: ROOT_ONLY
    },
    async t => {
      const wl = ensureUser(WORKLOAD_USER)
      const dir = await openDir('rhizome-setpriv-')
      const report = `grep -E '^(Uid|CapEff|CapAmb)' /proc/$$/status > ${dir}/probe.tmp && mv ${dir}/probe.tmp ${dir}/probe`
      const daemon = await capableDaemon(t, dir, {
        w: { command: ['/bin/sleep', '60'], health: { command: ['/bin/sh', '-c', report] } }
      })
      if (daemon === undefined) return
      try {
        const { errors, pids } = daemon.applied
        assert.deepEqual(errors, [])
        assert.notEqual((await credentials(daemon.pid)).capEff, '0000000000000000')
        const pid = pids.w as number
        assert.deepEqual(await credentials(pid), { uid: wl.uid, capEff: '0000000000000000' })
        // Its health probe too: the workload's user, no capabilities (not the daemon's ambient ones).
        const probed = await waitFor(
          'the health probe to run',
          async () => (await readFile(join(dir, 'probe'), 'utf8').catch(() => '')) || undefined
        )
        assert.match(probed, new RegExp(`^Uid:\\s+${wl.uid}\\s`, 'm'))
        assert.match(probed, /^CapEff:\s+0+$/m)
        assert.match(probed, /^CapAmb:\s+0+$/m)
        await daemon.stop()
        assert.equal(isAlive(pid), false, 'the daemon stopped the workload of another user')
      } finally {
        await daemon.stop()
        await rm(dir, { recursive: true, force: true })
      }
    }
  )

  it(
    'never run as an account in group 0, whether named as uid:gid or by supplementary group',
    { skip: ROOT_ONLY },
    async () => {
      ensureUser(WORKLOAD_USER)
      ensureUser(WHEEL_USER, ['root'])
      const procs = new ProcessesApplier({ user: WORKLOAD_USER })
      try {
        const r = await procs.apply({
          gid0: { command: ['/bin/sleep', '60'], user: '65534:0' },
          wheel: { command: ['/bin/sleep', '61'], user: WHEEL_USER },
          fine: { command: ['/bin/sleep', '62'], user: 'nobody' }
        })
        assert.equal(r.errors.length, 2, r.errors.join('\n'))
        assert.match(r.errors.join('\n'), /"gid0": "nobody" \(uid 65534, gid 0\) is in group 0/)
        assert.match(
          r.errors.join('\n'),
          new RegExp(`"wheel": "${WHEEL_USER}" \\(uid \\d+, gid \\d+\\) is in group 0`)
        )
        // The rest of the config applies.
        assert.deepEqual(Object.keys(procs.status()), ['fine'])
        assert.equal((await credentials(procs.status().fine?.pid as number)).uid, 65534)
      } finally {
        await procs.stopAll()
      }
    }
  )

  it(
    'never run as the daemon’s own account or group unless the daemon config names that account',
    { skip: ROOT_ONLY },
    async t => {
      const wl = ensureUser(WORKLOAD_USER)
      const daemonUser = ensureUser(DAEMON_USER)
      const dir = await openDir('rhizome-self-')
      const daemon = await capableDaemon(t, dir, {
        self: { command: ['/bin/sleep', '60'], user: DAEMON_USER },
        selfGroup: { command: ['/bin/sleep', '61'], user: `${wl.uid}:${daemonUser.gid}` },
        selfUid: { command: ['/bin/sleep', '62'], user: String(daemonUser.uid) },
        fine: { command: ['/bin/sleep', '63'] }
      })
      if (daemon === undefined) return
      try {
        const { errors, pids } = daemon.applied
        assert.equal(errors.length, 3, errors.join('\n'))
        assert.match(
          errors.join('\n'),
          /"self": "rhizome-test-daemon" \(uid \d+, gid \d+\) is the daemon's own account/
        )
        assert.match(
          errors.join('\n'),
          /"selfUid": "rhizome-test-daemon" \(uid \d+, gid \d+\) is the daemon's own account/
        )
        assert.match(
          errors.join('\n'),
          new RegExp(
            `"selfGroup": "${WORKLOAD_USER}" \\(uid ${wl.uid}, gid ${daemonUser.gid}\\) is in the daemon's group \\(gid ${daemonUser.gid}\\)`
          )
        )
        assert.deepEqual(Object.keys(pids), ['fine'])
        assert.deepEqual(await credentials(pids.fine as number), {
          uid: wl.uid,
          capEff: '0000000000000000'
        })
      } finally {
        await daemon.stop()
      }
      // The device owner's word: workloadUser names the daemon's own account. Still without the
      // daemon's capabilities.
      const owned = await capableDaemon(
        t,
        dir,
        { self: { command: ['/bin/sleep', '64'] } },
        DAEMON_USER
      )
      try {
        assert.deepEqual(owned?.applied.errors, [])
        assert.deepEqual(await credentials(owned?.applied.pids.self as number), {
          uid: daemonUser.uid,
          capEff: '0000000000000000'
        })
      } finally {
        await owned?.stop()
        await rm(dir, { recursive: true, force: true })
      }
    }
  )

  it('orphans of a killed daemon are stopped before anything starts, whoever asks first', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'rhizome-orphans-'))
    const port = await freePort()
    const server = `require('node:http').createServer((q, s) => s.end('ok')).listen(${port}, '127.0.0.1')`
    // What a killed daemon leaves: a workload holding its port, and the pid file naming it.
    const orphan = spawn(process.execPath, ['-e', server], { detached: true, stdio: 'ignore' })
    await waitFor('the orphan to listen', () => fetch(`http://127.0.0.1:${port}/`).then(r => r.ok))
    const stat = await readFile(`/proc/${orphan.pid}/stat`, 'utf8')
    const start = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19])
    const pidFile = join(dir, 'workloads.pids')
    await writeFile(pidFile, JSON.stringify([{ pid: orphan.pid, start, cmd: process.execPath }]))
    const procs = new ProcessesApplier({
      pidFile,
      user: process.getuid?.() === 0 ? 'root' : userInfo().username
    })
    try {
      // A revision arriving at once: apply is the first call, before any explicit reapOrphans.
      const r = await procs.apply({
        web: {
          command: [process.execPath, '-e', server],
          health: { http: `http://127.0.0.1:${port}/`, intervalMs: 200 }
        }
      })
      assert.deepEqual(r.errors, [])
      assert.equal(isAlive(orphan.pid as number), false, 'the orphan was stopped first')
      await waitFor('the new workload to be healthy', () => procs.status().web?.healthy === true)
      assert.equal(procs.status().web?.restarts, 0, procs.logs('web')?.join('\n'))
    } finally {
      if (isAlive(orphan.pid as number)) process.kill(orphan.pid as number, 'SIGKILL')
      await procs.stopAll()
      await rm(dir, { recursive: true, force: true })
    }
  })

  it('a process that has exited but is not yet reaped (a zombie) counts as stopped', async t => {
    if (process.platform !== 'linux') return t.skip('zombies are read from /proc')
    // The shell's background child exits at once; the exec'd sleep, its parent now, never reaps it.
    const parent = spawn('sh', ['-c', 'sleep 0 & echo $!; exec sleep 30'], {
      stdio: ['ignore', 'pipe', 'ignore']
    })
    try {
      const zombie = Number(
        await new Promise<string>(resolve => parent.stdout.once('data', b => resolve(String(b))))
      )
      await waitFor('the child to exit unreaped', async () =>
        (await readFile(`/proc/${zombie}/stat`, 'utf8')).includes(') Z ')
      )
      assert.doesNotThrow(() => process.kill(zombie, 0), 'signal 0 still answers for a zombie')
      assert.equal(isAlive(zombie), false)
      assert.equal(isAlive(parent.pid as number), true)
    } finally {
      parent.kill('SIGKILL')
    }
  })

  it('health probes of a workload that never comes up slow down, and their log lines fold', async () => {
    const port = await freePort()
    const seen: number[] = []
    const t0 = Date.now()
    const procs = new ProcessesApplier({
      user: process.getuid?.() === 0 ? 'root' : userInfo().username,
      logLines: 20
    })
    // The workload answers 500 and writes an access-log line (with a time) for every request.
    const js = `console.log('ready'); require('node:http').createServer((q, s) => { console.log(new Date().toISOString() + ' GET ' + q.url + ' 500 ' + q.headers['user-agent']); s.statusCode = 500; s.end() }).listen(${port}, '127.0.0.1')`
    try {
      await procs.apply({
        sick: {
          command: [process.execPath, '-e', js],
          health: { http: `http://127.0.0.1:${port}/healthz`, intervalMs: 1000 }
        }
      })
      const deadline = 8000
      await waitFor(
        'eight seconds of probes',
        () => {
          const lines = procs.logs('sick') ?? []
          const folded = lines.find(l => l.includes('GET /healthz'))
          const m = folded === undefined ? null : /\(×(\d+)\)$/.exec(folded)
          if (m !== null) seen.push(Number(m[1]))
          return Date.now() - t0 > deadline
        },
        deadline + 5000,
        100
      )
      const lines = procs.logs('sick') ?? []
      assert.ok(lines.includes('ready'), lines.join('\n'))
      assert.equal(lines.filter(l => l.includes('GET /healthz')).length, 1, lines.join('\n'))
      assert.match(lines.join('\n'), /rhizome-health-probe/)
      // 250 ms apart for the first 5 s (~20), then one a second: well under the 32 that
      // probing every 250 ms for 8 s would make.
      const probes = Math.max(...seen)
      assert.ok(probes >= 15 && probes <= 27, `probes seen: ${probes}`)
    } finally {
      await procs.stopAll()
    }
  })
})

describe('the data directory and a daemon killed under its workloads', { timeout: 120_000 }, () => {
  it(
    'workloads cannot read the device key or the store; a restarted daemon stops the orphan and starts it again',
    {
      skip: ROOT_ONLY
    },
    async () => {
      ensureUser(WORKLOAD_USER)
      const parent = await mkdtemp(join(tmpdir(), 'rhizome-datadir-'))
      // A data directory a careless admin made with 0755, in a directory anyone may enter.
      await chmod(parent, 0o755)
      const shared = await openDir('rhizome-datadir-out-')
      try {
        const env = { RHIZOME_PASSPHRASE: 'data dir test passphrase' }
        await initFleet(parent, 'datadir', ['n1'], env)
        const data = join(parent, 'data-n1')
        await chmod(data, 0o755)
        await mkdir(join(data, 'store'), { recursive: true })
        const probeScript = [
          `cat ${join(data, 'identity.key')} > ${shared}/key 2>&1`,
          `ls ${join(data, 'store')} > ${shared}/store 2>&1`,
          `echo $$ > ${shared}/pid`,
          'exec sleep 600'
        ].join('; ')
        await writeFile(
          join(parent, 'n1.yaml'),
          stringify(
            daemonConfig(parent, 'n1', {
              workloadUser: WORKLOAD_USER,
              listen: ['/ip4/127.0.0.1/tcp/0']
            })
          )
        )
        let d = await startDaemon(join(parent, 'n1.yaml'))
        // Workloads that run from artifacts, a file and an unpacked tar, reach them as that user.
        const src = join(parent, 'app')
        await mkdir(src)
        await writeFile(join(src, 'run.sh'), `#!/bin/sh\nid -un > ${shared}/app\nexec sleep 600\n`)
        await chmod(src, 0o755)
        await chmod(join(src, 'run.sh'), 0o755)
        assert.equal(
          spawnSync('tar', ['-cf', join(parent, 'app.tar'), '-C', src, 'run.sh']).status,
          0
        )
        await writeFile(join(parent, 'model.bin'), 'model bytes\n')
        const digestOf = async (file: string): Promise<string> => {
          const r = await rhizome(['artifact', 'add', file, '--daemon', d.url], env)
          assert.equal(r.code, 0, r.stderr)
          return r.stdout.split('\n')[0]!.trim()
        }
        const tarDigest = await digestOf(join(parent, 'app.tar'))
        const fileDigest = await digestOf(join(parent, 'model.bin'))
        const apply = await applyFleet(
          parent,
          {
            fleet: {
              defaults: {
                workloads: {
                  probe: { command: ['/bin/sh', '-c', probeScript] },
                  app: { artifact: tarDigest, unpack: 'tar', command: ['./run.sh'] },
                  model: {
                    artifact: fileDigest,
                    command: [
                      '/bin/sh',
                      '-c',
                      `cat "$RHIZOME_ARTIFACT" > ${shared}/model 2>&1; exec sleep 600`
                    ]
                  }
                }
              }
            }
          },
          d.url,
          env
        )
        assert.equal(apply.code, 0, apply.stderr)
        const first = Number(
          await waitFor(
            'the workload to start',
            async () =>
              (await readFile(join(shared, 'pid'), 'utf8').catch(() => '')).trim() || undefined
          )
        )
        assert.match(await readFile(join(shared, 'key'), 'utf8'), /Permission denied/)
        assert.match(await readFile(join(shared, 'store'), 'utf8'), /Permission denied/)
        assert.equal(
          await waitFor('the tar artifact workload to start', async () =>
            (await readFile(join(shared, 'app'), 'utf8').catch(() => '')).trim()
          ),
          WORKLOAD_USER
        )
        assert.equal(
          await waitFor('the file artifact workload to read it', async () =>
            (await readFile(join(shared, 'model'), 'utf8').catch(() => '')).trim()
          ),
          'model bytes'
        )
        // The daemon dies without stopping anything; its workload runs on, orphaned.
        d.proc.kill('SIGKILL')
        await d.stop()
        assert.equal(isAlive(first), true, 'the orphan outlived its daemon')
        await rm(join(shared, 'pid'))
        d = await startDaemon(join(parent, 'n1.yaml'))
        const second = Number(
          await waitFor(
            'the workload to start again',
            async () =>
              (await readFile(join(shared, 'pid'), 'utf8').catch(() => '')).trim() || undefined
          )
        )
        assert.notEqual(second, first)
        assert.equal(isAlive(first), false, 'the orphan was stopped')
        const orphaned = d.events.find(e => e.event === 'workloads.orphans-stopped')
        const pids = (orphaned?.pids ?? []) as number[]
        assert.equal(pids.length, 3, 'the three workloads were orphaned and stopped')
        assert.ok(pids.includes(first))
        await d.stop()
        assert.equal(isAlive(second), false)
      } finally {
        await stopAll()
        await rm(parent, { recursive: true, force: true })
        await rm(shared, { recursive: true, force: true })
      }
    }
  )
})
