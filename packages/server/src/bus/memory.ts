import type { Bus, BusMessage, BusMessageType, MessageOf } from './bus.js';

type Listener = (message: BusMessage) => void;

/** The in-process Bus: listeners are called synchronously, in subscription order. */
export class MemoryBus implements Bus {
  private readonly listeners = new Map<BusMessageType, Set<Listener>>();

  constructor(private readonly onListenerError: (err: unknown) => void = () => {}) {}

  publish(message: BusMessage): void {
    if (message.type === 'run-events' && message.events.length === 0) return;
    const listeners = this.listeners.get(message.type);
    if (!listeners) return;
    for (const listener of listeners) {
      // One listener's bug must not keep the message from the others.
      try {
        listener(message);
      } catch (err) {
        this.onListenerError(err);
      }
    }
  }

  subscribe<T extends BusMessageType>(type: T, listener: (message: MessageOf<T>) => void): () => void {
    let listeners = this.listeners.get(type);
    if (!listeners) {
      listeners = new Set();
      this.listeners.set(type, listeners);
    }
    // A wrapper, so the same function subscribed twice is two subscriptions.
    const entry: Listener = (message) => listener(message as MessageOf<T>);
    listeners.add(entry);
    const set = listeners;
    return () => {
      set.delete(entry);
    };
  }

  async close(): Promise<void> {
    this.listeners.clear();
  }
}
