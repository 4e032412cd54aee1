/**
 * The CLI side of staged rollouts: what `rhizome apply` does with a fleet file's rollouts (fix
 * each new one's eligible nodes at its start; keep those of running ones).
 */
import { DEVICES_DOC, enrolledDevices } from '../crdt/devices.ts'
import { freezeRollouts } from '../crdt/rollout.ts'
import type { FleetDocuments } from '../crdt/fleet-yaml.ts'
import type { Replica } from '../crdt/replica.ts'

/** Enrolled devices' labels by key, from a replica's trust chain and devices document. */
async function enrolledLabels(replica: Replica): Promise<Map<string, Record<string, string>>> {
  const devices = replica.documentIds().includes(DEVICES_DOC)
    ? (await replica.open(DEVICES_DOC)).value
    : undefined
  return new Map(
    [...enrolledDevices(replica.trust, devices)].map(([key, d]) => [key, d.labels] as const)
  )
}

/**
 * The fleet file as `apply` writes it: every document's rollouts frozen (see freezeRollouts).
 * Returns notes for the command to print: rollouts that start, rollouts removed.
 */
export async function freezeForApply(
  desired: FleetDocuments,
  current: FleetDocuments,
  replica: Replica,
  now = new Date()
): Promise<{ docs: FleetDocuments; notes: string[] }> {
  const nodes = await enrolledLabels(replica)
  const docs: FleetDocuments = {}
  const notes: string[] = []
  for (const [id, doc] of Object.entries(desired)) {
    const r = freezeRollouts(id, doc, current[id], nodes, now)
    docs[id] = r.doc
    for (const s of r.started) notes.push(`rollout ${s.id} starts: ${s.eligible} eligible node(s)`)
    for (const gone of r.removed) {
      notes.push(
        `rollout ${gone} is removed: nodes that switched to it go back to the document's own config (put its change into the document to keep it)`
      )
    }
  }
  return { docs, notes }
}
