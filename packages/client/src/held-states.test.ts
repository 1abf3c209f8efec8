import type { DeltaUpdateEvent } from '@runcast/protocol';
import { describe, expect, it } from 'vitest';
import { HeldStates } from './held-states.js';
import { logEvent, runSnapshot, snapshotEvent, updateEvent } from './test-support/fakes.js';

const delta = (seq: number, base: number, patch: DeltaUpdateEvent['patch']): DeltaUpdateEvent => ({
  run_id: 'r',
  seq,
  type: 'update',
  at: '2026-01-01T00:00:01.000Z',
  base_seq: base,
  patch,
});

describe('HeldStates', () => {
  it('makes a delta of the state held whole, and leaves the state handed on before untouched', () => {
    const states = new HeldStates();
    const lost: string[] = [];
    const opening = snapshotEvent('r', 3, { stage: 'EXPORT' });
    expect(states.take(opening, (runId) => lost.push(runId))).toBe(opening);
    const whole = states.take(delta(4, 3, { seq: 4, stage: 'APPLY', progress: { percentage: 5 } }), () => {});
    expect(whole).toEqual({
      run_id: 'r',
      seq: 4,
      type: 'update',
      at: '2026-01-01T00:00:01.000Z',
      // The frame's seq and at are the state's seq and updated_at.
      snapshot: runSnapshot('r', 4, {
        stage: 'APPLY',
        progress: { percentage: 5 },
        updated_at: '2026-01-01T00:00:01.000Z',
      }),
    });
    expect(opening.snapshot.stage).toBe('EXPORT');
    expect(states.take(logEvent('r', 5), () => {})).toEqual(logEvent('r', 5));
    expect(states.take(delta(6, 4, { seq: 6 }), () => {})).toMatchObject({
      seq: 6,
      snapshot: { stage: 'APPLY' },
    });
    expect(lost).toEqual([]);
  });

  it('drops a delta of another base, asks once for a snapshot, and applies none until a whole state', () => {
    const states = new HeldStates();
    const lost: string[] = [];
    const onLost = (runId: string) => lost.push(runId);
    states.take(snapshotEvent('r', 3), onLost);
    expect(states.take(delta(5, 4, { seq: 5 }), onLost)).toBeUndefined();
    // A later delta of the state the lost one would have made is no better: still dropped.
    expect(states.take(delta(6, 5, { seq: 6 }), onLost)).toBeUndefined();
    expect(lost).toEqual(['r']);
    expect(states.take(updateEvent('r', 7, { stage: 'VERIFY' }), onLost)).toMatchObject({ seq: 7 });
    expect(states.take(delta(8, 7, { seq: 8 }), onLost)).toMatchObject({
      snapshot: { seq: 8, stage: 'VERIFY' },
    });
    expect(lost).toEqual(['r']);
  });

  it('applies no delta to a run it holds nothing of', () => {
    const states = new HeldStates();
    const lost: string[] = [];
    expect(states.take(delta(2, 1, { seq: 2 }), (runId) => lost.push(runId))).toBeUndefined();
    expect(lost).toEqual(['r']);
  });
});
