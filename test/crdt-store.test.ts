/**
 * Both stores pass the one shared store suite (test/fixtures/store-suite.ts).
 */
import { after } from 'node:test'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { LevelStore } from '../crdt/level-store.ts'
import { MemoryStore, type Store } from '../crdt/store.ts'
import { runStoreTests } from './fixtures/store-suite.ts'

runStoreTests('MemoryStore', async () => {
  const store = new MemoryStore()
  return { store, reopen: async () => store, teardown: async () => {} }
})

const dirs: string[] = []
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true })
})

runStoreTests('LevelStore', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'rhizome-store-'))
  dirs.push(dir)
  let current: Store = await LevelStore.open(dir)
  return {
    store: current,
    reopen: async () => {
      await current.close()
      current = await LevelStore.open(dir)
      return current
    },
    teardown: async () => {
      await current.close()
    }
  }
})
