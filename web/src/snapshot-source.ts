/**
 * The half of a FleetSource both implementations share: the current snapshot, replaced whole on
 * every change, and the views subscribed to it.
 */
import type { FleetSnapshot, FleetSource } from './fleet-source.ts'

export abstract class SnapshotSource implements Pick<FleetSource, 'snapshot' | 'subscribe'> {
  protected state: FleetSnapshot
  private readonly listeners = new Set<(s: FleetSnapshot) => void>()

  constructor(initial: FleetSnapshot) {
    this.state = initial
  }

  snapshot(): FleetSnapshot {
    return this.state
  }
  subscribe(fn: (s: FleetSnapshot) => void): () => void {
    this.listeners.add(fn)
    return () => {
      this.listeners.delete(fn)
    }
  }

  /** Replace the snapshot and tell every subscriber. */
  protected set(s: FleetSnapshot): void {
    this.state = s
    for (const fn of this.listeners) fn(s)
  }
}
