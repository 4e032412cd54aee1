/**
 * The compiled build (`npm run build:cli`): the `rhizome` command and the daemon as a few
 * minified ES modules in dist/, so an installed daemon neither strips types at every start nor
 * loads several hundred small library files. It is what bin/rhizome.cjs runs.
 *
 * Kept outside the bundle, installed as ordinary dependencies: Automerge (it loads its WASM
 * from its own directory) and LevelDB (`classic-level` is a native addon). Everything else,
 * libp2p included, is bundled. Names are kept (`keepNames`) so stack traces and the `.name`
 * checks some libraries make still read as in the source.
 */
import { defineConfig } from 'rolldown'

export default defineConfig({
  input: { cli: 'node/cli.ts' },
  platform: 'node',
  external: [/^node:/, /^@automerge\/automerge(\/|$)/, /^level$/, /^classic-level$/],
  output: {
    dir: 'dist',
    format: 'esm',
    cleanDir: true,
    minify: { compress: true, mangle: { keepNames: true } },
    chunkFileNames: '[name]-[hash].js'
  }
})
