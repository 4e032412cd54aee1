/**
 * The daemon loads the mesh lazily, so it runs (without networking, saying so) in a checkout
 * where mesh/index.ts is missing or broken. The path is computed so the type checker does not
 * require the file to exist.
 */
import type { Mesh, MeshOptions } from '../mesh/types.ts'

export type CreateMesh = (options: MeshOptions) => Promise<Mesh>

export async function loadCreateMesh(): Promise<{ createMesh: CreateMesh } | { error: string }> {
  const url = new URL('../mesh/index.ts', import.meta.url).href
  try {
    const mod = (await import(url)) as { createMesh?: CreateMesh }
    if (typeof mod.createMesh !== 'function') {
      return { error: 'mesh/index.ts does not export createMesh' }
    }
    return { createMesh: mod.createMesh }
  } catch (err) {
    return { error: `${(err as Error).name}: ${(err as Error).message}` }
  }
}
