import type { ProgressUpdate } from '@runcast/protocol';

/**
 * Passes partial updates on at most once per `intervalMs`, merging those in between (a later
 * field replaces an earlier one), so a chatty executor costs a few commits per second.
 */
export class ProgressThrottle {
  private pending: ProgressUpdate | undefined;
  private lastSentMs = 0;
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> = Promise.resolve();

  constructor(
    private readonly send: (patch: ProgressUpdate) => Promise<unknown>,
    private readonly intervalMs: number,
    private readonly onError: (err: unknown) => void,
  ) {}

  push(patch: ProgressUpdate): void {
    // A new stage (or status) is never merged away: a stage shorter than the interval must
    // still reach subscribers, so what was pending for the previous one goes out first.
    const pending = this.pending;
    if (
      pending &&
      ((patch.stage !== undefined && pending.stage !== undefined && patch.stage !== pending.stage) ||
        (patch.status !== undefined && pending.status !== undefined && patch.status !== pending.status))
    ) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      this.emit();
    }
    this.pending = { ...this.pending, ...patch };
    if (this.timer) return;
    const waitMs = Math.max(0, this.lastSentMs + this.intervalMs - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.emit();
    }, waitMs);
  }

  /** Sends what is pending now and waits for every send. */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.emit();
    await this.inFlight;
  }

  private emit(): void {
    const patch = this.pending;
    if (!patch) return;
    this.pending = undefined;
    this.lastSentMs = Date.now();
    // Sends are chained so that they commit in the order they were made.
    this.inFlight = this.inFlight.then(() => this.send(patch).then(() => undefined, this.onError));
  }
}
