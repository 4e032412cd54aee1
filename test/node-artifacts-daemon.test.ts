/**
 * Artifacts in one daemon, as a user drives it: `rhizome artifact add` of a tar and a plain file,
 * a fleet file whose workload runs from the unpacked tar and whose files are the artifacts, one
 * artifact nobody holds (reported as waiting while the rest applies), then a new version of the
 * tar: the workload switches to it, the previous one stays on disk for rollback.
 */
import { after, before, describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { mkdir, mkdtemp, readdir, readFile, readlink, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { create } from 'tar'
import { DaemonFleet, type RunningDaemon } from './fixtures/daemon-fleet.ts'
import { getJson, rhizome, stopAll } from './fixtures/node-harness.ts'
import { waitFor } from './fixtures/wait.ts'

const PASS = 'correct horse battery'
const APP = `
import { readFileSync, writeFileSync } from 'node:fs'
writeFileSync(process.env.OUT, readFileSync('version.txt', 'utf8') + ' ' + process.env.RHIZOME_ARTIFACT_DIR)
setInterval(() => {}, 1000)
`

/** A tar artifact holding run.mjs and version.txt. */
async function appTar(dir: string, version: string): Promise<string> {
  const src = join(dir, `app-${version}`)
  await mkdir(src, { recursive: true })
  await writeFile(join(src, 'run.mjs'), APP)
  await writeFile(join(src, 'version.txt'), version)
  const file = join(dir, `app-${version}.tar`)
  await create({ file, cwd: src, portable: true }, ['run.mjs', 'version.txt'])
  return file
}

describe('artifacts in one daemon', { timeout: 120_000 }, () => {
  let dir: string
  let env: Record<string, string>
  let f: DaemonFleet
  let d: RunningDaemon

  const add = async (file: string, name: string): Promise<string> => {
    const r = await rhizome(['artifact', 'add', file, '--name', name, '--daemon', d.url], env)
    assert.equal(r.code, 0, r.stderr)
    return /^(sha256:[0-9a-f]{64})$/m.exec(r.stdout)![1]!
  }
  const apply = async (fleet: unknown): Promise<void> => {
    const r = await f.apply(fleet, d)
    assert.equal(r.code, 0, r.stderr)
  }
  const root = (p: string): string => join(dir, 'root-n1', p)

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rhizome-art-daemon-'))
    env = { RHIZOME_PASSPHRASE: PASS }
    f = await DaemonFleet.init(dir, 'art', ['n1'], env)
    await f.writeConfig('n1', { listen: ['/ip4/127.0.0.1/tcp/0'], allowedRoots: ['/opt/rhizome'] })
    d = await f.start('n1')
  })
  after(async () => {
    await stopAll()
  })

  it('runs a workload from an unpacked artifact, places artifact files, and waits for one nobody holds', async () => {
    const v1 = await add(await appTar(dir, 'v1'), 'app')
    const modelBytes = Buffer.alloc(3 * 1024 * 1024 + 17, 7)
    await writeFile(join(dir, 'model.bin'), modelBytes)
    const model = await add(join(dir, 'model.bin'), 'model')
    const absent = `sha256:${'ab'.repeat(32)}`
    const out = join(dir, 'out.txt')
    /** The fleet: the tar artifact `app` unpacked and run as a workload, the model, `files`. */
    const fleetWith = (app: string, files: Record<string, unknown>) => ({
      fleet: {
        defaults: {
          files: {
            '/opt/rhizome/model.bin': { artifact: model, mode: '0640' },
            '/opt/rhizome/app': { artifact: app, unpack: 'tar' },
            ...files,
            '/opt/rhizome/plain.txt': { content: 'still applied\n' }
          },
          workloads: {
            app: {
              artifact: app,
              unpack: 'tar',
              command: [process.execPath, './run.mjs'],
              env: { OUT: out }
            }
          }
        }
      }
    })
    await apply(fleetWith(v1, { '/opt/rhizome/later.bin': { artifact: absent } }))
    const ran = await waitFor('the workload to run from its artifact', async () => {
      const t = await readFile(out, 'utf8').catch(() => '')
      return t.startsWith('v1 ') ? t : undefined
    })
    const unpacked = ran.slice(3)
    assert.equal(await readlink(root('/opt/rhizome/app')), unpacked)
    assert.deepEqual(await readFile(root('/opt/rhizome/model.bin')), modelBytes)
    assert.equal(await readFile(root('/opt/rhizome/plain.txt'), 'utf8'), 'still applied\n')
    const status = await waitFor('the status record to report the artifacts', async () => {
      const s = await getJson<{
        nodes: Array<{
          status: {
            artifacts?: Record<string, { state: string; reason?: string }>
            errors?: string[]
          }
        }>
      }>(`${d.url}/api/status`)
      const a = s.nodes[0]?.status?.artifacts
      return /no reachable peer/.test(a?.[absent]?.reason ?? '') && a?.[v1]?.state === 'complete'
        ? s.nodes[0]!.status
        : undefined
    })
    assert.equal(status.artifacts![absent]!.state, 'waiting')
    assert.match(status.artifacts![absent]!.reason ?? '', /no reachable peer/)
    assert.deepEqual(status.errors ?? [], [], 'waiting is not an error')
    const list = await rhizome(['artifact', 'list', '--daemon', d.url], env)
    assert.match(list.stdout, /app .* complete/)
    assert.match(list.stdout, /waiting 0%/)

    // A new version: the workload switches, the link is swapped, the old tree is kept. And an
    // artifact file below a directory someone replaced with a link out of the allowed root is
    // refused, not written through it.
    const v2 = await add(await appTar(dir, 'v2'), 'app')
    const outside = join(dir, 'outside')
    await mkdir(outside)
    await symlink(outside, root('/opt/rhizome/evil'))
    await apply(fleetWith(v2, { '/opt/rhizome/evil/model.bin': { artifact: model } }))
    await waitFor('the workload to run v2', async () =>
      (await readFile(out, 'utf8').catch(() => '')).startsWith('v2 ')
    )
    assert.notEqual(await readlink(root('/opt/rhizome/app')), unpacked)
    const refused = await waitFor('the link to be refused', async () => {
      const s = await getJson<{ nodes: Array<{ status: { errors?: string[] } }> }>(
        `${d.url}/api/status`
      )
      return s.nodes[0]?.status?.errors?.find(e => e.includes('/opt/rhizome/evil/model.bin'))
    })
    assert.match(refused, /symbolic link/)
    assert.deepEqual(await readdir(outside), [], 'nothing was written through the link')
    assert.equal(
      await readFile(join(unpacked, 'version.txt'), 'utf8'),
      'v1',
      'the previous artifact is kept'
    )
    const metrics = await (await fetch(`${d.url}/metrics`)).text()
    assert.match(metrics, /rhizome_artifacts\{state="complete"\} 2/)
  })
})
