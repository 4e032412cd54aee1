/**
 * Ed25519 key pairs, the form people compare them in, and key files encrypted at rest.
 *
 * Key file (JSON, version 1):
 *   { "rhizome": "key/v1", "label", "publicKey": hex, "kdf": { "name": "scrypt", N, r, p, "salt": hex },
 *     "nonce": hex, "box": hex }
 * `box` is `nacl.secretbox(seed, nonce, scrypt(passphrase, salt))`; the secretbox MAC is what
 * tells a wrong passphrase from a right one.
 */
import nacl from 'tweetnacl'
import { scryptAsync } from '@noble/hashes/scrypt.js'
import { sha256 } from '@noble/hashes/sha2.js'
import { fromHex, toHex, utf8 } from './bytes.ts'
import { MalformedInputError, OversizedInputError, WrongPassphraseError } from './errors.ts'

export type PublicKeyHex = string & { __brand: 'PublicKeyHex' }

export interface KeyPair {
  /** 32-byte Ed25519 public key. */
  readonly publicKey: Uint8Array
  /** 32-byte seed; the secret. */
  readonly seed: Uint8Array
}

export function generateKeyPair(): KeyPair {
  return keyPairFromSeed(nacl.randomBytes(32))
}

export function keyPairFromSeed(seed: Uint8Array): KeyPair {
  if (seed.length !== 32) {
    throw new MalformedInputError(`an Ed25519 seed is 32 bytes, not ${seed.length}`)
  }
  return { seed, publicKey: nacl.sign.keyPair.fromSeed(seed).publicKey }
}

export function publicKeyHex(publicKey: Uint8Array): PublicKeyHex {
  return toHex(publicKey) as PublicKeyHex
}

export function parsePublicKey(hex: string): Uint8Array {
  const key = fromHex(hex.trim())
  if (key.length !== 32) {
    throw new MalformedInputError(
      `a public key is 64 hex characters (32 bytes), got ${hex.length} characters`
    )
  }
  return key
}

/**
 * A short form for people to compare over the phone: the first 10 bytes of sha-256 of the key
 * in five groups, e.g. `3f2a-91c0-7be4-0d18-a6e2`.
 */
export function fingerprint(publicKey: Uint8Array): string {
  const h = toHex(sha256(publicKey)).slice(0, 20)
  return h.match(/.{4}/g)!.join('-')
}

export interface KeyFile {
  rhizome: 'key/v1'
  label: string
  publicKey: string
  kdf: { name: 'scrypt'; N: number; r: number; p: number; salt: string }
  nonce: string
  box: string
}

/** scrypt cost: N=2^15, r=8 (32 MiB, ~100 ms here). Tests may lower N for speed. */
export const DEFAULT_SCRYPT = { N: 1 << 15, r: 8, p: 1 }
/**
 * The costliest key file opened: N=2^17, r=8, p=2 (128 MiB and about a second here). A key file
 * is chosen by a person, but one sent to them (or dropped on the dashboard) must not tie up a
 * gigabyte and a core for minutes.
 */
const MAX_SCRYPT_N = 1 << 17
const MAX_SCRYPT_R = 8
const MAX_SCRYPT_P = 2
const MAX_KEY_FILE_BYTES = 4096

export async function encryptKeyFile(
  pair: KeyPair,
  passphrase: string,
  label: string,
  cost = DEFAULT_SCRYPT
): Promise<KeyFile> {
  const salt = nacl.randomBytes(16)
  const nonce = nacl.randomBytes(nacl.secretbox.nonceLength)
  const key = await scryptAsync(utf8(passphrase), salt, { ...cost, dkLen: 32 })
  return {
    rhizome: 'key/v1',
    label,
    publicKey: toHex(pair.publicKey),
    kdf: { name: 'scrypt', ...cost, salt: toHex(salt) },
    nonce: toHex(nonce),
    box: toHex(nacl.secretbox(pair.seed, nonce, key))
  }
}

function isPowerOfTwo(n: unknown, max: number): boolean {
  return (
    Number.isInteger(n) &&
    (n as number) >= 2 &&
    (n as number) <= max &&
    ((n as number) & ((n as number) - 1)) === 0
  )
}

export function parseKeyFile(text: string): KeyFile {
  if (text.length > MAX_KEY_FILE_BYTES) {
    throw new OversizedInputError(
      `a key file is at most ${MAX_KEY_FILE_BYTES} bytes; this one has ${text.length}`
    )
  }
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch {
    throw new MalformedInputError(
      'the key file is not JSON; is this a Rhizome key file (root.key or admin.key, made by `rhizome init`)?'
    )
  }
  const f = v as Partial<KeyFile>
  if (
    f?.rhizome !== 'key/v1' ||
    typeof f.publicKey !== 'string' ||
    typeof f.nonce !== 'string' ||
    typeof f.box !== 'string' ||
    f.kdf?.name !== 'scrypt' ||
    typeof f.kdf.salt !== 'string' ||
    !/^[0-9a-f]{32,128}$/.test(f.kdf.salt) ||
    !/^[0-9a-f]{48}$/.test(f.nonce) ||
    !/^[0-9a-f]{96}$/.test(f.box) ||
    !/^[0-9a-f]{64}$/.test(f.publicKey) ||
    typeof f.label !== 'string' ||
    !isPowerOfTwo(f.kdf.N, MAX_SCRYPT_N) ||
    !Number.isInteger(f.kdf.r) ||
    f.kdf.r < 1 ||
    f.kdf.r > MAX_SCRYPT_R ||
    !Number.isInteger(f.kdf.p) ||
    f.kdf.p < 1 ||
    f.kdf.p > MAX_SCRYPT_P
  ) {
    throw new MalformedInputError(
      `not a Rhizome key file, or a damaged one (expected "rhizome": "key/v1", hex fields of the right length, and scrypt parameters N ≤ ${MAX_SCRYPT_N}, r ≤ ${MAX_SCRYPT_R}, p ≤ ${MAX_SCRYPT_P})`
    )
  }
  return f as KeyFile
}

export async function decryptKeyFile(file: KeyFile, passphrase: string): Promise<KeyPair> {
  const key = await scryptAsync(utf8(passphrase), fromHex(file.kdf.salt), {
    N: file.kdf.N,
    r: file.kdf.r,
    p: file.kdf.p,
    dkLen: 32
  })
  const seed = nacl.secretbox.open(fromHex(file.box), fromHex(file.nonce), key)
  if (seed === null) {
    throw new WrongPassphraseError(
      `wrong passphrase for key file "${file.label}" (${fingerprint(fromHex(file.publicKey))}); nothing was signed`
    )
  }
  const pair = keyPairFromSeed(seed)
  if (toHex(pair.publicKey) !== file.publicKey) {
    throw new MalformedInputError(
      `key file "${file.label}" is inconsistent: its secret does not match its public key`
    )
  }
  return pair
}
