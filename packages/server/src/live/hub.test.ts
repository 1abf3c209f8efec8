import type { RunEvent } from '@runcast/protocol';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { MemoryBus } from '../bus/memory.js';
import { Metrics } from '../metrics.js';
import { RunService } from '../runs/run-service.js';
import { SqliteStore } from '../store/sqlite.js';
import type { EncodedEvent } from './encoded-event.js';
import { Hub } from './hub.js';
import type { DisconnectReason, Sink } from './subscriber.js';

class RecordingSink implements Sink {
  events: EncodedEvent[] = [];
  /** The seqs of each write. */
  writes: number[][] = [];
  busy = false;
  /** Called on every write (a test advances its clock with it). */
  onWrite: () => void = () => {};
  closedWith: DisconnectReason | undefined;
  constructor(readonly transport: 'websocket' | 'sse') {}
  isBusy() {
    return this.busy;
  }
  write(events: readonly EncodedEvent[]) {
    this.events.push(...events);
    this.writes.push(events.map((e) => e.seq));
    this.onWrite();
  }
  runEnded() {}
  close(reason: DisconnectReason) {
    this.closedWith = reason;
  }
}

const nextTick = () => new Promise<void>((resolve) => setImmediate(resolve));
const jobDone = () => new Promise<void>((resolve) => process.nextTick(resolve));
const AT = new Date().toISOString();
const updateOf = (runId: string, seq: number) =>
  ({ run_id: runId, seq, type: 'update', at: AT, snapshot: { status: 'RUNNING' } }) as RunEvent;
const logOf = (runId: string, seq: number) =>
  ({ run_id: runId, seq, type: 'log', at: AT, log: { level: 'info', message: 'x' } }) as RunEvent;

describe('Hub', () => {
  let store: SqliteStore;
  let runs: RunService;
  let hub: Hub;
  let runId: string;

  beforeEach(async () => {
    store = new SqliteStore({ file: ':memory:', eventRetention: 100 });
    const bus = new MemoryBus();
    runs = new RunService(store, bus);
    hub = new Hub(bus, runs, new Metrics(), { maxQueuedBytes: 1_000_000, replayLimit: 100 });
    const at = new Date().toISOString();
    await store.createUser({
      user_id: 'usr_1',
      username: 'u',
      role: 'admin',
      password_hash: 'x',
      created_at: at,
    });
    await store.createProject({ project_id: 'prj_1', name: 'p', created_by: 'usr_1', created_at: at });
    runId = (await runs.create({ project_id: 'prj_1', kind: 'external', created_by: 'usr_1' })).run_id;
  });
  afterEach(async () => {
    hub.close();
    await store.close();
  });

  async function subscribed(transport: 'websocket' | 'sse', since?: number) {
    const sink = new RecordingSink(transport);
    const subscriber = hub.attach(sink);
    const replay = await hub.subscribe(subscriber, runId, since);
    subscriber.openRun(runId, replay?.run.seq ?? 0);
    return { sink, subscriber, replay };
  }

  it('fans one encoded event out to every transport', async () => {
    const a = await subscribed('websocket');
    const b = await subscribed('sse');
    await runs.appendLogs(runId, [{ level: 'info', message: 'hello' }]);
    await nextTick();
    expect(a.sink.events.map((e) => e.seq)).toEqual([1]);
    // The very same object: encoded once, whatever the number of subscribers.
    expect(b.sink.events[0]).toBe(a.sink.events[0]);
  });

  it('writes a commit to every subscriber before the event loop moves on, in one write each', async () => {
    const a = await subscribed('websocket');
    const b = await subscribed('sse');
    await runs.appendLogs(runId, [
      { level: 'info', message: 'one' },
      { level: 'info', message: 'two' },
      { level: 'info', message: 'three' },
    ]);
    // Not put off to a later turn of the event loop (`setImmediate`).
    await jobDone();
    expect(a.sink.writes).toEqual([[1, 2, 3]]);
    expect(b.sink.writes).toEqual([[1, 2, 3]]);
  });

  it('writes the commits published together in one write per subscriber, updates conflated', async () => {
    const a = await subscribed('websocket');
    const seq = a.replay?.run.seq ?? 0;
    // What the store does with a group commit: one publish per commit, one after another.
    hub.publish([updateOf(runId, seq + 1)]);
    hub.publish([logOf(runId, seq + 2)]);
    hub.publish([updateOf(runId, seq + 3)]);
    hub.publish([updateOf(runId, seq + 4)]);
    expect(a.sink.writes).toEqual([]);
    await jobDone();
    expect(a.sink.writes).toEqual([[seq + 2, seq + 4]]);
  });

  it('paces a fan-out that saturates the server, conflating updates meanwhile', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout'] });
    let clockMs = 1_000;
    const paced = new Hub(new MemoryBus(), runs, new Metrics(), {
      maxQueuedBytes: 1_000_000,
      replayLimit: 100,
      nowMs: () => clockMs,
    });
    try {
      const sink = new RecordingSink('websocket');
      // Every flush takes 40 ms.
      sink.onWrite = () => {
        clockMs += 40;
      };
      const subscriber = paced.attach(sink);
      const seq = (await paced.subscribe(subscriber, runId, undefined))?.run.seq ?? 0;
      subscriber.openRun(runId, seq);

      // Commits arriving as fast as they are written: four flushes back to back.
      for (let n = 1; n <= 4; n++) {
        paced.publish([updateOf(runId, seq + n)]);
        await jobDone();
      }
      expect(sink.writes).toEqual([[seq + 1], [seq + 2], [seq + 3], [seq + 4]]);

      // Now each flush waits as long as the last one took, and updates conflate meanwhile.
      paced.publish([updateOf(runId, seq + 5)]);
      paced.publish([logOf(runId, seq + 6)]);
      await jobDone();
      paced.publish([updateOf(runId, seq + 7)]);
      await jobDone();
      expect(sink.writes).toHaveLength(4);
      clockMs += 39;
      vi.advanceTimersByTime(39);
      expect(sink.writes).toHaveLength(4);
      clockMs += 1;
      vi.advanceTimersByTime(1);
      expect(sink.writes[4]).toEqual([seq + 6, seq + 7]);

      // A wait that brings one commit only ends the pacing: the next one goes out at once.
      paced.publish([updateOf(runId, seq + 8)]);
      await jobDone();
      expect(sink.writes).toHaveLength(5);
      clockMs += 40;
      vi.advanceTimersByTime(40);
      expect(sink.writes[5]).toEqual([seq + 8]);
      paced.publish([updateOf(runId, seq + 9)]);
      await jobDone();
      expect(sink.writes[6]).toEqual([seq + 9]);
    } finally {
      paced.close();
      vi.useRealTimers();
    }
  });

  it('replays logs after the cursor, read with the snapshot', async () => {
    for (let i = 0; i < 5; i++) await runs.appendLogs(runId, [{ level: 'info', message: `m${i}` }]);
    const { replay } = await subscribed('sse', 2);
    expect(replay?.events.map((e) => e.seq)).toEqual([3, 4, 5]);
    expect(replay?.run.seq).toBe(5);
  });

  it('does not lose an event committed while the subscription opens', async () => {
    const sink = new RecordingSink('sse');
    const subscriber = hub.attach(sink);
    const opening = hub.subscribe(subscriber, runId, 0);
    const committed = runs.appendLogs(runId, [{ level: 'info', message: 'during' }]);
    const replay = await opening;
    await committed;
    subscriber.openRun(runId, replay?.run.seq ?? 0);
    await nextTick();
    const seen = [...(replay?.events.map((e) => e.seq) ?? []), ...sink.events.map((e) => e.seq)];
    expect(seen).toEqual([1]);
  });

  it('wakes long-polls on commit and forgets them afterwards', async () => {
    const wait = hub.wait(runId, 0, 10_000);
    expect(hub.stats().waiters).toBe(1);
    await runs.updateProgress(runId, { status: 'RUNNING' });
    expect(await wait.done).toBe(true);
    expect(hub.stats().waiters).toBe(0);
    const timedOut = hub.wait(runId, 1, 1);
    expect(await timedOut.done).toBe(false);
  });

  it('leaves nothing behind when connections go', async () => {
    const a = await subscribed('websocket');
    const b = await subscribed('sse');
    hub.detach(a.subscriber);
    hub.detach(b.subscriber);
    hub.detach(b.subscriber);
    expect(hub.stats()).toEqual({ subscribers: 0, rooms: 0, subscriptions: 0, waiters: 0 });
  });

  it('tells every connection to reconnect on shutdown', async () => {
    const a = await subscribed('websocket');
    hub.closeAll('SERVER_SHUTDOWN');
    expect(a.sink.closedWith).toBe('SERVER_SHUTDOWN');
    expect(hub.stats().subscribers).toBe(0);
  });
});
