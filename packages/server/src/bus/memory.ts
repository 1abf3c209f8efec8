import type { RunEvent } from '@runcast/protocol';
import type { Bus, BusListener } from './bus.js';

/** The in-process Bus: listeners are called synchronously, in subscription order. */
export class MemoryBus implements Bus {
  private readonly listeners = new Set<BusListener>();

  constructor(private readonly onListenerError: (err: unknown) => void = () => {}) {}

  publish(events: readonly RunEvent[]): void {
    if (events.length === 0) return;
    for (const listener of this.listeners) {
      // One listener's bug must not keep the event from the others.
      try {
        listener(events);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }

  subscribe(listener: BusListener): () => void {
    // A wrapper, so the same function subscribed twice is two subscriptions.
    const entry: BusListener = (events) => listener(events);
    this.listeners.add(entry);
    return () => {
      this.listeners.delete(entry);
    };
  }

  get listenerCount(): number {
    return this.listeners.size;
  }

  async close(): Promise<void> {
    this.listeners.clear();
  }
}
