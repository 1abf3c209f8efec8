/** A fixed-window counter per key: how many times something happened for a key this window. */
export class RateLimiter {
  private readonly windows = new Map<string, { startMs: number; count: number }>();

  constructor(
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** The count of `key` in its current window. */
  count(key: string): number {
    const window = this.windows.get(key);
    return window && this.now() - window.startMs < this.windowMs ? window.count : 0;
  }

  /** Seconds until the window of `key` ends (at least 1). */
  retryAfterS(key: string): number {
    const window = this.windows.get(key);
    const leftMs = window ? window.startMs + this.windowMs - this.now() : this.windowMs;
    return Math.max(1, Math.ceil(leftMs / 1000));
  }

  /** Counts one for `key`, opening a new window when the last one ended. */
  add(key: string): void {
    const nowMs = this.now();
    let window = this.windows.get(key);
    if (!window || nowMs - window.startMs >= this.windowMs) {
      if (this.windows.size > 10_000) this.sweep(nowMs);
      window = { startMs: nowMs, count: 0 };
      this.windows.set(key, window);
    }
    window.count += 1;
  }

  /** Takes back one count of `key` in its current window. */
  remove(key: string): void {
    const window = this.windows.get(key);
    if (window && window.count > 0 && this.now() - window.startMs < this.windowMs) window.count -= 1;
  }

  private sweep(nowMs: number): void {
    for (const [key, window] of this.windows) {
      if (nowMs - window.startMs >= this.windowMs) this.windows.delete(key);
    }
  }
}
