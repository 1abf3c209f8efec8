/** What a reconnect policy knows when it picks the next delay. */
export interface RetryContext {
  /** Attempts made since the connection was last good. */
  previousRetryCount: number;
  /** Time since the connection was last good. */
  elapsedMs: number;
  /** Why the last attempt or connection failed. */
  retryReason: Error | undefined;
}

/** Decides how long to wait before the next attempt, or `null` to stop trying. */
export interface ReconnectPolicy {
  nextRetryDelayMs(context: RetryContext): number | null;
}

export interface BackoffOptions {
  initialDelayMs?: number;
  maxDelayMs?: number;
  /** Stop after this many attempts (default: never). */
  maxRetries?: number;
  /** Stop after this long without a good connection (default: never). */
  maxElapsedMs?: number;
  /** A number in [0, 1); injectable for tests. */
  random?: () => number;
}

/**
 * Exponential backoff with full jitter: a delay drawn uniformly from [0, min(max, initial·2ⁿ)],
 * so that clients dropped together do not come back together.
 */
export class ExponentialBackoff implements ReconnectPolicy {
  private readonly initialDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly maxRetries: number;
  private readonly maxElapsedMs: number;
  private readonly random: () => number;

  constructor(options: BackoffOptions = {}) {
    this.initialDelayMs = options.initialDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 30_000;
    this.maxRetries = options.maxRetries ?? Number.POSITIVE_INFINITY;
    this.maxElapsedMs = options.maxElapsedMs ?? Number.POSITIVE_INFINITY;
    this.random = options.random ?? Math.random;
  }

  nextRetryDelayMs(context: RetryContext): number | null {
    if (context.previousRetryCount >= this.maxRetries || context.elapsedMs >= this.maxElapsedMs) return null;
    const ceiling = Math.min(
      this.maxDelayMs,
      this.initialDelayMs * 2 ** Math.min(context.previousRetryCount, 30),
    );
    return Math.floor(this.random() * ceiling);
  }
}
