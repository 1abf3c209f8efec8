import type { RunEvent } from '@runcast/protocol';
import type { Bus } from '../bus/bus.js';

interface Waiter {
  afterSeq: number;
  wake: () => void;
}

/** A pending wait: `done` resolves true when an event past the cursor committed, false at the deadline. */
export interface SeqWait {
  done: Promise<boolean>;
  cancel(): void;
}

/**
 * Wakes long-polls as soon as an event with seq past their cursor is committed, instead of
 * re-reading the store on a timer.
 */
export class SeqWaiters {
  private readonly waiters = new Map<string, Set<Waiter>>();
  private readonly unsubscribe: () => void;

  constructor(bus: Bus) {
    this.unsubscribe = bus.subscribe((events) => this.onEvents(events));
  }

  /**
   * Starts waiting for an event of `runId` with seq > `afterSeq`. Register before reading the
   * store, so that an event committed in between is not missed.
   */
  wait(runId: string, afterSeq: number, timeoutMs: number): SeqWait {
    let settle: (woken: boolean) => void = () => {};
    const done = new Promise<boolean>((resolve) => {
      settle = resolve;
    });
    const set = this.waiters.get(runId) ?? new Set<Waiter>();
    this.waiters.set(runId, set);
    const finish = (woken: boolean) => {
      clearTimeout(timer);
      set.delete(waiter);
      if (set.size === 0 && this.waiters.get(runId) === set) this.waiters.delete(runId);
      settle(woken);
    };
    const waiter: Waiter = { afterSeq, wake: () => finish(true) };
    const timer = setTimeout(() => finish(false), timeoutMs);
    set.add(waiter);
    return { done, cancel: () => finish(false) };
  }

  /** Runs with someone waiting (for tests and metrics). */
  get size(): number {
    return this.waiters.size;
  }

  close(): void {
    this.unsubscribe();
    for (const set of this.waiters.values()) for (const waiter of [...set]) waiter.wake();
    this.waiters.clear();
  }

  private onEvents(events: readonly RunEvent[]): void {
    const last = events[events.length - 1];
    if (!last) return;
    const set = this.waiters.get(last.run_id);
    if (!set) return;
    for (const waiter of [...set]) if (last.seq > waiter.afterSeq) waiter.wake();
  }
}
