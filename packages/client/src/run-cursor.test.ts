import { describe, expect, it } from 'vitest';
import { RunCursor } from './run-cursor.js';
import { logEvent, runErrorEvent, snapshotEvent, updateEvent } from './test-support/fakes.js';

const RUN = 'run_a';

describe('RunCursor', () => {
  it('passes the first snapshot through as a snapshot and remembers it', () => {
    const cursor = new RunCursor();
    const first = snapshotEvent(RUN, 3);
    expect(cursor.accept(first)).toEqual(first);
    expect(cursor.lastSeq).toBe(3);
    expect(cursor.lastState).toEqual(first);
    expect(cursor.finished).toBe(false);
  });

  it('delivers logs in order and advances the last seq with each', () => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent(RUN, 0));
    const delivered = [1, 2, 3].map((seq) => cursor.accept(logEvent(RUN, seq)));
    expect(delivered).toEqual([logEvent(RUN, 1), logEvent(RUN, 2), logEvent(RUN, 3)]);
    expect(cursor.lastSeq).toBe(3);
  });

  it('drops logs and updates at or below the last seq', () => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent(RUN, 0));
    cursor.accept(logEvent(RUN, 1));
    cursor.accept(updateEvent(RUN, 2, { stage: 'EXPORT' }));
    cursor.accept(logEvent(RUN, 3));
    expect(cursor.accept(logEvent(RUN, 3))).toBeUndefined();
    expect(cursor.accept(logEvent(RUN, 1))).toBeUndefined();
    expect(cursor.accept(updateEvent(RUN, 2, { stage: 'EXPORT' }))).toBeUndefined();
    expect(cursor.accept(logEvent(RUN, 4))).toEqual(logEvent(RUN, 4));
    expect(cursor.lastSeq).toBe(4);
  });

  it('turns a later snapshot with a new state into an update at the same seq', () => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent(RUN, 0));
    cursor.accept(logEvent(RUN, 1));
    const reopened = snapshotEvent(RUN, 2, { stage: 'PLAN', progress: { percentage: 40 } });
    expect(cursor.accept(reopened)).toEqual({
      run_id: RUN,
      seq: 2,
      type: 'update',
      at: reopened.at,
      snapshot: reopened.snapshot,
    });
    expect(cursor.lastSeq).toBe(2);
    expect(cursor.lastState).toEqual({ ...reopened });
  });

  it('turns a new state at the seq of the last log (a poll after the logs) into an update', () => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent(RUN, 0));
    cursor.accept(logEvent(RUN, 1));
    cursor.accept(logEvent(RUN, 2));
    expect(cursor.accept(snapshotEvent(RUN, 2, { stage: 'APPLY' }))?.type).toBe('update');
  });

  it('drops a re-sent snapshot whose state did not change, yet moves past its seq', () => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent(RUN, 0, { stage: 'EXPORT' }));
    cursor.accept(logEvent(RUN, 1));
    cursor.accept(logEvent(RUN, 2));
    // The seq moved on through the logs only: the state is the one already delivered.
    expect(cursor.accept(snapshotEvent(RUN, 2, { stage: 'EXPORT' }))).toBeUndefined();
    expect(cursor.accept(snapshotEvent(RUN, 0, { stage: 'EXPORT' }))).toBeUndefined();
    expect(cursor.lastSeq).toBe(2);
    expect(cursor.accept(logEvent(RUN, 3))).toEqual(logEvent(RUN, 3));
  });

  it('drops a snapshot older than what was already delivered, even with another state', () => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent(RUN, 0));
    cursor.accept(logEvent(RUN, 5));
    expect(cursor.accept(snapshotEvent(RUN, 4, { stage: 'OLD' }))).toBeUndefined();
    expect(cursor.lastSeq).toBe(5);
  });

  it('passes a gap (`events_truncated`) through as a snapshot, also after the first', () => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent(RUN, 0));
    cursor.accept(logEvent(RUN, 1));
    const gap = snapshotEvent(RUN, 900, { stage: 'VERIFY' }, true);
    expect(cursor.accept(gap)).toEqual(gap);
    expect(cursor.lastSeq).toBe(900);
    expect(cursor.accept(logEvent(RUN, 901))).toEqual(logEvent(RUN, 901));
  });

  it.each(['COMPLETED', 'FAILED', 'CANCELED'] as const)('is finished after a %s update', (status) => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent(RUN, 0));
    cursor.accept(logEvent(RUN, 1));
    expect(cursor.finished).toBe(false);
    expect(cursor.accept(updateEvent(RUN, 2, { status }))?.type).toBe('update');
    expect(cursor.finished).toBe(true);
  });

  it('is finished when the opening snapshot is already terminal', () => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent(RUN, 7, { status: 'COMPLETED' }));
    expect(cursor.finished).toBe(true);
  });

  it('does not finish on a state that is not terminal', () => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent(RUN, 0, { status: 'QUEUED' }));
    cursor.accept(updateEvent(RUN, 1, { status: 'RUNNING' }));
    expect(cursor.finished).toBe(false);
  });

  it('passes a run error through without touching the cursor', () => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent(RUN, 4));
    const error = runErrorEvent(RUN, 'FORBIDDEN');
    expect(cursor.accept(error)).toEqual(error);
    expect(cursor.lastSeq).toBe(4);
  });

  it('takes the same state with its fields in another order for no change', () => {
    const cursor = new RunCursor();
    const opening = snapshotEvent(RUN, 1, { stage: 'EXPORT' });
    cursor.accept(opening);
    cursor.accept(logEvent(RUN, 2));
    const reordered = Object.fromEntries(
      Object.entries(opening.snapshot).reverse(),
    ) as typeof opening.snapshot;
    expect(cursor.accept({ ...opening, seq: 2, snapshot: { ...reordered, seq: 2 } })).toBeUndefined();
  });
});
