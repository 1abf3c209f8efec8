import type { RunSnapshot } from '@runcast/protocol';
import { describe, expect, it } from 'vitest';
import { RecentStates } from './recent-states.js';

const state = (runId: string, seq: number, percentage: number, stage: string | null = 'EXPORT') =>
  ({ run_id: runId, status: 'RUNNING', stage, progress: { percentage }, seq }) as unknown as RunSnapshot;

describe('RecentStates', () => {
  it('answers the patch from a state it answered before, and shares it among pollers', () => {
    const states = new RecentStates();
    expect(states.patchTo(state('a', 1, 10), undefined)).toBeUndefined();
    const first = states.patchTo(state('a', 3, 30), 1);
    expect(first).toEqual({ progress: { percentage: 30 }, seq: 3 });
    // Another poller at the same states: the very same patch, not computed again.
    expect(states.patchTo(state('a', 3, 30), 1)).toBe(first);
  });

  it('has no patch from a state it never answered, nor one a merge patch cannot express', () => {
    const states = new RecentStates();
    states.patchTo(state('a', 1, 10), undefined);
    expect(states.patchTo(state('a', 3, 30), 2)).toBeUndefined();
    expect(states.patchTo(state('b', 3, 30), 1)).toBeUndefined();
    expect(states.patchTo(state('a', 4, 30, null), 3)).toBeUndefined();
  });

  it('keeps a few states per run, for the runs polled last', () => {
    const states = new RecentStates(2, 2);
    for (const seq of [1, 2, 3]) states.patchTo(state('a', seq, seq), undefined);
    expect(states.patchTo(state('a', 4, 4), 1)).toBeUndefined(); // pushed out by 2 and 3
    expect(states.patchTo(state('a', 5, 5), 4)).toEqual({ progress: { percentage: 5 }, seq: 5 });
    states.patchTo(state('b', 1, 1), undefined);
    states.patchTo(state('c', 1, 1), undefined); // a is the run polled longest ago: forgotten
    expect(states.patchTo(state('a', 6, 6), 5)).toBeUndefined();
    expect(states.patchTo(state('c', 2, 2), 1)).toEqual({ progress: { percentage: 2 }, seq: 2 });
  });
});
