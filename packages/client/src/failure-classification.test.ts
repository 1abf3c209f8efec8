import { describe, expect, it } from 'vitest';
import { RuncastError } from './errors.js';
import { flushMicrotasks, snapshotEvent } from './test-support/fakes.js';
import { harness, RETRY_DELAY_MS, record } from './test-support/harness.js';

const RUN = 'run_a';
const refused = () => new RuncastError('CONNECT_FAILED', 'websocket error');

/** Answers the service's pending `/healthz` probe: up (200), down (connection refused) or a gateway status. */
async function answerHealth(net: ReturnType<typeof harness>['net'], answer: 'up' | 'down' | number) {
  await flushMicrotasks();
  const request = net.to('/healthz').at(-1);
  if (!request) throw new Error('no /healthz request was made');
  if (answer === 'down') request.fail();
  else request.respond(new Response(null, { status: answer === 'up' ? 200 : answer }));
  await flushMicrotasks();
}

describe('failure classification', () => {
  it('keeps the same method while the server cannot be reached at all, and connects on it when it is back', async () => {
    const { service, factory, clock, net, lastChange } = harness({ options: { openingFetch: false } });
    record(service, RUN);
    for (let attempt = 0; attempt < 4; attempt++) {
      factory.last().rejectConnect(refused());
      await answerHealth(net, 'down');
      expect(lastChange()).toMatchObject({ state: 'offline', method: 'websocket' });
      clock.advance(RETRY_DELAY_MS);
    }
    expect(factory.methods()).toEqual(['websocket', 'websocket', 'websocket', 'websocket', 'websocket']);
    factory.last().emit(snapshotEvent(RUN, 1));
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('websocket');
    expect(service.getStats().fallbacks).toBe(0);
  });

  it('treats a proxy whose upstream is down (502 from /healthz) as unreachable', async () => {
    const { service, factory, net, lastChange } = harness({ options: { openingFetch: false } });
    record(service, RUN);
    factory.last().rejectConnect(new RuncastError('HTTP_502', 'Bad Gateway', 502));
    await answerHealth(net, 502);
    expect(lastChange()).toMatchObject({ state: 'offline', method: 'websocket' });
  });

  it('falls back when one method fails while the server answers (a blocked method)', async () => {
    const { service, factory, clock, net, lastChange } = harness({ options: { openingFetch: false } });
    record(service, RUN);
    factory.last().rejectConnect(refused());
    await answerHealth(net, 'up');
    expect(lastChange()).toMatchObject({ state: 'reconnecting', method: 'websocket' });
    clock.advance(RETRY_DELAY_MS);
    factory.last().rejectConnect(refused());
    await answerHealth(net, 'up');
    expect(factory.methods()).toEqual(['websocket', 'websocket', 'sse']);
    factory.last().emit(snapshotEvent(RUN, 1));
    await flushMicrotasks();
    expect(service.getConnectionMethod()).toBe('sse');
    expect(service.getStats().fallbacks).toBe(1);
  });

  it('counts an answer of the server (a proxy refusing the stream) without asking /healthz', async () => {
    const { service, factory, clock, net } = harness({
      options: { openingFetch: false, transports: ['sse', 'polling'] },
    });
    record(service, RUN);
    factory.last().rejectConnect(new RuncastError('HTTP_403', 'Forbidden', 403));
    await flushMicrotasks();
    clock.advance(RETRY_DELAY_MS);
    factory.last().rejectConnect(new RuncastError('HTTP_403', 'Forbidden', 403));
    await flushMicrotasks();
    expect(factory.methods()).toEqual(['sse', 'sse', 'polling']);
    expect(net.to('/healthz')).toHaveLength(0);
  });

  it('reconnects the same method after an idle cut of a healthy connection, however often', async () => {
    const { service, factory, clock, net } = harness({
      behaviours: { websocket: 'open' },
      options: { openingFetch: false, healthyAfterMs: 3000 },
    });
    record(service, RUN);
    await flushMicrotasks();
    for (let cut = 0; cut < 5; cut++) {
      clock.advance(5000);
      factory.last().drop();
      await flushMicrotasks();
      clock.advance(RETRY_DELAY_MS);
      await flushMicrotasks();
      expect(service.getConnectionMethod()).toBe('websocket');
    }
    expect(new Set(factory.methods())).toEqual(new Set(['websocket']));
    expect(service.getStats().fallbacks).toBe(0);
    expect(net.to('/healthz')).toHaveLength(0);
    // The cut came after 5 s without an event: later long-polls and streams stay within it.
    expect(factory.last().context.hints).toEqual({ pollWaitS: 4, keepaliveS: 2, deltaRefused: false });
  });

  it('counts a connection closed right after it opened against its method', async () => {
    const { service, factory, net } = harness({
      behaviours: { websocket: 'open' },
      options: { openingFetch: false, healthyAfterMs: 3000 },
    });
    record(service, RUN);
    await flushMicrotasks();
    factory.last().drop();
    await answerHealth(net, 'up');
    expect(factory.last().context.hints.keepaliveS).toBeUndefined();
    expect(service.getConnectionState()).toMatchObject({ state: 'reconnecting', method: 'websocket' });
  });

  it.each([
    ['UNAUTHORIZED at the handshake', new RuncastError('UNAUTHORIZED', 'no session')],
    ['a 401 from a proxy', new RuncastError('HTTP_401', 'Unauthorized', 401)],
  ])('stops for good on %s: state unauthorized, an error event, no retry', async (_name, error) => {
    const { service, factory, clock, lastChange } = harness({ options: { openingFetch: false } });
    const seen = record(service, RUN);
    factory.last().rejectConnect(error);
    await flushMicrotasks();
    expect(lastChange()).toMatchObject({ state: 'unauthorized', method: null });
    expect(seen.events).toEqual([
      { run_id: RUN, type: 'error', error: { code: error.code, message: error.message } },
    ]);
    clock.advance(10 * 60_000);
    expect(factory.created).toHaveLength(1);
  });

  it('stops for good when the REST opening is refused with 401', async () => {
    const { service, factory, net, lastChange } = harness({ options: { raceAfterMs: null } });
    const seen = record(service, RUN);
    await flushMicrotasks();
    net
      .to('/progress')[0]
      ?.respond(
        Response.json({ error: { code: 'UNAUTHORIZED', message: 'session ended' } }, { status: 401 }),
      );
    await flushMicrotasks();
    expect(lastChange()).toMatchObject({ state: 'unauthorized' });
    expect(seen.events.map((e) => e.type)).toEqual(['error']);
    expect(factory.last().closed).toBe(true);
  });
});
