/**
 * `rhizome bundle export | import`: a fleet's trust chain and signed changes in one file, for a
 * site with no network (the format is node/bundle.ts). Import reads the file twice: first it
 * checks the whole bundle (structure, bounds, checksum) and that it belongs to the fleet it is
 * imported into, and only then applies it, batch by batch, each verified like a peer's.
 */
import { createReadStream, createWriteStream } from 'node:fs'
import { access, rename, rm } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { finished } from 'node:stream/promises'
import type { Command } from 'commander'
import { decodeTrustStatement, TrustChain, type SignedTrustStatement } from '../crdt/trust.ts'
import { nodeCryptoEd25519 } from '../crdt/ed25519-node.ts'
import { Replica } from '../crdt/replica.ts'
import { LevelStore } from '../crdt/level-store.ts'
import { decodeBatch } from '../crdt/signed-change.ts'
import { DaemonClient } from './daemon-client.ts'
import { fromHex } from '../crdt/bytes.ts'
import { BundleEncoder, readBundle, SectionKind } from './bundle.ts'
import { UsageError, WrongFleetError } from './errors.ts'
import { STORE_DIR } from './config.ts'
import { daemonOption, say } from './cli-common.ts'
import { exportArtifacts, importArtifacts } from './artifacts/bundle-cli.ts'

async function cmdExport(opts: {
  out: string
  daemon: string
  withArtifacts?: boolean
}): Promise<void> {
  const client = new DaemonClient(opts.daemon)
  const trust = await client.trust()
  const ids = await client.docIds()
  // Written beside the target and renamed once whole, so an interrupted export leaves no
  // half-written bundle under the name the operator will carry away.
  const tmp = `${opts.out}.partial`
  let artifacts = ''
  const out = createWriteStream(tmp, { flags: 'w' })
  const write = (bytes: Uint8Array): Promise<void> =>
    new Promise((ok, fail) => out.write(bytes, err => (err ? fail(err) : ok())))
  try {
    const enc = new BundleEncoder()
    for (const t of trust) await write(enc.trust(t))
    for (const e of await client.json<string[]>('/api/equivocations')) {
      await write(enc.evidence(fromHex(e)))
    }
    const beacon = await client
      .json<{ beacon: string }>('/api/beacon')
      .then(b => fromHex(b.beacon))
      .catch(() => undefined)
    if (beacon !== undefined) await write(enc.beacon(beacon))
    for (const id of ids) {
      await write(enc.batch(await client.bytes(`/api/docs/${encodeURIComponent(id)}/batch`)))
    }
    if (opts.withArtifacts === true) artifacts = await exportArtifacts(client, ids, enc, write)
    await write(enc.end())
    out.end()
    await finished(out)
    await rename(tmp, opts.out)
  } catch (err) {
    out.destroy()
    await rm(tmp, { force: true })
    throw err
  }
  say(
    `wrote ${opts.out}: ${trust.length} trust statement(s), ${ids.length} document(s)${artifacts}`
  )
}

/** Check the bundle whole and return its trust statements (few and small; batches stay on disk). */
async function checkedTrust(file: string): Promise<{ trust: Uint8Array[]; batches: number }> {
  try {
    await access(file)
  } catch (err) {
    throw new UsageError(`cannot read ${file}: ${(err as Error).message}`)
  }
  const trust: Uint8Array[] = []
  let batches = 0
  for await (const s of readBundle(createReadStream(file))) {
    if (s.kind === SectionKind.Trust) trust.push(s.payload)
    else if (s.kind === SectionKind.Batch) batches++
  }
  return { trust, batches }
}

/** Refuse a bundle of another fleet before anything of it is applied. */
async function sameFleet(
  file: string,
  bundleGenesis: SignedTrustStatement,
  heldGenesis: SignedTrustStatement | undefined,
  where: string
): Promise<void> {
  if (heldGenesis === undefined) return
  const [ours, theirs] = await Promise.all([
    TrustChain.fromGenesis(heldGenesis, nodeCryptoEd25519),
    TrustChain.fromGenesis(bundleGenesis, nodeCryptoEd25519)
  ])
  if (ours.fleetId === theirs.fleetId) return
  throw new WrongFleetError(
    `${file} is a bundle of fleet "${theirs.latest.fleet}" (${theirs.fleetId.slice(0, 12)}…), but ${where} holds fleet "${ours.latest.fleet}" (${ours.fleetId.slice(0, 12)}…); nothing was imported. Carry it to a device of fleet "${theirs.latest.fleet}", or export a bundle from fleet "${ours.latest.fleet}"`
  )
}

async function* sectionsOf(file: string, kind: SectionKind): AsyncGenerator<Uint8Array> {
  for await (const s of readBundle(createReadStream(file))) {
    if (s.kind === kind) yield s.payload
  }
}

const batchesOf = (file: string): AsyncGenerator<Uint8Array> => sectionsOf(file, SectionKind.Batch)

async function cmdImport(file: string, opts: { daemon: string; data?: string }): Promise<void> {
  const { trust } = await checkedTrust(file)
  const statements = trust.map(decodeTrustStatement)
  const genesis = statements[0]
  if (genesis === undefined) {
    throw new UsageError(`${file} holds no trust statement, so nothing in it can be verified`)
  }
  if (opts.data !== undefined) {
    const store = await LevelStore.open(join(resolve(opts.data), STORE_DIR))
    try {
      const held = (await store.listTrust())[0]
      await sameFleet(
        file,
        genesis,
        held === undefined ? undefined : decodeTrustStatement(held),
        `the data directory ${opts.data}`
      )
      const replica = await Replica.open({ store, ed: nodeCryptoEd25519, genesis })
      try {
        for (const s of statements.slice(1)) await replica.addTrustStatement(s)
        for await (const e of sectionsOf(file, SectionKind.Evidence)) {
          await replica.acceptEquivocation(e)
        }
        for await (const b of sectionsOf(file, SectionKind.Beacon)) await replica.acceptBeacon(b)
        for await (const bytes of batchesOf(file)) {
          const batch = decodeBatch(bytes)
          if (batch.chunks.length === 0) continue
          const r = await replica.accept(batch)
          say(`${batch.docId}: ${r.status}`)
        }
      } finally {
        await replica.close()
      }
      await importArtifacts(file, { dataDir: resolve(opts.data) })
    } finally {
      await store.close()
    }
    return
  }
  const client = new DaemonClient(opts.daemon)
  await sameFleet(file, genesis, (await client.trust())[0], `the daemon at ${client.base}`)
  for (const t of trust) await client.postTrust(t)
  for await (const e of sectionsOf(file, SectionKind.Evidence)) {
    await client.postBytesTo('/api/equivocations', e)
  }
  for await (const b of sectionsOf(file, SectionKind.Beacon)) {
    await client.postBytesTo('/api/beacon', b)
  }
  for await (const bytes of batchesOf(file)) {
    const batch = decodeBatch(bytes)
    if (batch.chunks.length === 0) continue
    const r = await client.postBytes(bytes)
    say(`${batch.docId}: ${r.status}`)
  }
  await importArtifacts(file, { daemon: opts.daemon })
}

/** Register `bundle export` and `bundle import` on the `rhizome` program. */
export function registerBundleCommands(program: Command, exitHelp: string): void {
  const bundle = program
    .command('bundle')
    .description('carry signed changes on a file, for sites with no network')
  bundle
    .command('export')
    .description(
      "write the trust chain and every document's signed changes to a file, with a checksum"
    )
    .requiredOption('--out <file>', 'bundle file to write')
    .option(
      '--with-artifacts',
      'also write every artifact the desired config names (the daemon must hold them complete)'
    )
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdExport)
  bundle
    .command('import')
    .description(
      "check a bundle whole, then verify and apply it, through a running daemon or straight into a stopped daemon's data directory"
    )
    .argument('<file>')
    .option('--data <dir>', 'import into this data directory (the daemon must be stopped)')
    .addOption(daemonOption())
    .addHelpText('after', exitHelp)
    .action(cmdImport)
}
