/*
 * Loaded by rhizome.cjs once Node is known to be new enough. Runs the compiled command
 * (dist/cli.js, made by `npm run build` and shipped in the package), or, in a checkout that was
 * never built, the TypeScript source, which Node 22.18 and later run by stripping types.
 */
'use strict'

const fs = require('node:fs')
const path = require('node:path')
const url = require('node:url')

const built = path.join(__dirname, '..', 'dist', 'cli.js')
const entry = fs.existsSync(built) ? built : path.join(__dirname, '..', 'node', 'cli.ts')

import(url.pathToFileURL(entry).href).then(
  cli => cli.run(process.argv),
  err => {
    if (entry !== built && err && err.code === 'ERR_UNKNOWN_FILE_EXTENSION') {
      process.stderr.write(
        'rhizome: this checkout is not built and this Node (' +
          process.version +
          ') cannot run TypeScript directly; run `npm run build` in ' +
          path.join(__dirname, '..') +
          '\n'
      )
      process.exit(1)
    }
    process.stderr.write('rhizome: cannot load ' + entry + ': ' + (err && err.stack) + '\n')
    process.exit(4)
  }
)
