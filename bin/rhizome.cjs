#!/usr/bin/env node
/*
 * The installed `rhizome` command. Deliberately plain CommonJS in old syntax: it must run on
 * whatever Node a device happens to have, if only to say that it is too old. Rhizome itself
 * needs Node 22 or later (js-libp2p uses Promise.withResolvers); an older Node would otherwise
 * fail with a syntax or reference error deep inside a library. Only once the version is known
 * to be good is ./start.cjs loaded: it holds the import() that an old Node cannot parse.
 */
'use strict'

const MIN_NODE_MAJOR = 22

const major = Number(process.versions.node.split('.')[0])
if (!(major >= MIN_NODE_MAJOR)) {
  process.stderr.write(
    'rhizome: this is Node.js ' +
      process.version +
      ' (' +
      process.execPath +
      '), and rhizome needs Node.js ' +
      MIN_NODE_MAJOR +
      ' or later.\n' +
      'Install Node.js ' +
      MIN_NODE_MAJOR +
      ' or later (your distribution, NodeSource or nodejs.org) and put it first on the PATH, ' +
      'or run rhizome with it: /path/to/node ' +
      process.argv[1] +
      ' ...\n'
  )
  process.exit(1)
}
require('./start.cjs')
