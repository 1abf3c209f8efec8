import {
  applyDeltaPatch,
  type DeltaUpdateEvent,
  type RunEvent,
  type RunSnapshot,
  type SnapshotEvent,
} from '@runcast/protocol';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MemoryBus } from '../bus/memory.js';
import { Metrics } from '../metrics.js';
import { type HubWorld, hubWorld } from '../test-support/hub-world.js';
import { EncodedEvent, type Frame } from './encoded-event.js';
import { Hub } from './hub.js';
import { type DisconnectReason, type Sink, Subscriber, type SubscriberHooks } from './subscriber.js';

// Delta updates: an update goes out as a merge patch only to a subscription that asked for it and
// whose client holds the state the patch applies to; every other update goes out whole.

class FrameSink implements Sink {
  readonly transport = 'websocket' as const;
  busy = false;
  frames: Frame[] = [];
  encoded: EncodedEvent[] = [];
  isBusy() {
    return this.busy;
  }
  write(events: readonly EncodedEvent[]) {
    this.encoded.push(...events);
    this.frames.push(...events.map((event) => event.event));
  }
  runEnded() {}
  runFailed() {}
  close(_reason: DisconnectReason) {}
}

const quietHooks: SubscriberHooks = {
  markDirty() {},
  onWritten() {},
  onConflated() {},
  onOverflow() {},
  onRunEnded() {},
};

const AT = '2026-01-01T00:00:00.000Z';
const stateAt = (runId: string, seq: number, percentage: number) =>
  ({ run_id: runId, status: 'RUNNING', progress: { percentage }, seq }) as unknown as RunSnapshot;

/** Updates of one run, each with the previous one as its base, as the Hub encodes them. */
function updates(runId: string, seqs: readonly number[]): EncodedEvent[] {
  let base: { seq: number; snapshot: RunSnapshot } | undefined;
  return seqs.map((seq) => {
    const snapshot = stateAt(runId, seq, seq * 10);
    const encoded = new EncodedEvent({ run_id: runId, seq, type: 'update', at: AT, snapshot }, { base });
    base = { seq, snapshot };
    return encoded;
  });
}

/** What each frame is: `full@seq` or `delta@seq<-base`. */
const forms = (frames: readonly Frame[]) =>
  frames.map((frame) =>
    'patch' in frame
      ? `delta@${frame.seq}<-${frame.base_seq}`
      : `${'snapshot' in frame ? 'full' : 'log'}@${frame.seq}`,
  );

describe('Subscriber: delta updates', () => {
  function opened(delta: boolean, runIds: readonly string[] = ['r']) {
    const sink = new FrameSink();
    const subscriber = new Subscriber(sink, quietHooks, 1_000_000);
    for (const runId of runIds) {
      subscriber.addRun(runId);
      subscriber.openRun(runId, 0, delta);
    }
    return { sink, subscriber };
  }

  it('sends the first update after the opening whole, then deltas against the update before', () => {
    const { sink, subscriber } = opened(true);
    for (const update of updates('r', [1, 2, 3])) {
      subscriber.push(update);
      subscriber.flush();
    }
    expect(forms(sink.frames)).toEqual(['full@1', 'delta@2<-1', 'delta@3<-2']);
    expect(sink.frames[1]).toEqual({
      run_id: 'r',
      seq: 2,
      type: 'update',
      at: AT,
      base_seq: 1,
      // seq and updated_at are the frame's own.
      patch: { progress: { percentage: 20 } },
    });
  });

  it('sends whole updates to a subscription that did not ask for deltas', () => {
    const { sink, subscriber } = opened(false);
    for (const update of updates('r', [1, 2, 3])) {
      subscriber.push(update);
      subscriber.flush();
    }
    expect(forms(sink.frames)).toEqual(['full@1', 'full@2', 'full@3']);
  });

  it('sends whole the update that follows one conflation skipped', () => {
    const { sink, subscriber } = opened(true);
    const [u1, u2, u3, u4] = updates('r', [1, 2, 3, 4]);
    subscriber.push(u1 as EncodedEvent);
    subscriber.flush();
    sink.busy = true;
    subscriber.push(u2 as EncodedEvent);
    subscriber.push(u3 as EncodedEvent); // replaces 2: the client never holds state 2
    sink.busy = false;
    subscriber.flush();
    subscriber.push(u4 as EncodedEvent);
    subscriber.flush();
    expect(forms(sink.frames)).toEqual(['full@1', 'full@3', 'delta@4<-3']);
  });

  it('keeps the state of each run apart on a connection that carries several', () => {
    const { sink, subscriber } = opened(true, ['a', 'b']);
    const [a1, a2, a3] = updates('a', [1, 2, 3]);
    const [b1, b2] = updates('b', [1, 2]);
    // a1 and b1 open each run; a2 then skips a's state only.
    for (const event of [a1, b1]) subscriber.push(event as EncodedEvent);
    subscriber.flush();
    sink.busy = true;
    subscriber.push(a2 as EncodedEvent);
    subscriber.push(a3 as EncodedEvent);
    subscriber.push(b2 as EncodedEvent);
    sink.busy = false;
    subscriber.flush();
    expect(forms(sink.frames)).toEqual(['full@1', 'full@1', 'full@3', 'delta@2<-1']);
    expect(sink.frames.map((frame) => frame.run_id)).toEqual(['a', 'b', 'a', 'b']);
  });

  it('sends whole an update the Hub has no base for, and one a merge patch cannot express', () => {
    const { sink, subscriber } = opened(true);
    const [u1] = updates('r', [1]);
    subscriber.push(u1 as EncodedEvent);
    subscriber.flush();
    const noBase = new EncodedEvent({
      run_id: 'r',
      seq: 2,
      type: 'update',
      at: AT,
      snapshot: stateAt('r', 2, 5),
    });
    subscriber.push(noBase);
    subscriber.flush();
    const cleared = { ...stateAt('r', 3, 5), progress: null } as RunSnapshot;
    const base = { seq: 2, snapshot: stateAt('r', 2, 5) };
    const withNull = new EncodedEvent(
      { run_id: 'r', seq: 3, type: 'update', at: AT, snapshot: { ...cleared, stage: null } as RunSnapshot },
      { base: { ...base, snapshot: { ...base.snapshot, stage: 'EXPORT' } as RunSnapshot } },
    );
    subscriber.push(withNull);
    subscriber.flush();
    expect(forms(sink.frames)).toEqual(['full@1', 'full@2', 'full@3']);
  });

  it('encodes a delta once, for every subscriber that writes it', () => {
    const [u1, u2] = updates('r', [1, 2]);
    const sinks = [opened(true), opened(true)].map(({ sink, subscriber }) => {
      for (const update of [u1, u2]) {
        subscriber.push(update as EncodedEvent);
        subscriber.flush();
      }
      return sink;
    });
    expect(sinks[0]?.encoded[1]).toBe(sinks[1]?.encoded[1]);
    expect(sinks[0]?.encoded[1]).toBe(u2?.delta);
    expect(sinks[0]?.encoded[1]?.sse).toContain('"base_seq":1');
  });
});

describe('Hub: delta updates', () => {
  // Each test's world; its run is the one every subscription follows.
  let world: HubWorld;
  beforeEach(async () => {
    world = await hubWorld();
  });
  afterEach(() => world.close());

  async function subscribed(delta: boolean, into: Hub = world.hub) {
    const sink = new FrameSink();
    const subscriber = into.attach(sink);
    let opening: SnapshotEvent | undefined;
    await into.open(
      subscriber,
      world.runId,
      undefined,
      { logs() {}, snapshot: (event) => (opening = event) },
      { delta },
    );
    return { sink, opening: opening as SnapshotEvent };
  }

  /** The states a client rebuilds from the frames: a delta applies only to the state it names. */
  function rebuilt(opening: SnapshotEvent, frames: readonly Frame[]): RunSnapshot {
    let state = { seq: opening.seq, snapshot: opening.snapshot };
    for (const frame of frames) {
      if ('patch' in frame) {
        expect(frame.base_seq).toBe(state.seq);
        state = { seq: frame.seq, snapshot: applyDeltaPatch(state.snapshot, frame) };
      } else if ('snapshot' in frame) {
        state = { seq: frame.seq, snapshot: frame.snapshot };
      }
    }
    return state.snapshot;
  }

  it('computes the patch against the previous update and gives the subscribers that asked for it deltas', async () => {
    const { runs, runId } = world;
    const a = await subscribed(true);
    const b = await subscribed(true);
    const plain = await subscribed(false);
    await runs.updateProgress(runId, { status: 'RUNNING', progress: { percentage: 1, message: 'start' } });
    await runs.appendLogs(runId, [{ level: 'info', message: 'hello' }]);
    await runs.updateProgress(runId, { progress: { percentage: 2, message: 'start' } });
    await runs.updateProgress(runId, { progress: { percentage: 3, message: 'start' } });
    await new Promise((resolve) => setImmediate(resolve));
    expect(forms(a.sink.frames)).toEqual(['full@1', 'log@2', 'delta@3<-1', 'delta@4<-3']);
    expect(forms(plain.sink.frames)).toEqual(['full@1', 'log@2', 'full@3', 'full@4']);
    const delta = a.sink.frames[3] as DeltaUpdateEvent;
    // Only what changed, less the seq and updated_at the frame's seq and at already say.
    expect(Object.keys(delta.patch)).toEqual(['progress']);
    expect(delta.at).toBe((plain.sink.frames[3] as RunEvent & { snapshot: RunSnapshot }).snapshot.updated_at);
    expect(b.sink.encoded[3]).toBe(a.sink.encoded[3]);
    const now = await runs.get(runId);
    expect(rebuilt(a.opening, a.sink.frames)).toEqual({
      ...(plain.sink.frames[3] as RunEvent & { snapshot: RunSnapshot }).snapshot,
    });
    expect(rebuilt(a.opening, a.sink.frames).seq).toBe(now?.seq);
  });

  it('sends whole the update synthesized for a gap, and the update after it', async () => {
    const { runs, runId } = world;
    // The Hub hears only what the test publishes; the store has every commit.
    const deaf = new Hub(new MemoryBus(), runs, new Metrics(), { maxQueuedBytes: 1_000_000 });
    const publish = (event: RunEvent) => deaf.publish([event]);
    const update = (snapshot: RunSnapshot): RunEvent => ({
      run_id: runId,
      seq: snapshot.seq,
      type: 'update',
      at: snapshot.updated_at,
      snapshot,
    });
    const settled = async (count: number) => {
      for (let turn = 0; turn < 50 && sink.frames.length < count; turn++) {
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    const { sink, opening } = await subscribed(true, deaf);
    try {
      publish(update(await runs.updateProgress(runId, { status: 'RUNNING', progress: { percentage: 1 } })));
      await settled(1);
      publish(update(await runs.updateProgress(runId, { progress: { percentage: 2 } })));
      await settled(2);
      await runs.updateProgress(runId, { progress: { percentage: 3 } }); // never heard of here
      const seqs = await runs.appendLogs(runId, [{ level: 'info', message: 'after the gap' }]);
      const logged = await runs.replay(runId, seqs.first_seq - 1, 10);
      publish(logged?.events[0] as RunEvent);
      await settled(4);
      publish(update(await runs.updateProgress(runId, { progress: { percentage: 5 } })));
      await settled(5);
      const last = await runs.updateProgress(runId, { progress: { percentage: 6 } });
      publish(update(last));
      await settled(6);
      // 3 is the state as read from the store: no base for 5, though the client holds a state 3.
      expect(forms(sink.frames)).toEqual(['full@1', 'delta@2<-1', 'full@3', 'log@4', 'full@5', 'delta@6<-5']);
      expect(rebuilt(opening, sink.frames)).toEqual(last);
    } finally {
      deaf.close();
    }
  });
});
