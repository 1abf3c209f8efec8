import { describe, expect, it } from 'vitest';
import { flushMicrotasks, logEvent, runSnapshot, snapshotEvent } from './test-support/fakes.js';
import { harness, record, seqsOf, typesOf } from './test-support/harness.js';

const RUN = 'run_a';
// Far longer than any test waits: whatever arrives, arrives while the method is still pending.
const SLOW = { websocket: 30_000, sse: 30_000, polling: 30_000 };

const progress = (seq: number, events: unknown[] = []) =>
  Response.json({ ...runSnapshot(RUN, seq), ...(events.length > 0 ? { events } : {}) });

describe('first data over REST while the transport connects', () => {
  it('delivers the REST snapshot while websocket is still pending, then follows on websocket', async () => {
    const { service, factory, net } = harness({ options: { connectTimeoutMs: SLOW, raceAfterMs: null } });
    const seen = record(service, RUN);
    const websocket = factory.last('websocket');
    await flushMicrotasks();
    expect(net.to(`/runs/${RUN}/progress`)).toHaveLength(1);
    net.to('/progress')[0]?.respond(progress(4));
    await flushMicrotasks();
    expect(seqsOf(seen.events)).toEqual([4]);
    expect(typesOf(seen.events)).toEqual(['snapshot']);
    expect(websocket.connectSettled).toBe(false);
    expect(service.getConnectionMethod()).toBeNull();

    // The transport opens at the same state: nothing new, nothing counted as a duplicate twice.
    websocket.emit(snapshotEvent(RUN, 4));
    websocket.emit(logEvent(RUN, 5));
    await flushMicrotasks();
    expect(seqsOf(seen.events)).toEqual([4, 5]);
    expect(service.getConnectionMethod()).toBe('websocket');
  });

  it('reads the gap over REST when a transport opened without the cursor REST set meanwhile', async () => {
    const { service, factory, net } = harness({ options: { connectTimeoutMs: SLOW, raceAfterMs: null } });
    const seen = record(service, RUN);
    const websocket = factory.last('websocket');
    expect(websocket.cursorsAtConnect).toEqual({ [RUN]: undefined });
    await flushMicrotasks();
    net.to('/progress')[0]?.respond(progress(4));
    await flushMicrotasks();
    // The transport's snapshot is at 7, and its live events follow at once: logs 5..7 would be
    // skipped. They wait while the gap is read over REST.
    websocket.emit(snapshotEvent(RUN, 7, { stage: 'EXPORT' }));
    websocket.emit(logEvent(RUN, 8));
    await flushMicrotasks();
    expect(seqsOf(seen.events)).toEqual([4]);
    const gap = net.to('/progress')[1];
    expect(gap?.url).toContain('since=4');
    gap?.respond(
      Response.json({
        ...runSnapshot(RUN, 7, { stage: 'EXPORT' }),
        events: [logEvent(RUN, 5), logEvent(RUN, 6), logEvent(RUN, 7)],
      }),
    );
    await flushMicrotasks();
    expect(seqsOf(seen.events)).toEqual([4, 5, 6, 7, 7, 8]);
    expect(typesOf(seen.events)).toEqual(['snapshot', 'log', 'log', 'log', 'update', 'log']);
    expect(websocket.resumed).toEqual([]);
  });

  it('ends the run with its error when REST answers 404, without waiting for the transport', async () => {
    const { service, net, lastChange } = harness({ options: { connectTimeoutMs: SLOW, raceAfterMs: null } });
    const seen = record(service, RUN);
    await flushMicrotasks();
    net
      .to('/progress')[0]
      ?.respond(
        Response.json({ error: { code: 'RUN_NOT_FOUND', message: 'run run_a not found' } }, { status: 404 }),
      );
    await flushMicrotasks();
    expect(seen.events).toEqual([
      { run_id: RUN, type: 'error', error: { code: 'RUN_NOT_FOUND', message: 'run run_a not found' } },
    ]);
    expect(lastChange()).toMatchObject({ state: 'idle' });
  });

  it('can be turned off', () => {
    const { service, net } = harness({ options: { openingFetch: false } });
    record(service, RUN);
    expect(net.to('/progress')).toHaveLength(0);
  });
});

describe('racing a silent method (happy eyeballs)', () => {
  it('starts sse beside a silent websocket and carries the runs on whichever delivers first', async () => {
    const { service, factory, clock } = harness({
      options: { connectTimeoutMs: SLOW, raceAfterMs: 500, openingFetch: false },
    });
    const seen = record(service, RUN);
    const websocket = factory.last('websocket');
    clock.advance(499);
    expect(factory.methods()).toEqual(['websocket']);
    clock.advance(1);
    expect(factory.methods()).toEqual(['websocket', 'sse']);
    factory.last('sse').emit(snapshotEvent(RUN, 2));
    await flushMicrotasks();
    expect(seen.methods).toEqual(['sse']);
    expect(service.getStats().fallbacks).toBe(1);
    // The slow websocket is still trying; when it delivers, the service switches up to it.
    expect(websocket.closed).toBe(false);
    websocket.emit(snapshotEvent(RUN, 2));
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('websocket');
    expect(factory.last('sse').closed).toBe(true);
    expect(service.getStats()).toMatchObject({ upgrades: 1, duplicatesDropped: 1 });
  });

  it('counts no fallback when the raced method wins after all', async () => {
    const { service, factory, clock } = harness({
      options: { connectTimeoutMs: SLOW, raceAfterMs: 500, openingFetch: false },
    });
    record(service, RUN);
    clock.advance(500);
    factory.last('websocket').emit(snapshotEvent(RUN, 2));
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('websocket');
    expect(factory.last('sse').closed).toBe(true);
    expect(service.getStats()).toMatchObject({ fallbacks: 0, upgrades: 0 });
  });

  it('races down to polling when sse is held back too, and keeps it when both time out', async () => {
    const { service, factory, clock } = harness({ options: { raceAfterMs: 500, openingFetch: false } });
    record(service, RUN);
    clock.advance(1000);
    expect(factory.methods()).toEqual(['websocket', 'sse', 'polling']);
    factory.last('polling').emit(snapshotEvent(RUN, 1));
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('polling');
    clock.advance(2000);
    await flushMicrotasks();
    expect(factory.last('websocket').closed).toBe(true);
    expect(factory.last('sse').closed).toBe(true);
    expect(service.getConnectionMethod()).toBe('polling');
  });

  it('does not race a method that is replaying logs', async () => {
    const { service, factory, clock } = harness({
      options: { connectTimeoutMs: SLOW, raceAfterMs: 500, openingFetch: false },
    });
    record(service, RUN, { since: 0 });
    factory.last('websocket').emit(logEvent(RUN, 1));
    clock.advance(600);
    expect(factory.methods()).toEqual(['websocket']);
  });
});

describe('the connection method and the history', () => {
  it('is set before the replayed logs that come before the snapshot are delivered', async () => {
    const { service, factory } = harness({ options: { openingFetch: false } });
    const seen = record(service, RUN, { since: 0 });
    const websocket = factory.last('websocket');
    expect(websocket.cursorsAtConnect).toEqual({ [RUN]: 0 });
    websocket.emit(logEvent(RUN, 1));
    websocket.emit(logEvent(RUN, 2));
    websocket.emit(snapshotEvent(RUN, 3));
    await flushMicrotasks();
    expect(typesOf(seen.events)).toEqual(['log', 'log', 'snapshot']);
    expect(seen.methods).toEqual(['websocket', 'websocket', 'websocket']);
  });

  it('replays history over REST too, then de-duplicates the transport’s replay', async () => {
    const { service, factory, net } = harness({ options: { connectTimeoutMs: SLOW, raceAfterMs: null } });
    const seen = record(service, RUN, { history: true });
    await flushMicrotasks();
    expect(net.to('/progress')[0]?.url).toContain('since=0');
    net.to('/progress')[0]?.respond(progress(3, [logEvent(RUN, 1), logEvent(RUN, 2)]));
    await flushMicrotasks();
    const websocket = factory.last('websocket');
    websocket.emit(logEvent(RUN, 1));
    websocket.emit(logEvent(RUN, 2));
    websocket.emit(snapshotEvent(RUN, 3));
    websocket.emit(logEvent(RUN, 4));
    expect(typesOf(seen.events)).toEqual(['log', 'log', 'snapshot', 'log']);
    expect(seqsOf(seen.events)).toEqual([1, 2, 3, 4]);
  });

  it('refuses a cursor that is not a seq', () => {
    const { service } = harness();
    expect(() => service.subscribeToRun(RUN, () => {}, { since: -1 })).toThrow(
      expect.objectContaining({ code: 'INVALID_INPUT' }),
    );
  });
});
