import { nowMs } from './time.js';

/**
 * Calls `onDue(index, scheduledMs)` at `ratePerS`, open loop: when the process falls behind, the
 * late calls are made at once with their original schedule time, so a system that cannot keep up
 * shows it as latency instead of quietly sending less (no coordinated omission).
 */
export class Pacer {
  private next = 0;
  private startMs = 0;
  private timer: NodeJS.Timeout | undefined;
  private running = false;

  constructor(
    private readonly ratePerS: number,
    private readonly onDue: (index: number, scheduledMs: number) => void,
  ) {}

  start(): void {
    if (this.running || this.ratePerS <= 0) return;
    this.running = true;
    this.startMs = nowMs();
    this.tick();
  }

  stop(): void {
    this.running = false;
    clearTimeout(this.timer);
  }

  /** Calls made so far. */
  get count(): number {
    return this.next;
  }

  private readonly tick = (): void => {
    if (!this.running) return;
    const intervalMs = 1000 / this.ratePerS;
    const now = nowMs();
    while (this.running && this.startMs + this.next * intervalMs <= now) {
      const index = this.next++;
      this.onDue(index, this.startMs + index * intervalMs);
    }
    const wait = this.startMs + this.next * intervalMs - nowMs();
    this.timer = setTimeout(this.tick, Math.max(1, wait));
  };
}
