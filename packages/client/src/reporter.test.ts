import { afterEach, describe, expect, it, vi } from 'vitest';
import { RuncastError } from './errors.js';
import { ExponentialBackoff, type ReconnectPolicy } from './reconnect-policy.js';
import { RunReporter, type RunReporterOptions } from './reporter.js';
import { FakeClock, flushMicrotasks, RecordingPolicy } from './test-support/fakes.js';

const BASE = 'http://runcast.test';
const RUN = 'run_01J0000000000000000000000A';
const INTERVAL_MS = 100;

/** One request the reporter made, answered by the test. */
interface Sent {
  url: string;
  method: string;
  headers: Record<string, string>;
  key: string;
  body: any;
  /** The body exactly as sent. */
  raw: string;
  answered: boolean;
  answer(status: number, body?: unknown, headers?: Record<string, string>): void;
  /** The connection fails before any answer (the server is down). */
  failNetwork(): void;
}

/** A fetch that records every request and leaves it pending until answered (or `auto` answers). */
class FakeFetch {
  readonly sent: Sent[] = [];
  auto: ((sent: Sent) => void) | undefined;

  readonly fetch: typeof fetch = (input, init) =>
    new Promise<Response>((resolve, reject) => {
      const headers = { ...(init?.headers as Record<string, string>) };
      const raw = String(init?.body);
      const sent: Sent = {
        url: String(input),
        method: init?.method ?? 'GET',
        headers,
        key: headers['idempotency-key'] ?? '',
        body: JSON.parse(raw),
        raw,
        answered: false,
        answer(status, body = {}, extra = {}) {
          if (sent.answered) return;
          sent.answered = true;
          resolve(
            new Response(JSON.stringify(body), {
              status,
              headers: { 'content-type': 'application/json', ...extra },
            }),
          );
        },
        failNetwork() {
          if (sent.answered) return;
          sent.answered = true;
          reject(new TypeError('fetch failed', { cause: { code: 'ECONNREFUSED' } }));
        },
      };
      init?.signal?.addEventListener('abort', () => {
        if (sent.answered) return;
        sent.answered = true;
        reject(new DOMException('This operation was aborted', 'AbortError'));
      });
      this.sent.push(sent);
      this.auto?.(sent);
    });

  get last(): Sent {
    const sent = this.sent[this.sent.length - 1];
    if (!sent) throw new Error('nothing was sent');
    return sent;
  }

  /** What was sent, as `POST [messages]` / `PATCH {patch}` lines. */
  summary(): string[] {
    return this.sent.map((s) =>
      s.method === 'POST'
        ? `POST ${s.body.entries.map((e: { message: string }) => e.message).join(',')}`
        : `PATCH ${JSON.stringify(s.body)}`,
    );
  }
}

const acknowledge = (sent: Sent) => sent.answer(sent.method === 'PATCH' ? 200 : 201);

/** Lets every pending promise chain run (the reporter awaits the token, fetch and the body). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await flushMicrotasks();
}

interface Setup {
  clock: FakeClock;
  net: FakeFetch;
  reporter: RunReporter;
  errors: RuncastError[];
}

function setup(options: Partial<RunReporterOptions> = {}, auto = true): Setup {
  const clock = new FakeClock({ random: 0.5 });
  const net = new FakeFetch();
  if (auto) net.auto = acknowledge;
  const errors: RuncastError[] = [];
  const reporter = new RunReporter({
    baseUrl: `${BASE}/`,
    runId: RUN,
    token: 'tok_secret',
    batchIntervalMs: INTERVAL_MS,
    maxBatch: 50,
    retryPolicy: new RecordingPolicy(1000),
    onError: (error) => errors.push(error),
    ...options,
    env: { ...clock.environment(), fetch: net.fetch, ...options.env },
  });
  return { clock, net, reporter, errors };
}

/** Advances the fake clock and lets what it set off run. */
async function advance(clock: FakeClock, ms: number): Promise<void> {
  clock.advance(ms);
  await settle();
}

/** Whether a promise has settled yet, without waiting for it. */
function track<T>(promise: Promise<T>): { done: boolean; error: unknown } {
  const state = { done: false, error: undefined as unknown };
  promise.then(
    () => {
      state.done = true;
    },
    (error: unknown) => {
      state.done = true;
      state.error = error;
    },
  );
  return state;
}

describe('RunReporter batching', () => {
  it('sends log lines in one request per batch interval', async () => {
    const { clock, net, reporter } = setup();
    reporter.log('info', 'a');
    reporter.log('warn', 'b', { stage: 'EXPORT' });
    reporter.log({ level: 'debug', message: 'c', data: { n: 1 } });
    await settle();
    expect(net.sent).toHaveLength(0);
    await advance(clock, INTERVAL_MS - 1);
    expect(net.sent).toHaveLength(0);
    await advance(clock, 1);
    expect(net.sent).toHaveLength(1);
    const sent = net.last;
    expect(sent.method).toBe('POST');
    expect(sent.url).toBe(`${BASE}/api/v1/runs/${RUN}/logs`);
    expect(sent.headers.authorization).toBe('Bearer tok_secret');
    expect(sent.headers['content-type']).toBe('application/json');
    expect(sent.key).toMatch(/^[\x21-\x7e]{1,200}$/);
    expect(sent.body).toEqual({
      entries: [
        { level: 'info', message: 'a' },
        { level: 'warn', message: 'b', stage: 'EXPORT' },
        { level: 'debug', message: 'c', data: { n: 1 } },
      ],
    });
    reporter.log('info', 'd');
    await advance(clock, INTERVAL_MS);
    expect(net.summary()).toEqual(['POST a,b,c', 'POST d']);
    expect(net.sent[1]?.key).not.toBe(net.sent[0]?.key);
    expect(reporter.getStats()).toEqual({ acknowledged: 2, retries: 0, failed: 0, pending: 0 });
  });

  it('sends a full batch at once, one request at a time, in batches of maxBatch', async () => {
    const { clock, net, reporter } = setup({ maxBatch: 3 }, false);
    for (let i = 1; i <= 7; i++) reporter.log('info', `m${i}`);
    await settle();
    expect(net.summary()).toEqual(['POST m1,m2,m3']);
    await advance(clock, 10 * INTERVAL_MS);
    // Still one: the next request waits for the answer to this one.
    expect(net.sent).toHaveLength(1);
    acknowledge(net.last);
    await settle();
    // m4..m7 had waited past the interval: the next full batch goes at once.
    expect(net.summary()).toEqual(['POST m1,m2,m3', 'POST m4,m5,m6']);
    acknowledge(net.last);
    await settle();
    expect(net.summary()).toEqual(['POST m1,m2,m3', 'POST m4,m5,m6', 'POST m7']);
    acknowledge(net.last);
    await settle();
    expect(reporter.getStats().pending).toBe(0);
  });

  it('holds a partial batch until the interval since its first line', async () => {
    const { clock, net, reporter } = setup({ maxBatch: 3 });
    reporter.log('info', 'a');
    await advance(clock, 60);
    reporter.log('info', 'b');
    await advance(clock, 39);
    expect(net.sent).toHaveLength(0);
    await advance(clock, 1);
    expect(net.summary()).toEqual(['POST a,b']);
  });

  it('ends a batch before the entry that would pass maxBatchBytes, sending a full one at once', async () => {
    const { net, reporter } = setup({ maxBatchBytes: 200 });
    // Each entry, {"level":"info","message":"0éé…"}, is 88 bytes in UTF-8 (é takes two), 89 with a comma.
    const line = (n: number) => `${n}${'é'.repeat(29)}`;
    for (let i = 0; i < 5; i++) reporter.log('info', line(i));
    await settle();
    // 2 entries (178 bytes) go together; a third would pass 200.
    expect(net.summary()).toEqual([`POST ${line(0)},${line(1)}`, `POST ${line(2)},${line(3)}`]);
    await reporter.flush();
    expect(net.summary()).toHaveLength(3);
    reporter.log('info', 'x'.repeat(500));
    await reporter.flush();
    expect(net.last.body.entries).toHaveLength(1);
  });

  it('refuses a log line that cannot be sent as JSON at the call, and flush still settles', async () => {
    const { reporter } = setup();
    reporter.log('info', 'a');
    expect(() => reporter.log('info', 'b', { data: { n: 1n } })).toThrow(TypeError);
    expect(() => reporter.update({ stats: { refs: 1n as unknown as number } })).toThrow(TypeError);
    await expect(reporter.flush()).resolves.toBeUndefined();
  });

  it('flush() sends at once and resolves when everything was acknowledged', async () => {
    const { net, reporter } = setup({}, false);
    reporter.log('info', 'a');
    reporter.update({ progress: { percentage: 5 } });
    const flushed = track(reporter.flush());
    await settle();
    expect(net.summary()).toEqual(['POST a']);
    acknowledge(net.last);
    await settle();
    expect(flushed.done).toBe(false);
    expect(net.summary()).toEqual(['POST a', 'PATCH {"progress":{"percentage":5}}']);
    acknowledge(net.last);
    await settle();
    expect(flushed).toEqual({ done: true, error: undefined });
    await expect(reporter.flush()).resolves.toBeUndefined();
  });
});

describe('RunReporter ordering', () => {
  it('keeps call order: logs before an update go first, updates coalesce only with the last call', async () => {
    const { net, reporter } = setup();
    reporter.log('info', 'a');
    reporter.log('info', 'b');
    reporter.update({ status: 'RUNNING', progress: { percentage: 10 }, stage: 'EXPORT' });
    reporter.update({ progress: { percentage: 20 } });
    reporter.log('info', 'c');
    reporter.update({ progress: { percentage: 30 } });
    reporter.update({ current_stage: 'EXPORT x (1/2)' });
    reporter.log('info', 'd');
    await reporter.flush();
    expect(net.summary()).toEqual([
      'POST a,b',
      'PATCH {"status":"RUNNING","progress":{"percentage":20},"stage":"EXPORT"}',
      'POST c',
      'PATCH {"progress":{"percentage":30},"current_stage":"EXPORT x (1/2)"}',
      'POST d',
    ]);
  });

  it('never merges two different statuses, so every transition is made', async () => {
    const { net, reporter } = setup();
    reporter.update({ status: 'RUNNING' });
    reporter.update({ status: 'RUNNING', progress: { percentage: 1 } });
    reporter.update({ status: 'FAILED', error: { code: 'X', message: 'boom' } });
    await reporter.flush();
    expect(net.summary()).toEqual([
      'PATCH {"status":"RUNNING","progress":{"percentage":1}}',
      'PATCH {"status":"FAILED","error":{"code":"X","message":"boom"}}',
    ]);
  });

  it('does not coalesce into an update already in flight', async () => {
    const { net, reporter } = setup({}, false);
    reporter.update({ progress: { percentage: 1 } });
    void reporter.flush().catch(() => {});
    await settle();
    reporter.update({ progress: { percentage: 2 } });
    acknowledge(net.last);
    await settle();
    void reporter.flush().catch(() => {});
    await settle();
    acknowledge(net.last);
    expect(net.summary()).toEqual([
      'PATCH {"progress":{"percentage":1}}',
      'PATCH {"progress":{"percentage":2}}',
    ]);
  });

  it('sends what was passed at call time, whatever the caller mutates later', async () => {
    const { net, reporter } = setup();
    const progress = { percentage: 10, done: 1 };
    reporter.update({ progress });
    progress.percentage = 99;
    const data = { n: 1 };
    reporter.log('info', 'x', { data });
    data.n = 2;
    await reporter.flush();
    expect(net.sent[0]?.body).toEqual({ progress: { percentage: 10, done: 1 } });
    expect(net.sent[1]?.body).toEqual({ entries: [{ level: 'info', message: 'x', data: { n: 1 } }] });
  });
});

describe('RunReporter retries', () => {
  it('repeats a request with the same key and body after no answer, a 5xx and a 429', async () => {
    const policy = new RecordingPolicy(1000);
    const { clock, net, reporter, errors } = setup({ retryPolicy: policy }, false);
    reporter.log('info', 'once');
    const flushed = track(reporter.flush());
    await settle();
    net.last.failNetwork();
    await settle();
    await advance(clock, 999);
    expect(net.sent).toHaveLength(1);
    await advance(clock, 1);
    expect(net.sent).toHaveLength(2);
    net.last.answer(503, { error: { code: 'NOT_READY', message: 'starting' } });
    await settle();
    await advance(clock, 1000);
    expect(net.sent).toHaveLength(3);
    net.last.answer(429, { error: { code: 'RATE_LIMITED', message: 'slow down' } }, { 'retry-after': '3' });
    await settle();
    await advance(clock, 1000);
    // Retry-After (3 s) outweighs the policy's 1 s.
    expect(net.sent).toHaveLength(3);
    await advance(clock, 2000);
    expect(net.sent).toHaveLength(4);
    net.last.answer(201, { run_id: RUN, first_seq: 1, last_seq: 1 });
    await settle();
    expect(flushed).toEqual({ done: true, error: undefined });
    expect(new Set(net.sent.map((s) => s.key)).size).toBe(1);
    expect(new Set(net.sent.map((s) => s.raw)).size).toBe(1);
    expect(
      policy.contexts.map((c) => [c.previousRetryCount, (c.retryReason as RuncastError | undefined)?.code]),
    ).toEqual([
      [0, 'NETWORK'],
      [1, 'NOT_READY'],
      [2, 'RATE_LIMITED'],
    ]);
    // Unreachable since the first failure: 1 s, 2 s and 3 s before each decision.
    expect(policy.contexts.map((c) => c.elapsedMs)).toEqual([0, 1000, 2000]);
    expect(errors).toEqual([]);
    expect(reporter.getStats()).toMatchObject({ acknowledged: 1, retries: 3, failed: 0 });
    // The next request is a new one: a new key.
    reporter.log('info', 'next');
    const next = reporter.flush();
    await settle();
    net.last.answer(201);
    await next;
    expect(net.last.key).not.toBe(net.sent[0]?.key);
  });

  it('backs off exponentially with full jitter by default', async () => {
    const { clock, net, reporter } = setup({ retryPolicy: undefined }, false);
    net.auto = (sent) => sent.failNetwork();
    reporter.log('info', 'x');
    void reporter.flush().catch(() => {});
    await settle();
    const delays: number[] = [];
    for (let i = 0; i < 7; i++) {
      const delayMs = clock.nextTimerInMs();
      if (delayMs === undefined) throw new Error('no retry scheduled');
      delays.push(delayMs);
      await advance(clock, delayMs);
    }
    // A draw of 0.5 from [0, min(10 s, 250 ms·2ⁿ)).
    expect(delays).toEqual([125, 250, 500, 1000, 2000, 4000, 5000]);
    expect(net.sent).toHaveLength(8);
    expect(new Set(net.sent.map((s) => s.key)).size).toBe(1);
  });

  it('repeats an attempt that got no answer in requestTimeoutMs, with the same key', async () => {
    const { clock, net, reporter } = setup({ requestTimeoutMs: 5000 }, false);
    reporter.log('info', 'x');
    const flushed = track(reporter.flush());
    await settle();
    await advance(clock, 4999);
    expect(net.sent).toHaveLength(1);
    await advance(clock, 1);
    expect(net.sent[0]?.answered).toBe(true);
    await advance(clock, 1000);
    expect(net.sent).toHaveLength(2);
    expect(net.sent[1]?.key).toBe(net.sent[0]?.key);
    acknowledge(net.last);
    await settle();
    expect(flushed.done).toBe(true);
  });

  it('gives a request up when the policy says stop, and carries on with the next', async () => {
    let stop = true;
    const policy: ReconnectPolicy = { nextRetryDelayMs: () => (stop ? null : 10) };
    const { net, reporter, errors } = setup({ retryPolicy: policy }, false);
    net.auto = (sent) => sent.failNetwork();
    reporter.log('info', 'lost');
    const error = await reporter.flush().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RuncastError);
    expect((error as RuncastError).code).toBe('NETWORK');
    expect(errors).toEqual([error]);
    stop = false;
    net.auto = acknowledge;
    reporter.log('info', 'kept');
    await expect(reporter.flush()).resolves.toBeUndefined();
    expect(net.summary()).toEqual(['POST lost', 'POST kept']);
    expect(reporter.getStats()).toMatchObject({ acknowledged: 1, failed: 1 });
  });

  it('treats a policy that throws as stop', async () => {
    const policy: ReconnectPolicy = {
      nextRetryDelayMs: () => {
        throw new Error('broken policy');
      },
    };
    const { net, reporter } = setup({ retryPolicy: policy });
    net.auto = (sent) => sent.answer(500, { error: { code: 'INTERNAL', message: 'internal error' } });
    reporter.log('info', 'x');
    await expect(reporter.flush()).rejects.toMatchObject({ code: 'INTERNAL', status: 500 });
    expect(net.sent).toHaveLength(1);
  });
});

describe('RunReporter refusals', () => {
  it('does not retry a 4xx: onError hears it, flush rejects with it, later calls still go', async () => {
    const { clock, net, reporter, errors } = setup();
    net.auto = (sent) =>
      sent.answer(409, { error: { code: 'RUN_TERMINAL', message: `run ${RUN} is CANCELED` } });
    reporter.log('info', 'late');
    const error = await reporter.flush().catch((e: unknown) => e);
    await advance(clock, 60_000);
    expect(net.sent).toHaveLength(1);
    expect(error).toBeInstanceOf(RuncastError);
    expect(error).toMatchObject({ code: 'RUN_TERMINAL', status: 409 });
    expect(errors).toEqual([error]);
    net.auto = acknowledge;
    reporter.log('info', 'after');
    // The failure was reported to the first flush; the next one only covers what came after.
    await expect(reporter.flush()).resolves.toBeUndefined();
    expect(reporter.getStats()).toMatchObject({ acknowledged: 1, retries: 0, failed: 1 });
  });

  it('surfaces a refused update of a batch flushed by close()', async () => {
    const { net, reporter, errors } = setup();
    net.auto = (sent) =>
      sent.method === 'PATCH'
        ? sent.answer(400, {
            error: { code: 'INVALID_INPUT', message: 'body.progress.percentage must be <= 100' },
          })
        : acknowledge(sent);
    reporter.log('info', 'a');
    reporter.update({ progress: { percentage: 101 } });
    reporter.log('info', 'b');
    await expect(reporter.close()).rejects.toMatchObject({ code: 'INVALID_INPUT', status: 400 });
    expect(net.summary()).toEqual(['POST a', 'PATCH {"progress":{"percentage":101}}', 'POST b']);
    expect(errors.map((e) => e.code)).toEqual(['INVALID_INPUT']);
  });

  it('keeps going when onError throws', async () => {
    const { net, reporter } = setup({
      onError: () => {
        throw new Error('listener bug');
      },
    });
    net.auto = (sent) => sent.answer(403, { error: { code: 'FORBIDDEN', message: 'no' } });
    reporter.log('info', 'a');
    await expect(reporter.flush()).rejects.toMatchObject({ code: 'FORBIDDEN' });
    net.auto = acknowledge;
    reporter.log('info', 'b');
    await expect(reporter.flush()).resolves.toBeUndefined();
  });
});

describe('RunReporter complete and fail', () => {
  it('complete() sends what is queued first, then COMPLETED, then refuses more calls', async () => {
    const { clock, net, reporter } = setup({}, false);
    reporter.update({ status: 'RUNNING' });
    reporter.log('info', 'a');
    reporter.log('info', 'b');
    const completed = track(reporter.complete({ progress: { percentage: 100 } }));
    await settle();
    expect(net.summary()).toEqual(['PATCH {"status":"RUNNING"}']);
    acknowledge(net.last);
    await settle();
    expect(net.summary()).toEqual(['PATCH {"status":"RUNNING"}', 'POST a,b']);
    acknowledge(net.last);
    await settle();
    expect(completed.done).toBe(false);
    expect(net.last.body).toEqual({ progress: { percentage: 100 }, status: 'COMPLETED' });
    acknowledge(net.last);
    await settle();
    expect(completed).toEqual({ done: true, error: undefined });
    expect(() => reporter.log('info', 'late')).toThrow(RuncastError);
    expect(() => reporter.update({})).toThrow(/closed/);
    await expect(reporter.complete()).rejects.toMatchObject({ code: 'CLOSED' });
    expect(clock.pendingTimers()).toBe(0);
  });

  it('fail() sends FAILED with the error after the queued log', async () => {
    const { clock, net, reporter } = setup();
    reporter.log('error', 'clone failed');
    await reporter.fail({ code: 'CLONE_FAILED', message: 'exit 128' }, { stage: 'EXPORT' });
    expect(net.summary()).toEqual([
      'POST clone failed',
      'PATCH {"stage":"EXPORT","status":"FAILED","error":{"code":"CLONE_FAILED","message":"exit 128"}}',
    ]);
    expect(clock.pendingTimers()).toBe(0);
  });

  it('complete() merges into a queued update without a status', async () => {
    const { net, reporter } = setup();
    reporter.update({ progress: { percentage: 90 } });
    await reporter.complete({ progress: { percentage: 100 } });
    expect(net.summary()).toEqual(['PATCH {"progress":{"percentage":100},"status":"COMPLETED"}']);
  });

  it('complete() rejects when the server refuses the terminal update', async () => {
    const { net, reporter } = setup();
    net.auto = (sent) =>
      sent.answer(409, {
        error: { code: 'RUN_TERMINAL', message: 'run is CANCELED and can no longer change' },
      });
    await expect(reporter.complete()).rejects.toMatchObject({ code: 'RUN_TERMINAL' });
  });

  it('close() twice returns one promise, and close() with nothing queued resolves at once', async () => {
    const { net, reporter } = setup();
    const first = reporter.close();
    expect(reporter.close()).toBe(first);
    await first;
    expect(net.sent).toHaveLength(0);
  });
});

describe('RunReporter environment', () => {
  afterEach(() => {
    vi.unstubAllGlobals();
  });

  it('uses the global fetch when none is injected, and a token function per request', async () => {
    const net = new FakeFetch();
    net.auto = acknowledge;
    vi.stubGlobal('fetch', net.fetch);
    let n = 0;
    const reporter = new RunReporter({
      baseUrl: '',
      runId: RUN,
      token: async () => `t${++n}`,
      batchIntervalMs: 0,
    });
    reporter.log('info', 'a');
    await reporter.flush();
    reporter.update({ stage: 'PLAN' });
    await reporter.close();
    expect(net.sent.map((s) => [s.url, s.headers.authorization])).toEqual([
      [`/api/v1/runs/${RUN}/logs`, 'Bearer t1'],
      [`/api/v1/runs/${RUN}/progress`, 'Bearer t2'],
    ]);
  });

  it('refuses options out of range', () => {
    const make = (options: Partial<RunReporterOptions>) => () =>
      new RunReporter({ baseUrl: BASE, runId: RUN, token: 't', ...options });
    expect(make({ maxBatch: 0 })).toThrow(RuncastError);
    expect(make({ maxBatch: 1001 })).toThrow(/maxBatch/);
    expect(make({ batchIntervalMs: -1 })).toThrow(/batchIntervalMs/);
    expect(make({ requestTimeoutMs: 0 })).toThrow(/requestTimeoutMs/);
    expect(make({ retryPolicy: new ExponentialBackoff() })).not.toThrow();
  });
});
