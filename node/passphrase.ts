/**
 * Where a key file's passphrase comes from: --passphrase-file, else RHIZOME_PASSPHRASE, else a
 * prompt when stdin is a terminal (input not echoed). Never from a command-line argument,
 * which other users can read in the process list.
 */
import { readFile } from 'node:fs/promises'
import { createInterface } from 'node:readline'
import { UsageError } from './errors.ts'

export async function readPassphrase(
  opts: { passphraseFile?: string },
  prompt: string
): Promise<string> {
  if (opts.passphraseFile !== undefined) {
    try {
      return (await readFile(opts.passphraseFile, 'utf8')).replace(/\r?\n$/, '')
    } catch (err) {
      throw new UsageError(
        `cannot read the passphrase file ${opts.passphraseFile}: ${(err as Error).message}`
      )
    }
  }
  const env = process.env.RHIZOME_PASSPHRASE
  if (env !== undefined && env !== '') return env
  if (!process.stdin.isTTY) {
    throw new UsageError(
      'a passphrase is needed: pass --passphrase-file FILE or set RHIZOME_PASSPHRASE (no terminal to prompt on)'
    )
  }
  return new Promise(resolve => {
    const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true })
    const out = rl as unknown as {
      _writeToOutput: (s: string) => void
      output: NodeJS.WritableStream
    }
    let asked = false
    out._writeToOutput = (s: string) => {
      if (!asked) {
        out.output.write(s)
        asked = true
      }
    }
    rl.question(prompt, answer => {
      rl.close()
      process.stderr.write('\n')
      resolve(answer)
    })
  })
}
