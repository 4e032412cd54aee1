/**
 * Vite build of the dashboard: `vite build web` → web/dist, which daemons serve at `/`.
 * Preact JSX through esbuild/oxc (tsconfig: jsx react-jsx, jsxImportSource preact); no plugins.
 */
import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vite'

const automergeBase64 = fileURLToPath(
  new URL(
    '../node_modules/@automerge/automerge/dist/mjs/entrypoints/fullfat_base64.js',
    import.meta.url
  )
)

export default defineConfig({
  root: fileURLToPath(new URL('.', import.meta.url)),
  // relative asset URLs: the same build works at / of any daemon and from `vite preview`
  base: './',
  resolve: {
    // Automerge's "browser" export imports its .wasm as an ES module, which needs a Vite
    // plugin; the base64 entry inlines the wasm and runs anywhere.
    alias: [{ find: /^@automerge\/automerge$/, replacement: automergeBase64 }]
  },
  worker: { format: 'es' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    chunkSizeWarningLimit: 4096
  },
  server: { host: '127.0.0.1' },
  preview: { host: '127.0.0.1' }
})
