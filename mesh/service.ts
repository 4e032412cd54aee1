/**
 * What the mesh's evented services (admission, sync, status) share, in js-libp2p's service shape:
 * the components libp2p hands them, their own init, and the event listeners `start` adds to other
 * services and the replica, all removed at `stop` by one abort (a service stopped and started
 * again listens once, not twice).
 */
import { TypedEventEmitter } from '@libp2p/interface'

/** Event maps are interfaces of CustomEvents (as in js-libp2p); `unknown` would refuse them. */
// oxlint-disable-next-line typescript/no-explicit-any
type EventMap = Record<string, any>

export abstract class MeshService<
  Events extends EventMap,
  Components,
  Init
> extends TypedEventEmitter<Events> {
  protected readonly components: Components
  protected readonly init: Init
  private listening = new AbortController()

  constructor(components: Components, init: Init) {
    super()
    this.components = components
    this.init = init
  }

  /** Listener options for `start`: every listener added with them goes at `unlisten`. */
  protected listen(): { signal: AbortSignal } {
    this.listening = new AbortController()
    return { signal: this.listening.signal }
  }

  /** Removes every listener added with `listen`'s options (for `stop`). */
  protected unlisten(): void {
    this.listening.abort()
  }
}
