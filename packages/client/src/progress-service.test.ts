import { afterEach, beforeEach, describe, expect, it, type MockInstance, vi } from 'vitest';
import { RuncastError } from './errors.js';
import { ProgressService, type ProgressServiceOptions } from './progress-service.js';
import type { ReconnectPolicy } from './reconnect-policy.js';
import {
  type ConnectBehaviour,
  FakeClock,
  FakeTransportFactory,
  FakeWakeSignals,
  fakeEnvironment,
  flushMicrotasks,
  logEvent,
  RecordingPolicy,
  runErrorEvent,
  snapshotEvent,
  updateEvent,
} from './test-support/fakes.js';
import type { ConnectionChange, ConnectionMethod, ProgressEvent } from './types.js';

const RUN = 'run_a';
const OTHER = 'run_b';
const TIMEOUTS: Record<ConnectionMethod, number> = { websocket: 1000, sse: 2000, polling: 3000 };
const PROBE_INTERVAL_MS = 30_000;
const RETRY_DELAY_MS = 1000;
const WINDOW_MS = 60_000;

interface SetupOptions {
  behaviours?: Partial<Record<ConnectionMethod, ConnectBehaviour>>;
  options?: Partial<ProgressServiceOptions>;
  policy?: ReconnectPolicy;
  random?: number;
}

let services: ProgressService[] = [];
let consoleError: MockInstance;

beforeEach(() => {
  services = [];
  consoleError = vi.spyOn(console, 'error');
});

afterEach(() => {
  for (const service of services) service.close();
  // Every error a callback or listener throws must reach onListenerError, never the console.
  expect(consoleError).not.toHaveBeenCalled();
  consoleError.mockRestore();
});

function setup(config: SetupOptions = {}) {
  const clock = new FakeClock({ random: config.random ?? 0.5 });
  const wake = new FakeWakeSignals();
  const factory = new FakeTransportFactory(config.behaviours);
  const changes: ConnectionChange[] = [];
  const listenerErrors: unknown[] = [];
  const service = new ProgressService({
    connectTimeoutMs: TIMEOUTS,
    fallbackAfterFailures: 2,
    failureWindowMs: WINDOW_MS,
    upgradeProbeIntervalMs: PROBE_INTERVAL_MS,
    // Racing, the REST opening and failure classification have their own tests (first-snapshot,
    // failure-classification): here every failure counts against its method, one at a time.
    raceAfterMs: null,
    openingFetch: false,
    healthyAfterMs: Number.POSITIVE_INFINITY,
    isServerReachable: () => true,
    reconnectPolicy: config.policy ?? new RecordingPolicy(RETRY_DELAY_MS),
    env: fakeEnvironment(clock, wake),
    createTransport: factory.create,
    onListenerError: (error) => listenerErrors.push(error),
    ...config.options,
  });
  services.push(service);
  service.onConnectionChange((change) => changes.push(change));
  const lastChange = () => changes[changes.length - 1];
  return { clock, wake, factory, service, changes, lastChange, listenerErrors };
}

/** Subscribes a callback that records what it receives. */
function follow(service: ProgressService, runId = RUN) {
  const events: ProgressEvent[] = [];
  const unsubscribe = service.subscribeToRun(runId, (event) => events.push(event));
  return { events, unsubscribe };
}

const seqs = (events: ProgressEvent[]) => events.map((e) => (e.type === 'error' ? 'error' : e.seq));
const types = (events: ProgressEvent[]) => events.map((e) => e.type);

/** Gets a service connected on sse after websocket failed (once, unless the options say otherwise). */
async function onSse(config: SetupOptions = {}) {
  const harness = setup({
    ...config,
    behaviours: { websocket: 'fail', sse: 'open', ...config.behaviours },
    options: { fallbackAfterFailures: 1, ...config.options },
  });
  const follower = follow(harness.service);
  await flushMicrotasks();
  for (let i = 0; i < 5 && harness.service.getConnectionMethod() !== 'sse'; i++) {
    harness.clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
  }
  expect(harness.service.getConnectionMethod()).toBe('sse');
  harness.factory.script('websocket', 'manual');
  harness.factory.script('sse', 'manual');
  return { ...harness, follower, sse: harness.factory.last('sse') };
}

describe('ProgressService fallback', () => {
  it('walks websocket → sse → polling, each after repeated failures', async () => {
    const { service, factory, clock, lastChange } = setup({
      behaviours: { websocket: 'fail', sse: 'fail', polling: 'open' },
    });
    const { events } = follow(service);
    await flushMicrotasks();
    expect(factory.methods()).toEqual(['websocket']);
    expect(lastChange()).toMatchObject({ state: 'reconnecting', method: 'websocket' });

    clock.advance(RETRY_DELAY_MS - 1);
    expect(factory.methods()).toEqual(['websocket']);
    clock.advance(1);
    await flushMicrotasks();
    // The second websocket failure falls back at once, without waiting for the policy.
    expect(factory.methods()).toEqual(['websocket', 'websocket', 'sse']);

    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    expect(factory.methods()).toEqual(['websocket', 'websocket', 'sse', 'sse', 'polling']);
    expect(service.getConnectionMethod()).toBe('polling');
    expect(lastChange()).toMatchObject({ state: 'connected', method: 'polling', reason: 'fallback: error' });
    expect(types(events)).toEqual(['snapshot']);

    // Telemetry: the first transport of each fallback tells the server what it replaced and
    // why; its retries do not report the same fallback again.
    expect(factory.last('websocket').context.fallback).toBeUndefined();
    expect(factory.byMethod('sse')[0]?.context.fallback).toEqual({ from: 'websocket', reason: 'error' });
    expect(factory.last('sse').context.fallback).toBeUndefined();
    expect(factory.last('polling').context.fallback).toEqual({ from: 'sse', reason: 'error' });
    // Every failed attempt was closed; only polling stays open.
    expect(factory.open()).toEqual([factory.last('polling')]);
  });

  it('honours a custom order and skips unknown methods', async () => {
    const { service, factory } = setup({
      behaviours: { sse: 'open' },
      options: { transports: ['sse', 'bogus' as ConnectionMethod, 'polling'] },
    });
    follow(service);
    await flushMicrotasks();
    expect(factory.methods()).toEqual(['sse']);
    expect(service.getConnectionMethod()).toBe('sse');
  });

  it('stays on the last method, retrying it, when it keeps failing', async () => {
    const { service, factory, clock, lastChange } = setup({
      behaviours: { polling: 'fail' },
      options: { transports: ['polling'] },
    });
    follow(service);
    for (let i = 0; i < 4; i++) {
      await flushMicrotasks();
      clock.advance(RETRY_DELAY_MS);
    }
    expect(factory.methods()).toEqual(['polling', 'polling', 'polling', 'polling', 'polling']);
    expect(lastChange()).toMatchObject({ state: 'reconnecting', method: 'polling' });
  });
});

describe.each<ConnectionMethod>(['websocket', 'sse', 'polling'])('a %s attempt', (method) => {
  const order: ConnectionMethod[] = ['websocket', 'sse', 'polling'];
  const before = order.slice(0, order.indexOf(method));
  const next = order[order.indexOf(method) + 1];

  async function reachMethod() {
    const behaviours: Partial<Record<ConnectionMethod, ConnectBehaviour>> = {};
    for (const m of before) behaviours[m] = 'fail';
    const harness = setup({ behaviours, options: { fallbackAfterFailures: 1 } });
    const follower = follow(harness.service);
    await flushMicrotasks();
    const transport = harness.factory.last(method);
    expect(harness.factory.methods()).toEqual([...before, method]);
    expect(transport.connectRunIds).toEqual([RUN]);
    return { ...harness, follower, transport };
  }

  it(`fails after its own timeout (${TIMEOUTS[method]} ms) when connected but silent`, async () => {
    const { factory, clock, transport, lastChange, service } = await reachMethod();
    clock.advance(TIMEOUTS[method] - 1);
    await flushMicrotasks();
    expect(transport.closed).toBe(false);
    expect(factory.created).toHaveLength(before.length + 1);

    clock.advance(1);
    await flushMicrotasks();
    expect(transport.closed).toBe(true);
    expect(service.getConnectionMethod()).toBeNull();
    if (next) {
      expect(factory.last().method).toBe(next);
      expect(factory.last().context.fallback).toEqual({ from: method, reason: 'timeout' });
      expect(lastChange()).toMatchObject({
        state: 'reconnecting',
        method: next,
        reason: 'fallback: timeout',
      });
    } else {
      // The last method has nothing to fall back to: it retries after the policy's delay.
      expect(lastChange()).toMatchObject({ state: 'reconnecting', method, reason: 'timeout: TIMEOUT' });
      clock.advance(RETRY_DELAY_MS);
      expect(factory.methods()).toEqual([...before, method, method]);
    }
  });

  it('is connected by a snapshot just inside the timeout, which then no longer fires', async () => {
    const { clock, transport, lastChange, service, follower } = await reachMethod();
    clock.advance(TIMEOUTS[method] - 1);
    transport.emit(snapshotEvent(RUN, 0));
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe(method);
    expect(lastChange()).toMatchObject({ state: 'connected', method });
    clock.advance(TIMEOUTS[method] * 10);
    expect(transport.closed).toBe(false);
    expect(service.getConnectionMethod()).toBe(method);
    expect(types(follower.events)).toEqual(['snapshot']);
  });
});

describe('ProgressService: one blip versus repeated failures', () => {
  it('reconnects on the same method after the policy delay when dropped once', async () => {
    const policy = new RecordingPolicy(RETRY_DELAY_MS);
    const { service, factory, clock, lastChange } = setup({ behaviours: { websocket: 'open' }, policy });
    follow(service);
    await flushMicrotasks();
    expect(lastChange()).toMatchObject({ state: 'connected', method: 'websocket', reason: null });

    factory.last().drop(new RuncastError('DISCONNECTED', 'transport close'));
    expect(service.getConnectionMethod()).toBeNull();
    expect(lastChange()).toMatchObject({
      state: 'reconnecting',
      method: 'websocket',
      reason: 'closed: DISCONNECTED',
      reconnects: 1,
    });
    expect(policy.contexts).toEqual([
      { previousRetryCount: 0, elapsedMs: 0, retryReason: expect.any(RuncastError) },
    ]);

    clock.advance(RETRY_DELAY_MS - 1);
    expect(factory.created).toHaveLength(1);
    clock.advance(1);
    await flushMicrotasks();
    expect(factory.methods()).toEqual(['websocket', 'websocket']);
    expect(service.getConnectionMethod()).toBe('websocket');
    expect(lastChange()).toMatchObject({ state: 'connected', method: 'websocket', reason: null });
  });

  it('falls back when the method fails again within the window', async () => {
    const { service, factory, clock, lastChange } = setup({ behaviours: { websocket: 'open', sse: 'open' } });
    follow(service);
    await flushMicrotasks();
    factory.last().drop();
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('websocket');

    clock.advance(WINDOW_MS - RETRY_DELAY_MS - 1);
    factory.last().drop();
    // No policy delay: the fallback is tried at once.
    expect(factory.methods()).toEqual(['websocket', 'websocket', 'sse']);
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('sse');
    expect(lastChange()).toMatchObject({ state: 'connected', method: 'sse', reason: 'fallback: closed' });
    expect(factory.last().context.fallback).toEqual({ from: 'websocket', reason: 'closed' });
  });

  it('does not count failures older than the window', async () => {
    const { service, factory, clock } = setup({ behaviours: { websocket: 'open', sse: 'open' } });
    follow(service);
    await flushMicrotasks();
    factory.last().drop();
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();

    clock.advance(WINDOW_MS);
    factory.last().drop();
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    expect(factory.methods()).toEqual(['websocket', 'websocket', 'websocket']);
    expect(service.getConnectionMethod()).toBe('websocket');
  });

  it('counts a failed connect and a drop of the same method together', async () => {
    const { service, factory, clock } = setup({ behaviours: { websocket: 'open', sse: 'open' } });
    follow(service);
    await flushMicrotasks();
    factory.script('websocket', 'fail');
    factory.last().drop();
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    expect(factory.methods()).toEqual(['websocket', 'websocket', 'sse']);
    expect(service.getConnectionMethod()).toBe('sse');
  });

  it('ignores a late close from a transport it already replaced', async () => {
    const policy = new RecordingPolicy(RETRY_DELAY_MS);
    const { service, factory, clock } = setup({ behaviours: { websocket: 'open' }, policy });
    follow(service);
    await flushMicrotasks();
    const first = factory.last();
    first.drop();
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    // A second close of the old transport must not start a second reconnect.
    first.drop();
    clock.advance(RETRY_DELAY_MS * 10);
    await flushMicrotasks();
    expect(factory.created).toHaveLength(2);
    expect(policy.contexts).toHaveLength(1);
    expect(service.getConnectionMethod()).toBe('websocket');
  });
});

describe('ProgressService upgrade probes', () => {
  it('switches up to websocket when the probe delivers a snapshot, closing sse', async () => {
    const { service, factory, clock, sse, changes, lastChange, follower } = await onSse();
    sse.emit(logEvent(RUN, 1));
    const changesBefore = changes.length;

    clock.advance(PROBE_INTERVAL_MS - 1);
    expect(factory.byMethod('websocket')).toHaveLength(1);
    clock.advance(1);
    const probe = factory.last();
    expect(probe.method).toBe('websocket');
    expect(probe.context.fallback).toEqual({ from: 'sse', reason: 'upgrade' });
    expect(probe.cursorsAtConnect).toEqual({ [RUN]: 1 });
    // Probing is invisible until it succeeds.
    expect(changes).toHaveLength(changesBefore);
    expect(service.getConnectionMethod()).toBe('sse');

    probe.emit(snapshotEvent(RUN, 1));
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('websocket');
    expect(lastChange()).toMatchObject({ state: 'connected', method: 'websocket', reason: 'upgrade' });
    expect(sse.closeCalls).toBe(1);
    expect(probe.closed).toBe(false);
    // The opening snapshot repeated the state already delivered: nothing new for the app.
    expect(types(follower.events)).toEqual(['snapshot', 'log']);
    // On the best method there is nothing left to probe.
    clock.advance(PROBE_INTERVAL_MS * 5);
    expect(factory.created).toHaveLength(3);
    expect(clock.pendingTimers()).toBe(0);
  });

  it.each([0, 0.5, 0.999])(
    'stays on sse when a probe fails and probes again after a jittered interval (random %s)',
    async (random) => {
      const { service, factory, clock, sse, changes } = await onSse({ random });
      const intervalMs = PROBE_INTERVAL_MS * (0.5 + random);
      expect(intervalMs).toBeGreaterThanOrEqual(PROBE_INTERVAL_MS * 0.5);
      expect(intervalMs).toBeLessThan(PROBE_INTERVAL_MS * 1.5);
      const changesBefore = changes.length;

      clock.advance(intervalMs - 1);
      expect(factory.byMethod('websocket')).toHaveLength(1);
      clock.advance(1);
      const refused = factory.last('websocket');
      expect(factory.byMethod('websocket')).toHaveLength(2);
      refused.rejectConnect();
      await flushMicrotasks();
      expect(refused.closed).toBe(true);
      expect(sse.closed).toBe(false);
      expect(service.getConnectionMethod()).toBe('sse');

      // The next probe, after another jittered interval, connects but stays silent: it times out.
      clock.advance(intervalMs - 1);
      expect(factory.byMethod('websocket')).toHaveLength(2);
      clock.advance(1);
      const silent = factory.last('websocket');
      expect(factory.byMethod('websocket')).toHaveLength(3);
      clock.advance(TIMEOUTS.websocket);
      await flushMicrotasks();
      expect(silent.closed).toBe(true);
      expect(sse.closed).toBe(false);

      clock.advance(intervalMs);
      expect(factory.byMethod('websocket')).toHaveLength(4);
      expect(changes).toHaveLength(changesBefore);
      expect(service.getConnectionMethod()).toBe('sse');
    },
  );

  it('probes from polling to websocket first, then to sse', async () => {
    const { service, factory, clock } = setup({
      behaviours: { websocket: 'fail', sse: 'fail', polling: 'open' },
      options: { fallbackAfterFailures: 1 },
    });
    follow(service);
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('polling');
    factory.script('sse', 'open');
    clock.advance(PROBE_INTERVAL_MS);
    await flushMicrotasks();
    expect(factory.methods()).toEqual(['websocket', 'sse', 'polling', 'websocket', 'sse']);
    expect(service.getConnectionMethod()).toBe('sse');
    expect(factory.last('polling').closed).toBe(true);
    // From sse the next probe aims at websocket again.
    factory.script('websocket', 'open');
    clock.advance(PROBE_INTERVAL_MS);
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('websocket');
  });

  it('drops the opening snapshot of the new transport when the state is unchanged', async () => {
    const { service, clock, factory, sse, follower } = await onSse();
    sse.emit(updateEvent(RUN, 1, { stage: 'EXPORT' }));
    clock.advance(PROBE_INTERVAL_MS);
    factory.last().emit(snapshotEvent(RUN, 1, { stage: 'EXPORT' }));
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('websocket');
    expect(types(follower.events)).toEqual(['snapshot', 'update']);
  });

  it('switches without a gap or a duplicate: old events dropped, a new state becomes an update', async () => {
    const { service, clock, factory, sse, follower } = await onSse();
    for (const seq of [1, 2, 3]) sse.emit(logEvent(RUN, seq));
    clock.advance(PROBE_INTERVAL_MS);
    const probe = factory.last();
    expect(probe.cursorsAtConnect).toEqual({ [RUN]: 3 });

    // sse carries on live while the probe replays from seq 3: both deliver 4.
    sse.emit(logEvent(RUN, 4));
    probe.emit(logEvent(RUN, 4));
    probe.emit(logEvent(RUN, 5));
    probe.emit(snapshotEvent(RUN, 6, { stage: 'PLAN' }));
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('websocket');
    expect(sse.closed).toBe(true);

    // A late event of the replaced transport is ignored; the new one carries seq 7.
    sse.emit(logEvent(RUN, 7, 'stale'));
    probe.emit(logEvent(RUN, 7));
    probe.emit(logEvent(RUN, 6));

    expect(types(follower.events)).toEqual(['snapshot', 'log', 'log', 'log', 'log', 'log', 'update', 'log']);
    expect(seqs(follower.events)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    const update = follower.events[6];
    expect(update?.type === 'update' && update.snapshot.stage).toBe('PLAN');
    const last = follower.events[7];
    expect(last?.type === 'log' && last.log.message).toBe('line 7');
  });

  it('probes at once on a wake signal while on a fallback', async () => {
    const { factory, wake } = await onSse();
    wake.signal('pageshow');
    expect(factory.methods()).toEqual(['websocket', 'sse', 'websocket']);
  });
});

describe('ProgressService events', () => {
  it('hands an `events_truncated` snapshot to the callback as a snapshot', async () => {
    const { service, factory, clock } = setup({ behaviours: { websocket: 'open' } });
    const { events } = follow(service);
    await flushMicrotasks();
    factory.last().emit(logEvent(RUN, 1));
    factory.last().drop();
    factory.script('websocket', 'manual');
    clock.advance(RETRY_DELAY_MS);
    const gap = snapshotEvent(RUN, 5000, { stage: 'APPLY' }, true);
    factory.last().emit(gap);
    factory.last().emit(logEvent(RUN, 5001));
    expect(events).toEqual([snapshotEvent(RUN, 0), logEvent(RUN, 1), gap, logEvent(RUN, 5001)]);
  });

  it('resumes a new transport from the last seq delivered', async () => {
    const { service, factory, clock } = setup({ behaviours: { websocket: 'open' } });
    follow(service, RUN);
    follow(service, OTHER);
    await flushMicrotasks();
    const first = factory.last();
    expect(first.cursorsAtConnect).toEqual({ [RUN]: undefined, [OTHER]: undefined });
    for (let seq = 1; seq <= 7; seq++) first.emit(logEvent(RUN, seq));
    first.emit(updateEvent(OTHER, 3, { stage: 'EXPORT' }));
    first.emit(logEvent(RUN, 4)); // a duplicate does not move the cursor back
    first.drop();
    clock.advance(RETRY_DELAY_MS);
    const second = factory.last();
    expect(second).not.toBe(first);
    expect(second.connectRunIds).toEqual([RUN, OTHER]);
    expect(second.cursorsAtConnect).toEqual({ [RUN]: 7, [OTHER]: 3 });
  });

  it('stops following a run after its error event', async () => {
    const { service, factory, clock } = setup({
      behaviours: {
        websocket: (t) => {
          t.emit(runErrorEvent(RUN, 'FORBIDDEN'));
          t.emit(snapshotEvent(OTHER, 0));
        },
      },
    });
    const failing = follow(service, RUN);
    const healthy = follow(service, OTHER);
    await flushMicrotasks();
    const transport = factory.last();
    expect(failing.events).toEqual([runErrorEvent(RUN, 'FORBIDDEN')]);
    expect(transport.unsubscribed).toEqual([RUN]);
    expect(types(healthy.events)).toEqual(['snapshot']);

    transport.drop();
    clock.advance(RETRY_DELAY_MS);
    expect(factory.last().connectRunIds).toEqual([OTHER]);
  });

  it('stops following a run at its terminal state but keeps the others', async () => {
    const { service, factory } = setup({ behaviours: { websocket: 'open' } });
    const done = follow(service, RUN);
    follow(service, OTHER);
    await flushMicrotasks();
    const transport = factory.last();
    transport.emit(updateEvent(RUN, 1, { status: 'COMPLETED' }));
    expect(types(done.events)).toEqual(['snapshot', 'update']);
    expect(transport.unsubscribed).toEqual([RUN]);
    expect(transport.closed).toBe(false);
  });

  it('gives a second callback on a followed run the current state first', async () => {
    const { service, factory } = setup({ behaviours: { websocket: 'open' } });
    follow(service);
    await flushMicrotasks();
    factory.last().emit(updateEvent(RUN, 1, { stage: 'EXPORT' }));
    const late = follow(service);
    await flushMicrotasks();
    factory.last().emit(logEvent(RUN, 2));
    expect(types(late.events)).toEqual(['snapshot', 'log']);
    expect(late.events[0]).toMatchObject({ type: 'snapshot', seq: 1, snapshot: { stage: 'EXPORT' } });
    expect(factory.created).toHaveLength(1);
  });

  it('gives a second callback the snapshot before any later event, even when added mid-delivery', async () => {
    const { service, factory } = setup({ behaviours: { websocket: 'open' } });
    const late: ProgressEvent[] = [];
    let added = false;
    service.subscribeToRun(RUN, (event) => {
      if (event.type === 'log' && !added) {
        added = true;
        service.subscribeToRun(RUN, (e) => late.push(e));
      }
    });
    await flushMicrotasks();
    // One network chunk carrying two events is handed over in one go (as the SSE parser does).
    factory.last().emit(logEvent(RUN, 1));
    factory.last().emit(updateEvent(RUN, 2, { stage: 'PLAN' }));
    await flushMicrotasks();
    expect(types(late)).toEqual(['snapshot', 'update']);
    expect(seqs(late)).toEqual([0, 2]);
  });
});

describe('ProgressService: user code that throws', () => {
  it('survives a connection listener that throws', async () => {
    const { service, factory, clock, listenerErrors, changes } = setup({ behaviours: { websocket: 'open' } });
    const boom = new Error('listener boom');
    service.onConnectionChange(() => {
      throw boom;
    });
    const { events } = follow(service);
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('websocket');
    factory.last().drop();
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    factory.last().emit(logEvent(RUN, 1));

    expect(service.getConnectionMethod()).toBe('websocket');
    expect(changes.map((c) => c.state)).toEqual(['connecting', 'connected', 'reconnecting', 'connected']);
    expect(listenerErrors).toHaveLength(changes.length);
    expect(listenerErrors.every((e) => e === boom)).toBe(true);
    expect(types(events)).toEqual(['snapshot', 'log']);
  });

  it('survives a subscriber callback that throws; other callbacks and later events still arrive', async () => {
    const { service, factory, clock, listenerErrors } = setup({ behaviours: { websocket: 'open' } });
    const thrown: ProgressEvent[] = [];
    service.subscribeToRun(RUN, (event) => {
      thrown.push(event);
      throw new Error(`callback boom ${event.type}`);
    });
    const calm = follow(service);
    await flushMicrotasks();
    factory.last().emit(logEvent(RUN, 1));
    factory.last().drop();
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    factory.last().emit(logEvent(RUN, 2));

    expect(seqs(thrown)).toEqual([0, 1, 2]);
    expect(seqs(calm.events)).toEqual([0, 1, 2]);
    expect(listenerErrors.map((e) => (e as Error).message)).toEqual([
      'callback boom snapshot',
      'callback boom log',
      'callback boom log',
    ]);
    expect(service.getConnectionMethod()).toBe('websocket');
  });
});

describe('ProgressService reconnect policy', () => {
  it('ends in state closed when the policy returns null', async () => {
    const { service, factory, clock, lastChange } = setup({
      behaviours: { websocket: 'open' },
      policy: new RecordingPolicy(null),
    });
    follow(service);
    await flushMicrotasks();
    factory.last().drop(new RuncastError('DISCONNECTED', 'gone'));
    expect(lastChange()).toMatchObject({ state: 'closed', method: null, reason: 'gave up: gone' });
    expect(service.getConnectionMethod()).toBeNull();
    clock.advance(3_600_000);
    expect(factory.created).toHaveLength(1);
    expect(clock.pendingTimers()).toBe(0);
  });

  it('treats a policy that throws as stop, reporting the error', async () => {
    const oops = new Error('policy bug');
    const { service, factory, clock, lastChange, listenerErrors } = setup({
      behaviours: { websocket: 'open' },
      policy: {
        nextRetryDelayMs: () => {
          throw oops;
        },
      },
    });
    follow(service);
    await flushMicrotasks();
    factory.last().drop();
    expect(lastChange()).toMatchObject({ state: 'closed', method: null });
    expect(listenerErrors).toEqual([oops]);
    clock.advance(3_600_000);
    expect(factory.created).toHaveLength(1);
  });

  it('tells the policy the retry count and the time since the connection was good', async () => {
    const policy = new RecordingPolicy(RETRY_DELAY_MS);
    const { service, factory, clock } = setup({
      behaviours: { websocket: 'open' },
      policy,
      options: { transports: ['websocket'] },
    });
    follow(service);
    await flushMicrotasks();
    clock.advance(5000);
    factory.script('websocket', 'fail');
    factory.last().drop();
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    expect(policy.contexts.map((c) => [c.previousRetryCount, c.elapsedMs])).toEqual([
      [0, 0],
      [1, RETRY_DELAY_MS],
      [2, 2 * RETRY_DELAY_MS],
    ]);
    expect(policy.contexts.map((c) => (c.retryReason as RuncastError).code)).toEqual([
      'DISCONNECTED',
      'CONNECT_FAILED',
      'CONNECT_FAILED',
    ]);

    // A good connection resets the count.
    factory.script('websocket', 'open');
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    factory.last().drop();
    expect(policy.contexts[3]).toMatchObject({ previousRetryCount: 0, elapsedMs: 0 });
  });

  it('does not count the time before the first subscription as time without a connection', async () => {
    const policy = new RecordingPolicy(RETRY_DELAY_MS);
    const { service, clock } = setup({
      behaviours: { websocket: 'fail' },
      policy,
      options: { transports: ['websocket'] },
    });
    clock.advance(600_000);
    follow(service);
    await flushMicrotasks();
    expect(policy.contexts[0]).toMatchObject({ previousRetryCount: 0, elapsedMs: 0 });
  });

  it('does not count an idle spell (no subscriptions) as time without a connection', async () => {
    const policy = new RecordingPolicy(RETRY_DELAY_MS);
    const { service, factory, clock } = setup({
      behaviours: { websocket: 'open' },
      policy,
      options: { transports: ['websocket'] },
    });
    const { unsubscribe } = follow(service);
    await flushMicrotasks();
    unsubscribe();
    clock.advance(600_000);
    factory.script('websocket', 'fail');
    follow(service);
    await flushMicrotasks();
    expect(policy.contexts[0]).toMatchObject({ previousRetryCount: 0, elapsedMs: 0 });
  });
});

describe('ProgressService wake signals', () => {
  it("retries at once on 'online' during a backoff", async () => {
    const { service, factory, clock, wake } = setup({
      behaviours: { websocket: 'open' },
      policy: new RecordingPolicy(20_000),
    });
    follow(service);
    await flushMicrotasks();
    factory.last().drop();
    clock.advance(100);
    expect(factory.created).toHaveLength(1);
    wake.signal('online');
    expect(factory.created).toHaveLength(2);
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('websocket');
    // The backoff's own timer was cancelled: no second attempt when it would have fired.
    clock.advance(20_000);
    expect(factory.created).toHaveLength(2);
  });

  it("does not retry early on 'offline'", async () => {
    const { service, factory, clock, wake } = setup({
      behaviours: { websocket: 'open' },
      policy: new RecordingPolicy(20_000),
    });
    follow(service);
    await flushMicrotasks();
    factory.last().drop();
    wake.signal('offline');
    expect(factory.created).toHaveLength(1);
    clock.advance(20_000);
    expect(factory.created).toHaveLength(2);
  });

  it('stops listening to wake signals on close', () => {
    const { service, wake } = setup();
    expect(wake.listenerCount).toBe(1);
    service.close();
    expect(wake.listenerCount).toBe(0);
  });
});

describe('ProgressService subscriptions and close', () => {
  it('closes the transport and goes idle when the last run is unsubscribed', async () => {
    const { service, factory, lastChange, clock } = setup({ behaviours: { websocket: 'open' } });
    const a = follow(service, RUN);
    const b = follow(service, OTHER);
    await flushMicrotasks();
    const transport = factory.last();

    a.unsubscribe();
    a.unsubscribe(); // idempotent
    expect(transport.unsubscribed).toEqual([RUN]);
    expect(transport.closed).toBe(false);
    expect(service.getConnectionMethod()).toBe('websocket');

    b.unsubscribe();
    expect(transport.unsubscribed).toEqual([RUN, OTHER]);
    expect(transport.closeCalls).toBe(1);
    expect(lastChange()).toMatchObject({ state: 'idle', method: null, reason: 'no subscriptions' });
    expect(service.getConnectionMethod()).toBeNull();
    expect(clock.pendingTimers()).toBe(0);

    // Following again opens a new connection.
    follow(service, RUN);
    await flushMicrotasks();
    expect(factory.created).toHaveLength(2);
    expect(service.getConnectionMethod()).toBe('websocket');
  });

  it('subscribes a run added later on the open transport', async () => {
    const { service, factory } = setup({ behaviours: { websocket: 'open' } });
    follow(service, RUN);
    await flushMicrotasks();
    follow(service, OTHER);
    expect(factory.created).toHaveLength(1);
    expect(factory.last().subscribed).toEqual([OTHER]);
  });

  it('cancels a pending retry when the last run is unsubscribed during a backoff', async () => {
    const { service, factory, clock, lastChange } = setup({ behaviours: { websocket: 'open' } });
    const { unsubscribe } = follow(service);
    await flushMicrotasks();
    factory.last().drop();
    unsubscribe();
    expect(lastChange()).toMatchObject({ state: 'idle' });
    clock.advance(RETRY_DELAY_MS * 10);
    expect(factory.created).toHaveLength(1);
    expect(clock.pendingTimers()).toBe(0);
  });

  it('cancels the probe timer when the last run is unsubscribed on a fallback', async () => {
    const { service, factory, clock, follower } = await onSse();
    follower.unsubscribe();
    expect(factory.last('sse').closed).toBe(true);
    clock.advance(PROBE_INTERVAL_MS * 10);
    expect(factory.created).toHaveLength(2);
    expect(clock.pendingTimers()).toBe(0);
    expect(service.getConnectionMethod()).toBeNull();
  });

  it('close() ends everything and refuses new subscriptions', async () => {
    const { service, factory, lastChange, clock } = setup({ behaviours: { websocket: 'open' } });
    follow(service);
    await flushMicrotasks();
    service.close();
    expect(factory.last().closeCalls).toBe(1);
    expect(lastChange()).toMatchObject({ state: 'closed', method: null, reason: 'closed' });
    expect(clock.pendingTimers()).toBe(0);
    expect(() => service.subscribeToRun(RUN, () => {})).toThrow(RuncastError);
  });

  it('close() while connecting closes the transport once and leaves no timer behind', () => {
    const { service, factory, clock } = setup();
    follow(service);
    const connecting = factory.last();
    service.close();
    expect(connecting.closeCalls).toBe(1);
    expect(clock.pendingTimers()).toBe(0);
    clock.advance(TIMEOUTS.websocket);
    expect(connecting.closeCalls).toBe(1);
  });
});

describe('ProgressService: a connection that fails between its first event and its snapshot', () => {
  // The contract: `connect` resolves at the first snapshot and rejects if the connection fails
  // first. Replayed logs are sent before that snapshot (socket.ts writes them before the ack; an
  // SSE opening may span several chunks), so a transport can deliver events and still reject.
  it('retries instead of keeping a dead connection', async () => {
    const { service, factory, clock } = setup({ behaviours: { websocket: 'open' } });
    const follower = follow(service);
    await flushMicrotasks();
    const first = factory.last();
    first.emit(logEvent(RUN, 1));
    first.drop();
    factory.script('websocket', 'manual');
    clock.advance(RETRY_DELAY_MS);
    const second = factory.last();
    expect(second.cursorsAtConnect).toEqual({ [RUN]: 1 });
    second.emit(logEvent(RUN, 2)); // replayed before its snapshot…
    second.drop(); // …and the connection fails before the snapshot: connect rejects
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBeNull();
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    expect(factory.created).toHaveLength(3);
    expect(factory.last().cursorsAtConnect).toEqual({ [RUN]: 2 });
    expect(seqs(follower.events)).toEqual([0, 1, 2]);
  });

  it('keeps sse when an upgrade probe fails after replayed logs, before its snapshot', async () => {
    const { service, factory, clock, sse } = await onSse();
    sse.emit(logEvent(RUN, 1));
    clock.advance(PROBE_INTERVAL_MS);
    const probe = factory.last();
    sse.emit(logEvent(RUN, 2));
    probe.emit(logEvent(RUN, 2));
    probe.drop();
    await flushMicrotasks();
    expect(sse.closed).toBe(false);
    expect(service.getConnectionMethod()).toBe('sse');
    sse.emit(logEvent(RUN, 3));
    clock.advance(PROBE_INTERVAL_MS);
    expect(factory.byMethod('websocket')).toHaveLength(3);
  });

  it('leaves one connection open when the fallback drops while a probe is opening', async () => {
    const { service, factory, clock, sse } = await onSse({ options: { fallbackAfterFailures: 2 } });
    clock.advance(PROBE_INTERVAL_MS);
    const probe = factory.last();
    expect(probe.method).toBe('websocket');
    sse.drop();
    probe.emit(snapshotEvent(RUN, 0));
    await flushMicrotasks();
    clock.advance(RETRY_DELAY_MS);
    await flushMicrotasks();
    const retry = factory.last();
    if (retry !== probe && retry.isOpen && !retry.connectSettled) retry.emit(snapshotEvent(RUN, 0));
    await flushMicrotasks();
    const open = factory.open();
    expect(open.map((t) => t.method)).toHaveLength(1);
    expect(service.getConnectionMethod()).toBe(open[0]?.method);
  });
});
