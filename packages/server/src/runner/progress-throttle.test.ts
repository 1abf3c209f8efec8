import type { ProgressUpdate } from '@runcast/protocol';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ProgressThrottle } from './progress-throttle.js';

describe('ProgressThrottle', () => {
  let sent: ProgressUpdate[];
  let throttle: ProgressThrottle;
  beforeEach(() => {
    vi.useFakeTimers();
    sent = [];
    throttle = new ProgressThrottle(
      async (patch) => {
        sent.push(patch);
      },
      200,
      (err) => {
        throw err;
      },
    );
  });
  afterEach(() => vi.useRealTimers());

  it('merges the updates of one interval, the later field winning', async () => {
    throttle.push({ progress: { percentage: 1 } });
    throttle.push({ progress: { percentage: 2 }, current_stage: 'a' });
    throttle.push({ progress: { percentage: 3 } });
    await vi.advanceTimersByTimeAsync(200);
    expect(sent).toEqual([{ progress: { percentage: 3 }, current_stage: 'a' }]);
  });

  it('sends at most once per interval', async () => {
    for (let i = 0; i < 50; i++) {
      throttle.push({ progress: { percentage: i } });
      await vi.advanceTimersByTimeAsync(20);
    }
    await throttle.flush();
    expect(sent.length).toBeLessThanOrEqual(6);
    expect(sent.at(-1)).toEqual({ progress: { percentage: 49 } });
  });

  it('never merges a stage away, however short it was', async () => {
    for (const stage of ['DISCOVERY', 'EXPORT', 'TRANSFORM', 'PLAN', 'APPLY', 'VERIFY']) {
      throttle.push({ stage, progress: { percentage: 1 } });
      throttle.push({ stage, progress: { percentage: 2 } });
    }
    await throttle.flush();
    expect(sent.map((patch) => patch.stage)).toEqual([
      'DISCOVERY',
      'EXPORT',
      'TRANSFORM',
      'PLAN',
      'APPLY',
      'VERIFY',
    ]);
  });
});
