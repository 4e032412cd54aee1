/**
 * The artifact half of `rhizome bundle export --with-artifacts` and `rhizome bundle import`
 * (node/cli-bundle.ts): which artifacts go in, where they are read from, where they are stored.
 */
import { createReadStream } from 'node:fs'
import { join } from 'node:path'
import type { DaemonClient } from '../daemon-client.ts'
import { readBundle, type BundleEncoder } from '../bundle.ts'
import { InvalidBundleError } from '../errors.ts'
import { say } from '../cli-common.ts'
import { uploadArtifact } from '../cli-artifacts.ts'
import { ArtifactStore } from './store.ts'
import { artifactsInDocs, readArtifactSections, writeArtifactSections } from './bundle-sections.ts'
import type { Manifest } from './manifest.ts'

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`

/** Write the artifacts the documents `ids` name; returns a note for the summary line. */
export async function exportArtifacts(
  client: DaemonClient,
  ids: string[],
  enc: BundleEncoder,
  write: (bytes: Uint8Array) => Promise<void>
): Promise<string> {
  const values = []
  for (const id of ids) {
    values.push(
      (await client.json<{ value: unknown }>(`/api/docs/${encodeURIComponent(id)}`)).value
    )
  }
  const digests = artifactsInDocs(values)
  const bytes = await writeArtifactSections(
    digests,
    {
      manifest: d => client.bytes(`/api/artifacts/${d}/manifest`),
      chunk: (d, i) => client.bytes(`/api/artifacts/${d}/chunks/${i}`)
    },
    enc,
    write
  )
  return `, ${digests.length} artifact(s) (${mib(bytes)})`
}

/** Store the artifacts of a bundle already checked whole: through a daemon, or into a data directory. */
export async function importArtifacts(
  file: string,
  into: { daemon: string } | { dataDir: string }
): Promise<void> {
  const store =
    'dataDir' in into ? await ArtifactStore.open(join(into.dataDir, 'artifacts')) : undefined
  const check = (m: Manifest, got: string): void => {
    if (got !== m.digest) {
      throw new InvalidBundleError(
        `artifact ${m.digest} in the bundle was stored as ${got}; the bundle is damaged`
      )
    }
    say(`artifact ${m.digest}: stored (${mib(m.size)})`)
  }
  try {
    await readArtifactSections(readBundle(createReadStream(file)), async (m, chunks) => {
      if (store !== undefined) {
        check(m, (await store.add(chunks, { chunkSize: m.chunkSize })).digest)
      } else if ('daemon' in into) {
        check(
          m,
          (await uploadArtifact(into.daemon, chunks, { chunkSize: m.chunkSize, size: m.size }))
            .digest
        )
      }
    })
  } finally {
    await store?.close()
  }
}
