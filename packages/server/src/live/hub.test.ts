import { applyDeltaPatch, type RunEvent, type RunSnapshot, type SnapshotEvent } from '@runcast/protocol';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Principal } from '../auth/principal.js';
import type { BusMessage } from '../bus/bus.js';
import { MemoryBus } from '../bus/memory.js';
import { Metrics } from '../metrics.js';
import { RunService } from '../runs/run-service.js';
import { toSnapshot } from '../runs/snapshot.js';
import type { SqliteStore } from '../store/sqlite.js';
import type { RunRecord } from '../store/store.js';
import { type HubWorld, hubWorld } from '../test-support/hub-world.js';
import type { EncodedEvent } from './encoded-event.js';
import { Hub, type Opening } from './hub.js';
import type { DisconnectReason, RunFailure, Sink } from './subscriber.js';

/** An Opening that records what a subscription's opening wrote. */
class RecordingOpening {
  logs: number[][] = [];
  snapshot: SnapshotEvent | undefined;
  live: boolean | undefined;
  constructor(private readonly onPage: () => void = () => {}) {}
  writeLogs(events: readonly EncodedEvent[]) {
    this.logs.push(events.map((e) => e.seq));
    this.onPage();
  }
  get replayed(): number[] {
    return this.logs.flat();
  }
  asOpening(): Opening {
    return {
      logs: (events) => this.writeLogs(events),
      snapshot: (event, live) => {
        this.snapshot = event;
        this.live = live;
      },
    };
  }
}

class RecordingSink implements Sink {
  events: EncodedEvent[] = [];
  /** The seqs of each write. */
  writes: number[][] = [];
  busy = false;
  /** Called on every write (a test advances its clock with it). */
  onWrite: () => void = () => {};
  closedWith: DisconnectReason | undefined;
  failed: { runId: string; code: string }[] = [];
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
  runFailed(runId: string, failure: RunFailure) {
    this.failed.push({ runId, code: failure.code });
  }
  close(reason: DisconnectReason) {
    this.closedWith = reason;
  }
}

const nextTick = () => new Promise<void>((resolve) => setImmediate(resolve));
/** Turns the event loop until `condition` holds (at most 200 turns). */
async function until(condition: () => boolean): Promise<void> {
  for (let turn = 0; turn < 200 && !condition(); turn++) await nextTick();
  expect(condition()).toBe(true);
}
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

  let world: HubWorld;

  beforeEach(async () => {
    world = await hubWorld();
    ({ store, runs, hub, runId } = world);
  });
  afterEach(() => world.close());

  async function subscribed(transport: 'websocket' | 'sse', since?: number) {
    const sink = new RecordingSink(transport);
    const subscriber = hub.attach(sink);
    const opening = new RecordingOpening();
    const run = await hub.open(subscriber, runId, since, opening.asOpening());
    return { sink, subscriber, opening, run };
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
    const seq = a.run?.seq ?? 0;
    // What the store does with a group commit: one publish per commit, one after another.
    hub.publish([updateOf(runId, seq + 1)]);
    hub.publish([logOf(runId, seq + 2)]);
    hub.publish([updateOf(runId, seq + 3)]);
    hub.publish([updateOf(runId, seq + 4)]);
    expect(a.sink.writes).toEqual([]);
    await jobDone();
    expect(a.sink.writes).toEqual([[seq + 2, seq + 4]]);
  });

  it("writes another node's events with the JSON they arrived as, not encoded again", async () => {
    const a = await subscribed('sse');
    const seq = a.run?.seq ?? 0;
    const log = logOf(runId, seq + 1);
    // As the bus hands over a commit from another node: each event beside its JSON text.
    const arrived = `{"run_id":"${runId}","seq":${seq + 1},"type":"log","at":"${AT}","log":{"message":"x","level":"info"}}`;
    hub.publish([log], [arrived]);
    await jobDone();
    expect(a.sink.events.map((e) => e.json)).toEqual([arrived]);
    expect(a.sink.events[0]?.sse).toBe(`id: ${seq + 1}\nevent: log\ndata: ${arrived}\n\n`);
    // Without it, the event is encoded here.
    hub.publish([logOf(runId, seq + 2)]);
    await jobDone();
    expect(a.sink.events[1]?.json).toBe(JSON.stringify(logOf(runId, seq + 2)));
  });

  it('paces a fan-out that saturates the server, conflating updates meanwhile', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout'] });
    let clockMs = 1_000;
    const paced = new Hub(new MemoryBus(), runs, new Metrics(), {
      maxQueuedBytes: 1_000_000,
      nowMs: () => clockMs,
    });
    try {
      const sink = new RecordingSink('websocket');
      // Every flush takes 40 ms.
      sink.onWrite = () => {
        clockMs += 40;
      };
      const subscriber = paced.attach(sink);
      const seq =
        (await paced.open(subscriber, runId, undefined, new RecordingOpening().asOpening()))?.seq ?? 0;

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
    const { opening, run } = await subscribed('sse', 2);
    expect(opening.replayed).toEqual([3, 4, 5]);
    expect(run?.seq).toBe(5);
    expect(opening.snapshot?.seq).toBe(5);
  });

  it('does not lose an event committed while the subscription opens', async () => {
    const sink = new RecordingSink('sse');
    const subscriber = hub.attach(sink);
    const opening = new RecordingOpening();
    const opened = hub.open(subscriber, runId, 0, opening.asOpening());
    const committed = runs.appendLogs(runId, [{ level: 'info', message: 'during' }]);
    await opened;
    await committed;
    await nextTick();
    const seen = [...opening.replayed, ...sink.events.map((e) => e.seq)];
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

  /**
   * A Hub replaying `pageEvents` logs per page, `logs` logs committed, and an opening from 0 on a
   * connection that is full after every page until the test drains it.
   */
  async function pagedOpening(pageEvents: number, logs: number) {
    const paged = new Hub(new MemoryBus(), runs, new Metrics(), {
      maxQueuedBytes: 1_000_000,
      replayPageEvents: pageEvents,
    });
    for (let i = 0; i < logs; i++) await runs.appendLogs(runId, [{ level: 'info', message: `m${i}` }]);
    const sink = new RecordingSink('sse');
    const subscriber = paged.attach(sink);
    const opening = new RecordingOpening(() => {
      sink.busy = true;
    });
    const opened = paged.open(subscriber, runId, 0, opening.asOpening());
    await until(() => opening.logs.length === 1);
    return { paged, sink, subscriber, opening, opened };
  }

  it('replays a page at a time, the next only once the connection took the last', async () => {
    const { paged, sink, subscriber, opening, opened } = await pagedOpening(3, 7);
    try {
      // A client that does not read holds one page, however long the history.
      await nextTick();
      await nextTick();
      expect(opening.logs).toEqual([[1, 2, 3]]);
      for (const expected of [2, 3]) {
        sink.busy = false;
        subscriber.flush();
        await until(() => opening.logs.length === expected);
      }
      expect(await opened).toMatchObject({ seq: 7 });
      expect(opening.logs).toEqual([[1, 2, 3], [4, 5, 6], [7]]);
      expect(opening.snapshot).toMatchObject({ type: 'snapshot', seq: 7 });
    } finally {
      paged.close();
    }
  });

  it('stops a replay whose connection closed, and leaves nothing behind', async () => {
    const { paged, subscriber, opening, opened } = await pagedOpening(2, 6);
    try {
      paged.detach(subscriber);
      expect(await opened).toBeUndefined();
      expect(opening.snapshot).toBeUndefined();
      expect(paged.stats()).toEqual({ subscribers: 0, rooms: 0, subscriptions: 0, waiters: 0 });
    } finally {
      paged.close();
    }
  });

  it('refuses more runs, and more openings at once, than a connection may have', async () => {
    const strict = new Hub(new MemoryBus(), runs, new Metrics(), {
      maxQueuedBytes: 1_000_000,
      maxRunsPerConnection: 1,
    });
    try {
      const other = (await runs.create({ project_id: 'prj_1', kind: 'external', created_by: 'usr_1' }))
        .run_id;
      const subscriber = strict.attach(new RecordingSink('websocket'));
      await strict.open(subscriber, runId, undefined, new RecordingOpening().asOpening());
      await expect(
        strict.open(subscriber, other, undefined, new RecordingOpening().asOpening()),
      ).rejects.toMatchObject({ code: 'RATE_LIMITED' });
      // Opening the same run again starts it over rather than counting twice.
      await expect(
        strict.open(subscriber, runId, 0, new RecordingOpening().asOpening()),
      ).resolves.toMatchObject({ run_id: runId });
    } finally {
      strict.close();
    }
  });

  describe('when access ends', () => {
    const bus = new MemoryBus();
    let guarded: Hub;
    let readable: boolean;
    const user = (sessionId: string, expiresAtMs = Date.now() + 3_600_000): Principal => ({
      kind: 'user',
      user: { user_id: 'usr_1', username: 'u', role: 'operator', password_hash: 'x', created_at: AT },
      sessionId,
      via: 'bearer',
      expiresAtMs,
    });

    beforeEach(() => {
      readable = true;
      guarded = new Hub(bus, runs, new Metrics(), {
        maxQueuedBytes: 1_000_000,
        canRead: async () => readable,
      });
    });
    afterEach(() => guarded.close());

    async function following(principal: Principal) {
      const sink = new RecordingSink('websocket');
      const subscriber = guarded.attach(sink, principal);
      await guarded.open(subscriber, runId, undefined, new RecordingOpening().asOpening());
      return { sink, subscriber };
    }

    it('ends the connections of a session that ended, and only those', async () => {
      const ended = await following(user('ses_a'));
      const other = await following(user('ses_b'));
      bus.publish({ type: 'directory', change: { kind: 'session-ended', session_id: 'ses_a' } });
      expect(ended.sink.failed).toEqual([{ runId, code: 'UNAUTHORIZED' }]);
      expect(ended.sink.closedWith).toBe('ACCESS_ENDED');
      expect(other.sink.closedWith).toBeUndefined();
      guarded.publish([logOf(runId, 1)]);
      await nextTick();
      expect(ended.sink.events).toEqual([]);
      expect(other.sink.events.map((e) => e.seq)).toEqual([1]);
    });

    it('ends a run whose project the user may no longer read, after asking again', async () => {
      const member = await following(user('ses_a'));
      readable = true;
      bus.publish({
        type: 'directory',
        change: { kind: 'membership-changed', project_id: 'prj_1', user_id: 'usr_1' },
      });
      await nextTick();
      expect(member.sink.failed).toEqual([]);
      readable = false;
      bus.publish({
        type: 'directory',
        change: { kind: 'membership-changed', project_id: 'prj_1', user_id: 'usr_1' },
      });
      await until(() => member.sink.failed.length === 1);
      expect(member.sink.failed).toEqual([{ runId, code: 'RUN_NOT_FOUND' }]);
      expect(member.subscriber.hasRun(runId)).toBe(false);
    });

    it('ends a connection when its login expires', async () => {
      vi.useFakeTimers({ toFake: ['setTimeout', 'Date'] });
      try {
        const expiring = await following(user('ses_a', Date.now() + 60_000));
        vi.advanceTimersByTime(59_000);
        expect(expiring.sink.closedWith).toBeUndefined();
        vi.advanceTimersByTime(1_000);
        expect(expiring.sink.failed).toEqual([{ runId, code: 'UNAUTHORIZED' }]);
        expect(expiring.sink.closedWith).toBe('ACCESS_ENDED');
      } finally {
        vi.useRealTimers();
      }
    });

    it('ends the long-polls of a revoked token with its reason', async () => {
      const token: Principal = {
        kind: 'token',
        token: {
          token_id: 'tok_1',
          project_id: 'prj_1',
          name: 't',
          secret_hash: 'x',
          created_by: 'usr_1',
          created_at: AT,
          revoked_at: null,
        },
        via: 'bearer',
      };
      const wait = guarded.wait(runId, 0, 10_000, token);
      bus.publish({ type: 'directory', change: { kind: 'token-revoked', token_id: 'tok_1' } });
      expect(await wait.done).toBe(false);
      expect(wait.ended).toMatchObject({ code: 'UNAUTHORIZED' });
      expect(guarded.stats().waiters).toBe(0);
    });
  });

  describe('over a bus that reorders and drops messages', () => {
    /** Passes `run-events` on late (out of order) or never; everything else as is. */
    class UnreliableBus extends MemoryBus {
      private seed = 42;
      dropped = 0;
      reordered = 0;
      private random(): number {
        // A fixed sequence: the same messages are dropped and reordered on every run.
        this.seed = (this.seed * 1_103_515_245 + 12_345) % 2 ** 31;
        return this.seed / 2 ** 31;
      }
      override publish(message: BusMessage): void {
        if (message.type !== 'run-events') {
          super.publish(message);
          return;
        }
        const roll = this.random();
        if (roll < 0.2) {
          this.dropped++;
          return;
        }
        if (roll < 0.5) {
          this.reordered++;
          const turns = 1 + Math.floor(this.random() * 3);
          const later = (left: number): void => {
            if (left === 0) super.publish(message);
            else setImmediate(() => later(left - 1));
          };
          later(turns);
          return;
        }
        super.publish(message);
      }
    }

    it('catches up from the store on resync when every message was lost', async () => {
      const bus = new MemoryBus();
      // A RunService whose messages go nowhere: the Hub hears of nothing but the resync.
      const silent = new RunService(store, new MemoryBus());
      const deaf = new Hub(bus, silent, new Metrics(), { maxQueuedBytes: 1_000_000 });
      try {
        const sink = new RecordingSink('sse');
        const subscriber = deaf.attach(sink);
        await deaf.open(subscriber, runId, 0, new RecordingOpening().asOpening());
        await silent.updateProgress(runId, { status: 'RUNNING' });
        await silent.appendLogs(runId, [
          { level: 'info', message: 'a' },
          { level: 'info', message: 'b' },
        ]);
        await nextTick();
        expect(sink.events).toEqual([]);
        bus.publish({ type: 'resync' });
        await until(() => sink.events.length === 3);
        expect(sink.events.map((e) => [e.seq, e.event.type])).toEqual([
          [1, 'update'],
          [2, 'log'],
          [3, 'log'],
        ]);
        expect(sink.events[0]?.event).toMatchObject({ snapshot: { status: 'RUNNING', seq: 1 } });
      } finally {
        deaf.close();
      }
    });

    it('delivers every log exactly once, in order, and the final state', async () => {
      const bus = new UnreliableBus();
      const unreliable = new RunService(store, bus);
      const chaotic = new Hub(bus, unreliable, new Metrics(), { maxQueuedBytes: 10_000_000 });
      try {
        const run = await unreliable.create({ project_id: 'prj_1', kind: 'external', created_by: 'usr_1' });
        const sinks = ['websocket', 'sse', 'websocket'].map((transport) => {
          const sink = new RecordingSink(transport as 'websocket' | 'sse');
          return { sink, subscriber: chaotic.attach(sink) };
        });
        // The last one takes deltas: each must apply to the state it holds.
        for (const [index, { subscriber }] of sinks.entries()) {
          await chaotic.open(subscriber, run.run_id, 0, new RecordingOpening().asOpening(), {
            delta: index === sinks.length - 1,
          });
        }
        await unreliable.updateProgress(run.run_id, { status: 'RUNNING' });
        const logs = 300;
        for (let i = 0; i < logs; i++) {
          await unreliable.appendLogs(run.run_id, [{ level: 'info', message: `line ${i}` }]);
          if (i % 7 === 0) await unreliable.updateProgress(run.run_id, { progress: { percentage: i / 3 } });
          if (i % 25 === 0) await nextTick();
        }
        await unreliable.updateProgress(run.run_id, { status: 'COMPLETED' });
        // What a dead listener's replacement does: catch up from the store.
        bus.publish({ type: 'resync' });
        for (const { sink } of sinks) {
          await until(() => sink.events.some((e) => e.isTerminal));
          const seqs = sink.events.map((e) => e.seq);
          expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
          expect(new Set(seqs).size).toBe(seqs.length);
          const messages = sink.events.flatMap((e) => (e.event.type === 'log' ? [e.event.log.message] : []));
          expect(messages).toEqual(Array.from({ length: logs }, (_, i) => `line ${i}`));
          let state: { seq: number; snapshot: unknown } | undefined;
          for (const { event } of sink.events) {
            if ('patch' in event) {
              expect(event.base_seq).toBe(state?.seq);
              state = { seq: event.seq, snapshot: applyDeltaPatch(state?.snapshot as RunSnapshot, event) };
            } else if ('snapshot' in event) {
              state = { seq: event.seq, snapshot: event.snapshot };
            }
          }
          expect(state?.snapshot).toEqual(toSnapshot((await unreliable.get(run.run_id)) as RunRecord));
        }
        expect(sinks[2]?.sink.events.some(({ event }) => 'patch' in event)).toBe(true);
        expect(bus.dropped).toBeGreaterThan(20);
        expect(bus.reordered).toBeGreaterThan(20);
      } finally {
        chaotic.close();
      }
    });
  });
});
