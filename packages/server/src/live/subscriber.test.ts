import type { LogEvent, RunEvent, RunSnapshot } from '@runcast/protocol';
import { describe, expect, it } from 'vitest';
import { EncodedEvent } from './encoded-event.js';
import { type DisconnectReason, type Sink, Subscriber, type SubscriberHooks } from './subscriber.js';

class FakeSink implements Sink {
  readonly transport = 'sse' as const;
  busy = false;
  written: number[][] = [];
  ended: string[] = [];
  closedWith: DisconnectReason | undefined;
  isBusy() {
    return this.busy;
  }
  write(events: readonly EncodedEvent[]) {
    this.written.push(events.map((e) => e.seq));
  }
  runEnded(runId: string) {
    this.ended.push(runId);
  }
  runFailed(runId: string) {
    this.ended.push(`failed:${runId}`);
  }
  close(reason: DisconnectReason) {
    this.closedWith = reason;
  }
}

class FakeHooks implements SubscriberHooks {
  dirty = 0;
  conflated = 0;
  overflows = 0;
  runEnded: string[] = [];
  markDirty() {
    this.dirty++;
  }
  onWritten() {}
  onConflated() {
    this.conflated++;
  }
  onOverflow() {
    this.overflows++;
  }
  onRunEnded(_s: Subscriber, runId: string) {
    this.runEnded.push(runId);
  }
}

const AT = new Date().toISOString();
const snapshot = (seq: number, status: RunSnapshot['status'] = 'RUNNING') =>
  ({ run_id: 'r', seq, status }) as unknown as RunSnapshot;
const update = (seq: number, status: RunSnapshot['status'] = 'RUNNING', runId = 'r') =>
  new EncodedEvent(
    { run_id: runId, seq, type: 'update', at: AT, snapshot: snapshot(seq, status) } as RunEvent,
    { terminal: status === 'COMPLETED' },
  );
const log = (seq: number, message = 'x', runId = 'r') =>
  new EncodedEvent({ run_id: runId, seq, type: 'log', at: AT, log: { level: 'info', message } } as LogEvent);

function setup(maxQueuedBytes = 1_000_000) {
  const sink = new FakeSink();
  const hooks = new FakeHooks();
  const subscriber = new Subscriber(sink, hooks, maxQueuedBytes);
  subscriber.addRun('r');
  return { sink, hooks, subscriber };
}

describe('Subscriber', () => {
  it('holds live events until the opening is written, then drops those the snapshot covers', () => {
    const { sink, subscriber } = setup();
    subscriber.push(log(4));
    subscriber.push(log(5));
    subscriber.push(update(6));
    subscriber.flush();
    expect(sink.written).toEqual([]);
    subscriber.openRun('r', 5);
    subscriber.flush();
    expect(sink.written).toEqual([[6]]);
  });

  it('writes everything pending in one write', () => {
    const { sink, hooks, subscriber } = setup();
    subscriber.openRun('r', 0);
    for (let seq = 1; seq <= 5; seq++) subscriber.push(log(seq));
    expect(hooks.dirty).toBe(1);
    subscriber.flush();
    expect(sink.written).toEqual([[1, 2, 3, 4, 5]]);
  });

  it('conflates updates while busy: latest state wins and seq keeps growing', () => {
    const { sink, hooks, subscriber } = setup();
    subscriber.openRun('r', 0);
    sink.busy = true;
    subscriber.push(update(1));
    subscriber.push(log(2));
    subscriber.push(update(3));
    subscriber.push(log(4));
    subscriber.push(update(5));
    subscriber.flush();
    expect(sink.written).toEqual([]);
    sink.busy = false;
    subscriber.flush();
    expect(sink.written).toEqual([[2, 4, 5]]);
    expect(hooks.conflated).toBe(2);
  });

  it('never drops a log or a duplicate-free seq below the limit', () => {
    const { sink, subscriber } = setup();
    subscriber.openRun('r', 0);
    sink.busy = true;
    for (let seq = 1; seq <= 100; seq++) subscriber.push(log(seq));
    subscriber.push(log(50));
    sink.busy = false;
    subscriber.flush();
    expect(sink.written.flat()).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
  });

  it('disconnects with SLOW_CONSUMER once queued bytes pass the hard limit', () => {
    const { sink, hooks, subscriber } = setup(2_000);
    subscriber.openRun('r', 0);
    sink.busy = true;
    for (let seq = 1; seq <= 100 && !subscriber.isClosed; seq++) subscriber.push(log(seq, 'y'.repeat(50)));
    expect(sink.closedWith).toBe('SLOW_CONSUMER');
    expect(hooks.overflows).toBe(1);
    expect(subscriber.backlogBytes).toBe(0);
    sink.busy = false;
    subscriber.flush();
    expect(sink.written).toEqual([]);
  });

  it('delivers the terminal update and then leaves the run', () => {
    const { sink, hooks, subscriber } = setup();
    subscriber.openRun('r', 0);
    sink.busy = true;
    subscriber.push(update(1));
    subscriber.push(update(2, 'COMPLETED'));
    sink.busy = false;
    subscriber.flush();
    expect(sink.written).toEqual([[2]]);
    expect(sink.ended).toEqual(['r']);
    expect(hooks.runEnded).toEqual(['r']);
    expect(subscriber.hasRun('r')).toBe(false);
  });

  it('keeps runs apart on one connection', () => {
    const { sink, subscriber } = setup();
    subscriber.addRun('q');
    subscriber.openRun('r', 0);
    subscriber.openRun('q', 10);
    subscriber.push(update(1, 'RUNNING', 'r'));
    subscriber.push(update(11, 'RUNNING', 'q'));
    subscriber.push(log(2, 'x', 'r'));
    subscriber.push(update(3, 'RUNNING', 'r'));
    subscriber.flush();
    // Only updates of the same run conflate; q's update stays.
    expect(sink.written).toEqual([[11, 2, 3]]);
  });

  it('follows runs added and removed in any order', () => {
    const { sink, subscriber } = setup();
    subscriber.addRun('q');
    subscriber.addRun('p');
    expect([subscriber.runIds, subscriber.runCount]).toEqual([['r', 'q', 'p'], 3]);
    subscriber.removeRun('r');
    subscriber.addRun('s');
    expect([subscriber.runIds.sort(), subscriber.runCount]).toEqual([['p', 'q', 's'], 3]);
    for (const runId of ['p', 'q', 's']) subscriber.openRun(runId, 0);
    subscriber.push(log(1, 'x', 'r'));
    subscriber.push(log(1, 'x', 'q'));
    subscriber.push(log(1, 'x', 's'));
    subscriber.flush();
    expect(sink.written).toEqual([[1, 1]]);
    expect([subscriber.hasRun('r'), subscriber.hasRun('s')]).toEqual([false, true]);
  });

  it('counts no backlog once closed, whatever it held while opening', () => {
    const { subscriber } = setup();
    subscriber.push(log(1));
    expect(subscriber.backlogBytes).toBeGreaterThan(0);
    subscriber.close('CLIENT_CLOSED');
    subscriber.removeRun('r');
    expect(subscriber.backlogBytes).toBe(0);
  });

  it('writes each flush on its own: nothing written before comes again', () => {
    const { sink, hooks, subscriber } = setup();
    subscriber.openRun('r', 0);
    subscriber.push(log(1));
    subscriber.flush();
    subscriber.push(update(2));
    subscriber.flush();
    subscriber.push(log(3));
    subscriber.flush();
    expect(sink.written).toEqual([[1], [2], [3]]);
    // Dirty again each time the queue goes from empty to not empty.
    expect(hooks.dirty).toBe(3);
    expect(subscriber.backlogBytes).toBe(0);
  });

  it('does not take an update already written for one still queued', () => {
    const { sink, hooks, subscriber } = setup();
    subscriber.openRun('r', 0);
    subscriber.push(update(1));
    subscriber.flush();
    sink.busy = true;
    subscriber.push(log(2));
    subscriber.push(update(3));
    sink.busy = false;
    subscriber.flush();
    expect(sink.written).toEqual([[1], [2, 3]]);
    expect(hooks.conflated).toBe(0);
  });

  it('replaces the last queued update in place and counts only the newest bytes', () => {
    const { sink, hooks, subscriber } = setup();
    subscriber.openRun('r', 0);
    sink.busy = true;
    subscriber.push(update(1));
    subscriber.push(update(2));
    const newest = update(3);
    subscriber.push(newest);
    expect(subscriber.backlogBytes).toBe(newest.size);
    expect(hooks.dirty).toBe(1);
    sink.busy = false;
    subscriber.flush();
    expect(sink.written).toEqual([[3]]);
    expect(hooks.conflated).toBe(2);
  });

  it('drops the queued update of a run it leaves', () => {
    const { sink, subscriber } = setup();
    subscriber.openRun('r', 0);
    sink.busy = true;
    subscriber.push(update(1));
    expect(subscriber.removeRun('r')).toBe(true);
    expect(subscriber.backlogBytes).toBe(0);
    sink.busy = false;
    subscriber.flush();
    expect(sink.written).toEqual([]);
  });

  it('writes a live run while another one is still opening, and counts the held events', () => {
    const { sink, hooks, subscriber } = setup();
    subscriber.openRun('r', 0);
    subscriber.addRun('q');
    const held = log(11, 'x', 'q');
    subscriber.push(held);
    expect(hooks.dirty).toBe(0);
    subscriber.push(log(1));
    expect(hooks.dirty).toBe(1);
    subscriber.flush();
    expect(sink.written).toEqual([[1]]);
    expect(subscriber.backlogBytes).toBe(held.size);
    subscriber.openRun('q', 10);
    subscriber.flush();
    expect(sink.written).toEqual([[1], [11]]);
    expect(subscriber.backlogBytes).toBe(0);
  });
});
