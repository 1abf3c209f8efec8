import { describe, expect, it } from 'vitest';
import { ExponentialBackoff, type RetryContext } from './reconnect-policy.js';

const context = (previousRetryCount: number, elapsedMs = 0): RetryContext => ({
  previousRetryCount,
  elapsedMs,
  retryReason: undefined,
});

describe('ExponentialBackoff', () => {
  it('stays within 0 ≤ delay < min(max, initial·2ⁿ) for any random draw', () => {
    const draws = [0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999_999];
    for (const draw of draws) {
      const policy = new ExponentialBackoff({ initialDelayMs: 500, maxDelayMs: 30_000, random: () => draw });
      for (let n = 0; n <= 40; n++) {
        const ceiling = Math.min(30_000, 500 * 2 ** n);
        const delayMs = policy.nextRetryDelayMs(context(n));
        expect(delayMs).not.toBeNull();
        expect(delayMs).toBeGreaterThanOrEqual(0);
        expect(delayMs).toBeLessThan(ceiling);
        expect(Number.isInteger(delayMs)).toBe(true);
      }
    }
  });

  it('uses full jitter: a draw of 0 gives 0, a draw near 1 gives nearly the ceiling', () => {
    const low = new ExponentialBackoff({ initialDelayMs: 1000, maxDelayMs: 60_000, random: () => 0 });
    const high = new ExponentialBackoff({ initialDelayMs: 1000, maxDelayMs: 60_000, random: () => 0.999 });
    expect(low.nextRetryDelayMs(context(0))).toBe(0);
    expect(low.nextRetryDelayMs(context(10))).toBe(0);
    expect(high.nextRetryDelayMs(context(0))).toBeGreaterThanOrEqual(998);
    expect(high.nextRetryDelayMs(context(2))).toBeGreaterThanOrEqual(3995);
    expect(high.nextRetryDelayMs(context(2))).toBeLessThan(4000);
    // Capped by maxDelayMs from n = 6 on (1000·2⁶ = 64 000 > 60 000).
    expect(high.nextRetryDelayMs(context(6))).toBeGreaterThanOrEqual(59_939);
    expect(high.nextRetryDelayMs(context(6))).toBeLessThan(60_000);
  });

  it('draws a fresh delay each time rather than one fixed schedule', () => {
    const draws = [0.2, 0.8];
    let i = 0;
    const policy = new ExponentialBackoff({ initialDelayMs: 1000, random: () => draws[i++ % 2] ?? 0 });
    expect(policy.nextRetryDelayMs(context(3))).toBe(1600);
    expect(policy.nextRetryDelayMs(context(3))).toBe(6400);
  });

  it('has defaults: 500 ms initial ceiling, 30 s cap, never stops', () => {
    const policy = new ExponentialBackoff({ random: () => 0.999_999 });
    expect(policy.nextRetryDelayMs(context(0))).toBe(499);
    expect(policy.nextRetryDelayMs(context(100))).toBe(29_999);
    expect(policy.nextRetryDelayMs(context(1_000_000, 1e12))).toBe(29_999);
  });

  it('returns null once maxRetries attempts were made', () => {
    const policy = new ExponentialBackoff({ maxRetries: 3, random: () => 0.5 });
    expect(policy.nextRetryDelayMs(context(0))).not.toBeNull();
    expect(policy.nextRetryDelayMs(context(2))).not.toBeNull();
    expect(policy.nextRetryDelayMs(context(3))).toBeNull();
    expect(policy.nextRetryDelayMs(context(4))).toBeNull();
  });

  it('returns null once maxElapsedMs passed without a good connection', () => {
    const policy = new ExponentialBackoff({ maxElapsedMs: 60_000, random: () => 0.5 });
    expect(policy.nextRetryDelayMs(context(1, 59_999))).not.toBeNull();
    expect(policy.nextRetryDelayMs(context(1, 60_000))).toBeNull();
  });

  it('does not overflow for huge retry counts', () => {
    const policy = new ExponentialBackoff({
      initialDelayMs: 1000,
      maxDelayMs: Number.MAX_SAFE_INTEGER,
      random: () => 0.999_999,
    });
    for (const n of [31, 1024, 1_000_000, Number.MAX_SAFE_INTEGER]) {
      const delayMs = policy.nextRetryDelayMs(context(n));
      expect(Number.isFinite(delayMs)).toBe(true);
      expect(delayMs).toBeGreaterThan(0);
      expect(delayMs).toBeLessThanOrEqual(1000 * 2 ** 30);
    }
  });
});
