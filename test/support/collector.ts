import type { ProgressEvent } from '../../packages/client/src/types.js';

/** Records what a subscriber's callback saw and lets a test wait until a condition holds. */
export class Collector {
  readonly events: ProgressEvent[] = [];
  private waiters: { predicate: (events: ProgressEvent[]) => boolean; resolve: () => void }[] = [];

  readonly push = (event: ProgressEvent): void => {
    this.events.push(event);
    this.waiters = this.waiters.filter((waiter) => {
      if (!waiter.predicate(this.events)) return true;
      waiter.resolve();
      return false;
    });
  };

  until(predicate: (events: ProgressEvent[]) => boolean): Promise<void> {
    if (predicate(this.events)) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ predicate, resolve }));
  }

  /** Until the run's state is `status` (COMPLETED…). */
  untilStatus(status: string): Promise<void> {
    return this.until((events) =>
      events.some((e) => e.type !== 'log' && e.type !== 'error' && e.snapshot.status === status),
    );
  }

  get logMessages(): string[] {
    return this.events.flatMap((e) => (e.type === 'log' ? [e.log.message] : []));
  }

  get logSeqs(): number[] {
    return this.events.flatMap((e) => (e.type === 'log' ? [e.seq] : []));
  }

  get lastState() {
    for (let i = this.events.length - 1; i >= 0; i--) {
      const event = this.events[i];
      if (event && event.type !== 'log' && event.type !== 'error') return event.snapshot;
    }
    return undefined;
  }
}

/** Resolves when `check` returns true, polling every `everyMs`; rejects after `timeoutMs`. */
export async function eventually(check: () => boolean, timeoutMs = 10_000, everyMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
}
