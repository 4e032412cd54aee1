/**
 * A device's identity: an ed25519 seed in `<dataDir>/identity.key` (hex, mode 0600,
 * unencrypted because the daemon must start unattended). The same key is its libp2p PeerId and
 * the public key it is enrolled under.
 */
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { peerIdFromPublicKey } from '@libp2p/peer-id'
import { fromHex, toHex } from '../crdt/bytes.ts'
import { keyPairFromSeedFast } from '../crdt/ed25519-node.ts'
import { fingerprint, generateKeyPair, type KeyPair } from '../crdt/keys.ts'
import { InvalidConfigError } from './errors.ts'

export const IDENTITY_FILE = 'identity.key'

export interface DeviceIdentity {
  pair: KeyPair
  publicKeyHex: string
  fingerprint: string
  peerId: string
}

/** The PeerId of a device key pair (its public key; no key derivation). */
function peerIdOfPair(pair: KeyPair): string {
  return peerIdFromPublicKey(publicKeyFromRaw(pair.publicKey)).toString()
}

/** The PeerId of an enrolled device's public key (hex). */
export function peerIdOfPublicKey(hex: string): string {
  return peerIdFromPublicKey(publicKeyFromRaw(fromHex(hex))).toString()
}

function describe(pair: KeyPair): DeviceIdentity {
  return {
    pair,
    publicKeyHex: toHex(pair.publicKey),
    fingerprint: fingerprint(pair.publicKey),
    peerId: peerIdOfPair(pair)
  }
}

/** Read the identity in `dataDir`, or undefined if there is none. */
export async function readIdentity(dataDir: string): Promise<DeviceIdentity | undefined> {
  let text: string
  try {
    text = await readFile(join(dataDir, IDENTITY_FILE), 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw err
  }
  const hex = text.trim()
  if (!/^[0-9a-f]{64}$/.test(hex)) {
    throw new InvalidConfigError(
      `${join(dataDir, IDENTITY_FILE)} is not a device identity (64 hex characters); remove it and run \`rhizome node init --data ${dataDir}\``
    )
  }
  return describe(keyPairFromSeedFast(fromHex(hex)))
}

/** Create an identity in `dataDir` (which may not hold one yet). */
export async function createIdentity(dataDir: string): Promise<DeviceIdentity> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 })
  const pair = generateKeyPair()
  const file = join(dataDir, IDENTITY_FILE)
  await writeFile(file, toHex(pair.seed) + '\n', { mode: 0o600, flag: 'wx' })
  await chmod(file, 0o600)
  return describe(pair)
}

export async function loadOrCreateIdentity(
  dataDir: string
): Promise<{ identity: DeviceIdentity; created: boolean }> {
  const held = await readIdentity(dataDir)
  if (held !== undefined) return { identity: held, created: false }
  return { identity: await createIdentity(dataDir), created: true }
}
