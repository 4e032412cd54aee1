/**
 * crdt/: pure data, no network, browser-safe. Keys and signatures, signed change batches,
 * trust statements, signed Automerge documents, the effective-config function and the
 * storage interface. `level-store.ts` and `ed25519-node.ts` are Node-only and imported directly.
 */
export * from './errors.ts'
export * from './bytes.ts'
export * from './canonical-json.ts'
export * from './ed25519.ts'
export * from './keys.ts'
export * from './trust.ts'
export * from './signed-change.ts'
export * from './store.ts'
export * from './document.ts'
export * from './replica.ts'
export * from './effective-config.ts'
export * from './devices.ts'
