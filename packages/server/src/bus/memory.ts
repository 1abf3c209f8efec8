import type { RunEvent } from '@runcast/protocol';
import type { AccessChange, AccessListener, Bus, BusListener } from './bus.js';

/** Calls every listener; one listener's bug must not keep the message from the others. */
function callEach<T>(listeners: Iterable<(message: T) => void>, message: T, onError: (err: unknown) => void) {
  for (const listener of listeners) {
    try {
      listener(message);
    } catch (err) {
      onError(err);
    }
  }
}

/** Adds a listener wrapped, so the same function subscribed twice is two subscriptions. */
function add<T>(listeners: Set<(message: T) => void>, listener: (message: T) => void): () => void {
  const entry = (message: T) => listener(message);
  listeners.add(entry);
  return () => {
    listeners.delete(entry);
  };
}

/** The in-process Bus: listeners are called synchronously, in subscription order. */
export class MemoryBus implements Bus {
  private readonly listeners = new Set<BusListener>();
  private readonly accessListeners = new Set<AccessListener>();

  constructor(private readonly onListenerError: (err: unknown) => void = () => {}) {}

  publish(events: readonly RunEvent[]): void {
    if (events.length > 0) callEach(this.listeners, events, this.onListenerError);
  }

  subscribe(listener: BusListener): () => void {
    return add(this.listeners, listener);
  }

  publishAccess(change: AccessChange): void {
    callEach(this.accessListeners, change, this.onListenerError);
  }

  subscribeAccess(listener: AccessListener): () => void {
    return add(this.accessListeners, listener);
  }

  get listenerCount(): number {
    return this.listeners.size;
  }

  async close(): Promise<void> {
    this.listeners.clear();
    this.accessListeners.clear();
  }
}
