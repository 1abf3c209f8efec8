import { EventSource } from 'eventsource';
import { io, type Socket } from 'socket.io-client';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import {
  type Api,
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';

// Live delivery through real clients nobody on this team wrote: `eventsource` for SSE,
// `socket.io-client` for WebSocket and plain `fetch` for long-polling (DESIGN §3, issue 3).
// Every wait resolves on the event it waits for; its deadline only turns a hang into a message.

const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELED']);
/** Deadline of one wait: far beyond what the event needs, well inside the test timeout. */
const WAIT_MS = 20_000;

// ---------------------------------------------------------------------------------------------
// Waiting for things to arrive

/** Items as they arrive; `until` resolves as soon as a condition on them holds. */
class Collector<T> {
  readonly items: T[] = [];
  private readonly waiters = new Set<() => void>();
  private endReason: string | undefined;

  constructor(private readonly describeItem: (item: T) => string = (item) => JSON.stringify(item)) {}

  push(item: T): void {
    this.items.push(item);
    for (const check of [...this.waiters]) check();
  }

  /** No more items will come: pending waits whose condition does not hold fail now. */
  end(reason: string): void {
    this.endReason ??= reason;
    for (const check of [...this.waiters]) check();
  }

  get ended(): boolean {
    return this.endReason !== undefined;
  }

  until(condition: (items: readonly T[]) => boolean, what: string, ms = WAIT_MS): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const check = () => {
        if (condition(this.items)) {
          finish();
          resolve();
        } else if (this.endReason !== undefined) {
          finish();
          reject(new Error(`${what}: ${this.endReason} first; ${this.summary()}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`${what}: not within ${ms} ms; ${this.summary()}`));
      }, ms);
      const finish = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  private summary(): string {
    const last = this.items.slice(-3).map(this.describeItem);
    return `${this.items.length} received, the last: ${last.join(' | ').slice(0, 600)}`;
  }
}

/** An event as a subscriber saw it: its SSE name (or `type`), its SSE id, its JSON. */
interface Received {
  type: string;
  id: string | undefined;
  data: any;
}

const describeReceived = (event: Received) => `${event.type} ${event.id ?? '-'} ${event.data?.seq ?? ''}`;
const hasType = (type: string) => (items: readonly Received[]) => items.some((event) => event.type === type);
const isTerminalUpdate = (event: Received) =>
  event.type === 'update' && TERMINAL.has(event.data.snapshot.status);
const sawTerminal = (items: readonly Received[]) => items.some(isTerminalUpdate);
const sawSeq = (runId: string, seq: number) => (items: readonly Received[]) =>
  items.some((event) => event.data?.run_id === runId && event.data.seq >= seq);
const ofType = (items: readonly Received[], type: string) => items.filter((event) => event.type === type);
const seqs = (items: readonly { seq: number }[]) => items.map((item) => item.seq);
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** Seqs grow strictly (the delivery contract: seq only grows within a subscription). */
function expectIncreasing(values: readonly number[], what: string): void {
  for (let i = 1; i < values.length; i++) {
    if (!(values[i]! > values[i - 1]!)) {
      throw new Error(`${what}: seq ${values[i]} after ${values[i - 1]} at position ${i}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Clients

/** Closed after every test, whatever happened. */
const closers: (() => unknown)[] = [];

interface EventSourceClient {
  es: EventSource;
  events: Collector<Received>;
  /** Error events and the readyState right after each. */
  errors: Collector<{ code: number | undefined; message: string | undefined; readyState: number }>;
  /** Each request the EventSource made: the Last-Event-ID it sent and the status it got. */
  requests: { lastEventId: string | null; status: number }[];
  /** Cuts the current connection as a network drop would: the EventSource reconnects by itself. */
  cut(): void;
  /** Holds the EventSource's next (re)connect until `release`. */
  hold(): void;
  release(): void;
  close(): void;
}

const SSE_EVENT_NAMES = ['snapshot', 'update', 'log', 'keepalive', 'reconnect'];

/** An `eventsource` EventSource with a bearer token; `lastEventId` goes with its first request only. */
function openEventSource(url: string, token: string, lastEventId?: number): EventSourceClient {
  const requests: EventSourceClient['requests'] = [];
  let first = true;
  let gate: { promise: Promise<void>; open: () => void } | undefined;
  let cutCurrent: (() => void) | undefined;
  const es = new EventSource(url, {
    fetch: async (input, init) => {
      if (gate) await gate.promise;
      const headers: Record<string, string> = { ...init.headers, authorization: `Bearer ${token}` };
      if (first && lastEventId !== undefined) headers['Last-Event-ID'] = String(lastEventId);
      first = false;
      const response = await fetch(input, { ...init, headers });
      requests.push({ lastEventId: headers['Last-Event-ID'] ?? null, status: response.status });
      if (response.status !== 200 || !response.body) return response;
      // The body passes through a stream the test can end, like a dropped connection.
      const upstream = response.body.getReader();
      cutCurrent = () => {
        upstream.cancel().catch(() => {});
      };
      const body = new ReadableStream<Uint8Array>({
        async pull(controller) {
          const { done, value } = await upstream.read();
          if (done) controller.close();
          else controller.enqueue(value);
        },
        cancel: (reason) => upstream.cancel(reason),
      });
      return new Response(body, { status: response.status, headers: response.headers });
    },
  });
  const events = new Collector<Received>(describeReceived);
  for (const name of SSE_EVENT_NAMES) {
    es.addEventListener(name, (event: MessageEvent) => {
      events.push({ type: name, id: event.lastEventId || undefined, data: JSON.parse(event.data) });
    });
  }
  const errors: EventSourceClient['errors'] = new Collector();
  es.addEventListener('error', (event) => {
    const error = event as Event & { code?: number; message?: string };
    errors.push({ code: error.code, message: error.message, readyState: es.readyState });
    if (es.readyState === EventSource.CLOSED) events.end('the EventSource closed');
  });
  const client: EventSourceClient = {
    es,
    events,
    errors,
    requests,
    cut: () => cutCurrent?.(),
    hold: () => {
      let open = () => {};
      const promise = new Promise<void>((resolve) => {
        open = resolve;
      });
      gate = { promise, open };
    },
    release: () => {
      gate?.open();
      gate = undefined;
    },
    close: () => {
      client.release();
      es.close();
    },
  };
  closers.push(client.close);
  return client;
}

/** Resolves when the EventSource has stopped for good (it got a 204 or a fatal answer). */
function untilClosed(client: EventSourceClient, what: string): Promise<void> {
  return client.errors.until(
    () => client.es.readyState === EventSource.CLOSED,
    `${what}: the EventSource to stop reconnecting`,
  );
}

interface SseFrame {
  id: string | undefined;
  event: string;
  data: string;
  /** Field names in the order they came. */
  fields: string[];
}

interface RawStream {
  response: Response;
  /** Body chunks as read, decoded. */
  chunks: string[];
  frames: Collector<SseFrame>;
  retries: number[];
  /** Resolves when the server ended the body. */
  ended: Promise<void>;
  close(): void;
}

/** An SSE stream read with fetch and a line parser, to see the bytes and headers themselves. */
async function openRaw(url: string, token: string, headers: Record<string, string> = {}): Promise<RawStream> {
  const abort = new AbortController();
  const response = await fetch(url, {
    headers: { accept: 'text/event-stream', authorization: `Bearer ${token}`, ...headers },
    signal: abort.signal,
  });
  const frames = new Collector<SseFrame>((frame) => `${frame.event} ${frame.id ?? '-'}`);
  const stream: RawStream = {
    response,
    chunks: [],
    frames,
    retries: [],
    ended: Promise.resolve(),
    close: () => abort.abort(),
  };
  closers.push(stream.close);
  let current: SseFrame = { id: undefined, event: 'message', data: '', fields: [] };
  let data: string[] = [];
  let buffer = '';
  const line = (text: string) => {
    if (text === '') {
      if (data.length > 0 || current.id !== undefined) {
        frames.push({ ...current, data: data.join('\n') });
      }
      current = { id: undefined, event: 'message', data: '', fields: [] };
      data = [];
      return;
    }
    if (text.startsWith(':')) return;
    const colon = text.indexOf(':');
    const field = colon === -1 ? text : text.slice(0, colon);
    let value = colon === -1 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    current.fields.push(field);
    if (field === 'id') current.id = value;
    else if (field === 'event') current.event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'retry') stream.retries.push(Number(value));
  };
  stream.ended = (async () => {
    if (!response.body) return frames.end('no body');
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const text = decoder.decode(value, { stream: true });
        stream.chunks.push(text);
        buffer += text;
        const lines = buffer.split('\n');
        buffer = lines.pop() ?? '';
        for (const each of lines) line(each);
      }
      frames.end('the server ended the stream');
    } catch (err) {
      // A failure is reported by the waits on `frames`, which end with its message.
      frames.end(`the stream failed: ${(err as Error).message}`);
    }
  })();
  return stream;
}

/** Frames as events (keep-alives left out). */
const eventsOf = (frames: readonly SseFrame[]): Received[] =>
  frames
    .filter((frame) => frame.event !== 'keepalive')
    .map((frame) => ({ type: frame.event, id: frame.id, data: JSON.parse(frame.data) }));

interface SocketClient {
  socket: Socket;
  events: Collector<Received>;
  /**
   * Subscribes; answers the ack and how many `run_event`s arrived between the request and the ack
   * (counted in the ack callback itself, before any later packet is handled).
   */
  subscribe(runId: string, since?: number): Promise<{ ack: any; eventsBeforeAck: number }>;
  /** Connects (again) and waits for the connection. */
  connect(): Promise<void>;
  close(): void;
}

async function connectSocket(url: string, token: string): Promise<SocketClient> {
  const socket = io(url, {
    transports: ['websocket'],
    auth: { token },
    reconnection: false,
    forceNew: true,
    autoConnect: false,
  });
  const events = new Collector<Received>(describeReceived);
  socket.on('run_event', (event: any) => events.push({ type: event.type, id: undefined, data: event }));
  socket.on('disconnect', (reason) => events.end(`the socket disconnected (${reason})`));
  const client: SocketClient = {
    socket,
    events,
    connect: () =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('socket connect: no answer')), WAIT_MS);
        socket.once('connect', () => {
          clearTimeout(timer);
          resolve();
        });
        socket.once('connect_error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
        socket.connect();
      }),
    subscribe: (runId, since) =>
      new Promise((resolve, reject) => {
        const payload = since === undefined ? { run_id: runId } : { run_id: runId, since };
        const before = events.items.length;
        socket.timeout(5000).emit('subscribe', payload, (err: Error | null, ack: any) => {
          const eventsBeforeAck = events.items.length - before;
          if (err) reject(err);
          else resolve({ ack, eventsBeforeAck });
        });
      }),
    close: () => socket.disconnect(),
  };
  closers.push(client.close);
  await client.connect();
  return client;
}

// ---------------------------------------------------------------------------------------------

/** The cursors a multiplexed stream's id carries: `<run_id>:<seq>,…`. */
function cursorsOf(id: string | undefined): Map<string, string> {
  const cursors = new Map<string, string>();
  for (const part of (id ?? '').split(',')) {
    const [runId, seq] = part.split(':');
    if (runId && seq !== undefined) cursors.set(runId, seq);
  }
  return cursors;
}

/** The event's own run's cursor in its multiplexed id. */
function ownCursor(event: { id?: string | undefined; data: { run_id: string } }): string | undefined {
  return cursorsOf(event.id).get(event.data.run_id);
}

describe('live delivery', () => {
  let server: TestServer;
  let world: World;
  let token: { viewer: string; operator: string };

  beforeAll(async () => {
    // A short reconnect delay so EventSource's reconnect-then-204 happens quickly.
    server = await startServer({ RUNCAST_SSE_RETRY_MS: '100' });
    world = await makeWorld(server.url);
    token = { viewer: world.viewer.token!, operator: world.operator.token! };
  });

  afterEach(async () => {
    for (const close of closers.splice(0)) close();
    // Closed connections leave the Hub by themselves.
    await vi.waitFor(
      () =>
        expect(server.runcast.hub.stats()).toEqual({
          subscribers: 0,
          rooms: 0,
          subscriptions: 0,
          waiters: 0,
        }),
      { timeout: 5000 },
    );
  });

  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  const streamUrl = (runId: string) => `${server.url}/api/v1/runs/${runId}/stream`;

  async function newRun(): Promise<string> {
    const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    return created.body.run_id;
  }

  /** A progress update by the worker; answers the new snapshot. */
  async function update(runId: string, body: unknown, api: Api = world.worker): Promise<any> {
    const answer = await api.patch(`/runs/${runId}/progress`, body);
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    return answer.body;
  }

  /** One log line by the worker; answers its seq. */
  async function log(runId: string, message: string): Promise<number> {
    const answer = await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message, stage: 'APPLY' });
    expect(answer.status, JSON.stringify(answer.body)).toBe(201);
    return answer.body.first_seq;
  }

  async function logs(runId: string, count: number, prefix: string): Promise<number[]> {
    const out: number[] = [];
    for (let i = 1; i <= count; i++) out.push(await log(runId, `${prefix} ${i}`));
    return out;
  }

  /** The stored log events of a run, oldest first. */
  async function storedLogs(runId: string): Promise<any[]> {
    const answer = await world.viewer.get(`/runs/${runId}/events?since=0&limit=1000`);
    expect(answer.status).toBe(200);
    expect(answer.body.events_truncated).toBe(false);
    return answer.body.events;
  }

  interface PollResult {
    logs: any[];
    last: any;
    answers: number;
    notModified: number;
  }

  /** A long-poll loop with fetch: follows `since` and the ETag until the run is terminal. */
  async function pollUntilTerminal(runId: string, start: { seq: number; etag: string }): Promise<PollResult> {
    const result: PollResult = { logs: [], last: undefined, answers: 0, notModified: 0 };
    let cursor = start.seq;
    let etag = start.etag;
    for (let round = 0; round < 5000; round++) {
      const res = await fetch(`${server.url}/api/v1/runs/${runId}/progress?since=${cursor}&wait=5`, {
        headers: { authorization: `Bearer ${token.viewer}`, 'if-none-match': etag },
      });
      if (res.status === 304) {
        result.notModified++;
        await res.arrayBuffer();
        continue;
      }
      expect(res.status).toBe(200);
      const body = (await res.json()) as any;
      result.answers++;
      expect(body.seq).toBeGreaterThan(cursor);
      expect(res.headers.get('etag')).toBe(`"${body.seq}"`);
      expect(body.events_truncated).toBe(false);
      expect(body.events_more).toBeUndefined();
      for (const event of body.events) expect(event.seq).toBeGreaterThan(cursor);
      result.logs.push(...body.events);
      result.last = body;
      cursor = body.seq;
      etag = res.headers.get('etag')!;
      if (TERMINAL.has(body.status)) return result;
    }
    throw new Error(`the long-poll loop never saw ${runId} end`);
  }

  // -------------------------------------------------------------------------------------------

  it('fans one run out to SSE, Socket.IO and long-poll subscribers at once, losing nothing', async () => {
    const runId = await newRun();

    // Two EventSources and two sockets, each live (snapshot / ack) before anything is produced.
    const sse = [
      openEventSource(streamUrl(runId), token.viewer),
      openEventSource(streamUrl(runId), token.operator),
    ];
    await Promise.all(sse.map((client) => client.events.until(hasType('snapshot'), 'the SSE snapshot')));
    const sockets = await Promise.all([
      connectSocket(server.url, token.viewer),
      connectSocket(server.url, token.operator),
    ]);
    for (const client of sockets) {
      const { ack, eventsBeforeAck } = await client.subscribe(runId);
      expect(ack).toMatchObject({ ok: true, snapshot: { run_id: runId, type: 'snapshot', seq: 0 } });
      expect(ack.snapshot.snapshot).toMatchObject({ run_id: runId, status: 'CREATED', seq: 0 });
      expect(eventsBeforeAck).toBe(0);
    }
    const first = await fetch(`${server.url}/api/v1/runs/${runId}/progress`, {
      headers: { authorization: `Bearer ${token.viewer}` },
    });
    const firstBody = (await first.json()) as any;
    expect(firstBody.seq).toBe(0);
    const polling = pollUntilTerminal(runId, { seq: 0, etag: first.headers.get('etag')! });
    polling.catch(() => {}); // awaited below; this only keeps an early failure from going unhandled

    // The worker: 200 updates and 200 logs, interleaved, then COMPLETED.
    const logSeqs: number[] = [];
    for (let i = 1; i <= 200; i++) {
      await update(runId, {
        status: 'RUNNING',
        stage: 'EXPORT',
        current_stage: `EXPORT repo ${i}`,
        progress: { percentage: i / 2, done: i, total: 200, unit: 'steps' },
      });
      logSeqs.push(await log(runId, `line ${i}`));
    }
    const final = await update(runId, {
      status: 'COMPLETED',
      progress: { percentage: 100, done: 200, total: 200 },
    });
    expect(final).toMatchObject({ status: 'COMPLETED', seq: 401 });
    expect(logSeqs).toEqual(range(1, 200).map((i) => 2 * i));

    const stored = await storedLogs(runId);
    expect(seqs(stored)).toEqual(logSeqs);

    /** What every subscriber must have seen: all logs once, in order, and the terminal state last. */
    const checkLive = (events: readonly Received[], who: string) => {
      expectIncreasing(seqs(events.map((event) => event.data)), who);
      expect(
        ofType(events, 'log').map((event) => event.data),
        who,
      ).toEqual(stored);
      const last = events[events.length - 1]!;
      expect(last.type, who).toBe('update');
      expect(last.data).toMatchObject({ run_id: runId, seq: 401, type: 'update' });
      expect(last.data.snapshot, who).toMatchObject({ status: 'COMPLETED', seq: 401 });
      for (const event of ofType(events, 'update')) expect(event.data.snapshot.seq, who).toBe(event.data.seq);
    };

    await Promise.all([
      ...sse.map((client) => client.events.until(sawTerminal, 'SSE: the terminal update')),
      ...sockets.map((client) => client.events.until(sawTerminal, 'Socket.IO: the terminal update')),
    ]);
    const polled = await polling;

    for (const [i, client] of sse.entries()) {
      const events = client.events.items;
      expect(events[0]!.type).toBe('snapshot');
      expect(events[0]!.data).toMatchObject({ run_id: runId, seq: 0, type: 'snapshot' });
      const live = events.slice(1);
      checkLive(live, `SSE ${i}`);
      for (const event of live) expect(event.id, `SSE ${i}`).toBe(String(event.data.seq));
    }
    for (const [i, client] of sockets.entries()) checkLive(client.events.items, `Socket.IO ${i}`);

    // The same JSON on every transport, for every seq two subscribers both got.
    const bySeq = (events: readonly Received[]) =>
      new Map(events.map((event) => [event.data.seq, event.data]));
    const sseEvents = bySeq(sse[0]!.events.items.slice(1));
    for (const client of [sse[1]!, ...sockets]) {
      const other = bySeq(client.events.items.filter((event) => event.type !== 'snapshot'));
      for (const seq of [...logSeqs, 401]) expect(other.get(seq)).toEqual(sseEvents.get(seq));
      for (const [seq, data] of other) if (sseEvents.has(seq)) expect(data).toEqual(sseEvents.get(seq));
    }

    // The long-poll loop: every log once, in order, and it stopped on the terminal snapshot.
    expect(polled.logs).toEqual(stored);
    expect(polled.last).toMatchObject({ run_id: runId, status: 'COMPLETED', seq: 401 });

    // The server ends the SSE stream after the terminal update; the reconnect (at the final
    // seq) gets 204 and the EventSource stops.
    for (const client of sse) {
      await untilClosed(client, 'SSE');
      expect(client.requests).toEqual([
        { lastEventId: null, status: 200 },
        { lastEventId: '401', status: 204 },
      ]);
      expect(client.errors.items[client.errors.items.length - 1]).toMatchObject({ code: 204 });
    }
  }, 60_000);

  it('resumes an EventSource from Last-Event-ID: exactly the missed logs, the snapshot, then live events', async () => {
    const runId = await newRun();
    const first = openEventSource(streamUrl(runId), token.viewer);
    await first.events.until(hasType('snapshot'), 'the first snapshot');
    await update(runId, { status: 'RUNNING', stage: 'EXPORT' });
    await logs(runId, 10, 'before');
    const lastSeen = (await update(runId, { progress: { percentage: 10 } })).seq;
    expect(lastSeen).toBe(12);
    await first.events.until(sawSeq(runId, lastSeen), `seq ${lastSeen} before the cut`);
    first.close();
    expect(first.events.items.map((event) => event.id)).toEqual(['0', ...range(1, 12).map(String)]);

    // While it is away: 50 logs and a progress update (updates are not replayed: the snapshot has it).
    const missed = await logs(runId, 50, 'missed');
    expect(missed).toEqual(range(13, 62));
    await update(runId, { progress: { percentage: 50, message: 'half way' } });

    const resumed = openEventSource(streamUrl(runId), token.viewer, lastSeen);
    await resumed.events.until(hasType('snapshot'), 'the resumed snapshot');
    const opening = resumed.events.items;
    const snapshotAt = opening.findIndex((event) => event.type === 'snapshot');
    expect(opening.slice(0, snapshotAt).map((event) => event.type)).toEqual(missed.map(() => 'log'));
    expect(opening.slice(0, snapshotAt).map((event) => event.data.seq)).toEqual(missed);
    expect(opening.slice(0, snapshotAt).map((event) => event.data.log.message)).toEqual(
      range(1, 50).map((i) => `missed ${i}`),
    );
    expect(opening[snapshotAt]!.data).toMatchObject({ type: 'snapshot', seq: 63 });
    expect(opening[snapshotAt]!.data.snapshot).toMatchObject({
      status: 'RUNNING',
      seq: 63,
      progress: { percentage: 50, message: 'half way' },
    });
    expect(opening[snapshotAt]!.data).not.toHaveProperty('events_truncated');
    expect(resumed.requests[0]).toEqual({ lastEventId: '12', status: 200 });

    // Then live events.
    const live = await logs(runId, 3, 'live');
    await update(runId, { status: 'COMPLETED' });
    await resumed.events.until(sawTerminal, 'the live terminal update');
    const after = resumed.events.items.slice(snapshotAt + 1);
    expect(after.map((event) => [event.type, event.data.seq])).toEqual([
      ...live.map((seq) => ['log', seq]),
      ['update', 67],
    ]);
    await untilClosed(resumed, 'the resumed EventSource');
    expect(resumed.requests).toEqual([
      { lastEventId: '12', status: 200 },
      { lastEventId: '67', status: 204 },
    ]);
  }, 60_000);

  it('an EventSource whose connection drops resumes by itself from its Last-Event-ID', async () => {
    const runId = await newRun();
    const client = openEventSource(streamUrl(runId), token.viewer);
    await client.events.until(hasType('snapshot'), 'the first snapshot');
    await update(runId, { status: 'RUNNING' });
    await logs(runId, 5, 'before');
    await client.events.until(sawSeq(runId, 6), 'seq 6 before the cut');

    const items = client.events.items;
    expect(items.map((event) => event.data.seq)).toEqual(range(0, 6));

    client.hold();
    client.cut();
    await client.errors.until((errors) => errors.length > 0, 'the EventSource to notice the cut');
    expect(client.es.readyState).toBe(EventSource.CONNECTING);
    const missed = await logs(runId, 50, 'missed');
    client.release();
    await client.events.until((all) => ofType(all, 'snapshot').length === 2, 'the second snapshot');
    expect(client.requests[1]).toEqual({ lastEventId: '6', status: 200 });
    // What the reconnect brought: exactly the 50 missed logs, then the snapshot.
    expect(items.slice(7).map((event) => [event.type, event.id])).toEqual([
      ...missed.map((seq) => ['log', String(seq)]),
      ['snapshot', '56'],
    ]);

    await update(runId, { status: 'COMPLETED' });
    await client.events.until(sawTerminal, 'the terminal update');
    expect(items[items.length - 1]!.data).toMatchObject({ type: 'update', seq: 57 });
    await untilClosed(client, 'the EventSource');
    expect(client.requests.map((request) => [request.lastEventId, request.status])).toEqual([
      [null, 200],
      ['6', 200],
      ['57', 204],
    ]);
  }, 30_000);

  it('resumes a Socket.IO subscription from since: the missed logs come before the ack, then live ones', async () => {
    const runId = await newRun();
    const client = await connectSocket(server.url, token.viewer);
    const opened = await client.subscribe(runId);
    expect(opened.ack).toMatchObject({ ok: true, snapshot: { seq: 0 } });
    await update(runId, { status: 'RUNNING' });
    await logs(runId, 5, 'before');
    await client.events.until(sawSeq(runId, 6), 'seq 6 before the cut');
    const lastSeen = client.events.items[client.events.items.length - 1]!.data.seq;
    expect(lastSeen).toBe(6);

    client.socket.disconnect();
    const missed = await logs(runId, 50, 'missed');
    expect(missed).toEqual(range(7, 56));

    const events = new Collector<Received>(describeReceived);
    client.socket.on('run_event', (event: any) =>
      events.push({ type: event.type, id: undefined, data: event }),
    );
    await client.connect();
    const { ack, eventsBeforeAck } = await client.subscribe(runId, lastSeen);
    expect(ack).toMatchObject({ ok: true, snapshot: { run_id: runId, type: 'snapshot', seq: 56 } });
    expect(ack.snapshot.snapshot).toMatchObject({ status: 'RUNNING', seq: 56 });
    expect(eventsBeforeAck).toBe(50);
    expect(events.items.map((event) => [event.type, event.data.seq])).toEqual(
      missed.map((seq) => ['log', seq]),
    );
    expect(events.items.map((event) => event.data.log.message)).toEqual(
      range(1, 50).map((i) => `missed ${i}`),
    );
    expect(events.items.map((event) => event.data)).toEqual((await storedLogs(runId)).slice(5));

    const live = await logs(runId, 3, 'live');
    await update(runId, { status: 'COMPLETED' });
    await events.until(sawTerminal, 'the live terminal update');
    expect(events.items.slice(50).map((event) => [event.type, event.data.seq])).toEqual([
      ...live.map((seq) => ['log', seq]),
      ['update', 60],
    ]);
  }, 60_000);

  it('carries three runs on one multiplexed stream, resumes each from ?since= and ends when all are terminal', async () => {
    const runs = [await newRun(), await newRun(), await newRun()];
    const url = `${server.url}/api/v1/stream?runs=${runs.join(',')}`;
    const stream = await openRaw(url, token.viewer);
    expect(stream.response.status).toBe(200);
    await stream.frames.until(
      (frames) => ofType(eventsOf(frames), 'snapshot').length === 3,
      'three snapshots',
    );
    expect(eventsOf(stream.frames.items).map((event) => [event.type, ownCursor(event)])).toEqual(
      runs.map(() => ['snapshot', '0']),
    );

    // Events of all three, interleaved.
    for (let i = 1; i <= 3; i++) {
      for (const runId of runs) {
        await update(runId, { status: 'RUNNING', progress: { percentage: i * 10 } });
        await log(runId, `${runId} line ${i}`);
      }
    }
    await stream.frames.until(
      (frames) => runs.every((runId) => sawSeq(runId, 6)(eventsOf(frames))),
      'seq 6 of every run',
    );
    const firstPass = eventsOf(stream.frames.items);
    // Each id is the cursor of every run on the stream: one Last-Event-ID resumes them all.
    for (const event of firstPass) expect(ownCursor(event)).toBe(String(event.data.seq));
    expect(cursorsOf(firstPass.at(-1)?.id)).toEqual(new Map(runs.map((runId) => [runId, '6'])));
    for (const runId of runs) {
      const own = firstPass.filter((event) => event.data.run_id === runId);
      expect(own.map((event) => [event.type, event.data.seq])).toEqual([
        ['snapshot', 0],
        ['update', 1],
        ['log', 2],
        ['update', 3],
        ['log', 4],
        ['update', 5],
        ['log', 6],
      ]);
    }
    stream.close();

    // Away: a different number of logs per run; then resume each from its own cursor.
    const missed = [await logs(runs[0]!, 3, 'missed'), await logs(runs[1]!, 1, 'missed'), []];
    const since = runs.map((runId) => `${runId}:6`).join(',');
    const resumed = await openRaw(`${url}&since=${since}`, token.viewer);
    expect(resumed.response.status).toBe(200);
    await resumed.frames.until(
      (frames) => ofType(eventsOf(frames), 'snapshot').length === 3,
      'three snapshots',
    );
    const opening = eventsOf(resumed.frames.items);
    for (const [i, runId] of runs.entries()) {
      const own = opening.filter((event) => event.data.run_id === runId);
      const seqNow = 6 + missed[i]!.length;
      expect(own.map((event) => [event.type, ownCursor(event)])).toEqual([
        ...missed[i]!.map((seq) => ['log', String(seq)]),
        ['snapshot', String(seqNow)],
      ]);
    }

    // Live: the stream goes on while any run is live and ends after the last terminal update.
    await update(runs[0]!, { status: 'COMPLETED' });
    const late = await log(runs[1]!, 'after the first ended');
    await update(runs[1]!, { status: 'FAILED', error: { code: 'BOOM', message: 'it broke' } });
    const lastLog = await log(runs[2]!, 'the last one');
    await update(runs[2]!, { status: 'COMPLETED' });
    await resumed.ended;
    const live = eventsOf(resumed.frames.items).slice(opening.length);
    expect(live.map((event) => `${event.data.run_id}:${ownCursor(event)}`)).toEqual([
      `${runs[0]}:10`,
      `${runs[1]}:${late}`,
      `${runs[1]}:${late + 1}`,
      `${runs[2]}:${lastLog}`,
      `${runs[2]}:${lastLog + 1}`,
    ]);
    expect(live.filter(isTerminalUpdate).map((event) => event.data.snapshot.status)).toEqual([
      'COMPLETED',
      'FAILED',
      'COMPLETED',
    ]);

    // Every run at its final seq: nothing more to say.
    const finals = [10, late + 1, lastLog + 1];
    const done = await fetch(`${url}&since=${runs.map((runId, i) => `${runId}:${finals[i]}`).join(',')}`, {
      headers: { authorization: `Bearer ${token.viewer}` },
    });
    expect(done.status).toBe(204);
  }, 60_000);

  it('a multiplexed EventSource stops reconnecting once all its runs are terminal', async () => {
    const runs = [await newRun(), await newRun(), await newRun()];
    const client = openEventSource(`${server.url}/api/v1/stream?runs=${runs.join(',')}`, token.viewer);
    await client.events.until((items) => ofType(items, 'snapshot').length === 3, 'three snapshots');
    for (const runId of runs) {
      await update(runId, { status: 'RUNNING' });
      await log(runId, 'hello');
      await update(runId, { status: 'COMPLETED' });
    }
    await client.events.until(
      (items) => items.filter(isTerminalUpdate).length === 3,
      'the three terminal updates',
    );
    // Either it stops, or it keeps coming back: four requests are enough to tell.
    await client.errors.until(
      () => client.es.readyState === EventSource.CLOSED || client.requests.length >= 4,
      'the EventSource to stop or reconnect repeatedly',
    );
    client.close();
    const finals = runs.map((runId) => `${runId}:3`);
    expect(client.requests, 'reconnects after the end').toEqual([
      { lastEventId: null, status: 200 },
      { lastEventId: expect.stringContaining(finals[2]!), status: 204 },
    ]);
    expect(ofType(client.events.items, 'snapshot')).toHaveLength(3);
  }, 30_000);

  it('a multiplexed EventSource that loses its connection gets the missed logs of every run', async () => {
    const runs = [await newRun(), await newRun(), await newRun()];
    const client = openEventSource(`${server.url}/api/v1/stream?runs=${runs.join(',')}`, token.viewer);
    await client.events.until((items) => ofType(items, 'snapshot').length === 3, 'three snapshots');
    for (const runId of runs) {
      await update(runId, { status: 'RUNNING' });
      await log(runId, 'before');
    }
    await client.events.until(sawSeq(runs[2]!, 2), `${runs[2]}:2 before the cut`);

    client.hold();
    client.cut();
    await client.errors.until((errors) => errors.length > 0, 'the EventSource to notice the cut');
    for (const runId of runs) await logs(runId, 2, 'missed');
    client.release();
    await client.events.until((items) => ofType(items, 'snapshot').length === 6, 'three snapshots again');
    expect(client.requests[1]?.lastEventId).toContain(`${runs[2]}:2`);

    for (const runId of runs) {
      const received = new Set(
        ofType(client.events.items, 'log')
          .filter((event) => event.data.run_id === runId)
          .map((event) => event.data.seq),
      );
      expect(
        [...received].sort((a, b) => a - b),
        `the logs of ${runId} that reached the EventSource`,
      ).toEqual(seqs(await storedLogs(runId)));
    }
  }, 30_000);

  it('answers 204 to a reconnect at the final seq, and the snapshot then the end without a cursor', async () => {
    const runId = await newRun();
    await update(runId, { status: 'RUNNING' });
    await logs(runId, 3, 'line');
    const final = await update(runId, { status: 'COMPLETED' });
    expect(final.seq).toBe(5);

    for (const headers of [{ 'last-event-id': '5' }, {}] as Record<string, string>[]) {
      const query = 'last-event-id' in headers ? '' : '?since=5';
      const res = await fetch(`${streamUrl(runId)}${query}`, {
        headers: { authorization: `Bearer ${token.viewer}`, ...headers },
      });
      expect(res.status, query).toBe(204);
      expect(await res.text()).toBe('');
    }

    // No cursor: the snapshot of the terminal run, then the server ends the stream.
    const whole = await openRaw(streamUrl(runId), token.viewer);
    expect(whole.response.status).toBe(200);
    await whole.ended;
    expect(eventsOf(whole.frames.items).map((event) => [event.type, event.id])).toEqual([['snapshot', '5']]);
    expect(eventsOf(whole.frames.items)[0]!.data.snapshot).toMatchObject({ status: 'COMPLETED', seq: 5 });

    // A cursor behind the end: the logs after it, the snapshot, the end.
    const behind = await openRaw(streamUrl(runId), token.viewer, { 'last-event-id': '2' });
    await behind.ended;
    expect(eventsOf(behind.frames.items).map((event) => [event.type, event.id])).toEqual([
      ['log', '3'],
      ['log', '4'],
      ['snapshot', '5'],
    ]);

    // A real EventSource: the snapshot, the end, one reconnect at seq 5 that gets 204, stop.
    const es = openEventSource(streamUrl(runId), token.viewer);
    await untilClosed(es, 'the EventSource on a finished run');
    expect(es.events.items.map((event) => [event.type, event.id])).toEqual([['snapshot', '5']]);
    expect(es.requests).toEqual([
      { lastEventId: null, status: 200 },
      { lastEventId: '5', status: 204 },
    ]);
  });

  it('writes the headers, the retry line and the snapshot at once', async () => {
    const runId = await newRun();
    await update(runId, { status: 'RUNNING', stage: 'DISCOVERY' });
    const abort = new AbortController();
    closers.push(() => abort.abort());
    const res = await fetch(streamUrl(runId), {
      headers: { authorization: `Bearer ${token.viewer}` },
      signal: abort.signal,
    });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(res.headers.get('cache-control')).toContain('no-cache');
    expect(res.headers.get('x-accel-buffering')).toBe('no');
    // fetch accepts gzip: the stream is compressed, and its first write still decodes at once.
    expect(res.headers.get('content-encoding')).toBe('gzip');
    const reader = res.body!.getReader();
    const { value } = await reader.read();
    const chunk = new TextDecoder().decode(value);
    expect(chunk.startsWith('retry: ')).toBe(true);
    expect(chunk).toMatch(/^retry: 100\n/);
    expect(chunk).toContain('event: snapshot\n');
    expect(chunk).toContain(`id: 1\nevent: snapshot\ndata: {`);

    // Resuming: the replayed logs come in that same first write, before the snapshot.
    await logs(runId, 2, 'line');
    const resumed = await fetch(streamUrl(runId), {
      headers: { authorization: `Bearer ${token.viewer}`, 'last-event-id': '1' },
      signal: abort.signal,
    });
    const second = await resumed.body!.getReader().read();
    const text = new TextDecoder().decode(second.value);
    expect(text.startsWith('retry: ')).toBe(true);
    const order = ['id: 2\nevent: log\n', 'id: 3\nevent: log\n', 'id: 3\nevent: snapshot\n'].map((frame) =>
      text.indexOf(frame),
    );
    expect(order.every((at) => at > 0)).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
  });

  describe('keep-alive', () => {
    let fast: TestServer;
    let fastWorld: World;
    beforeAll(async () => {
      fast = await startServer({ RUNCAST_SSE_KEEPALIVE_MS: '50' });
      fastWorld = await makeWorld(fast.url);
    });
    afterAll(async () => {
      expect(fast.errorLogs).toEqual([]);
      await fast.close();
    });

    it('sends `event: keepalive` with a timestamp and no id at the configured interval', async () => {
      const url = `${fast.url}/api/v1/runs/${fastWorld.runId}/stream`;
      const stream = await openRaw(url, fastWorld.viewer.token!);
      const keepalives = (frames: readonly SseFrame[]) =>
        frames.filter((frame) => frame.event === 'keepalive');
      await stream.frames.until((frames) => keepalives(frames).length >= 2, 'two keep-alives');
      for (const frame of keepalives(stream.frames.items)) {
        expect(frame.fields).toEqual(['event', 'data']);
        expect(frame.id).toBeUndefined();
        const data = JSON.parse(frame.data);
        expect(Object.keys(data)).toEqual(['timestamp']);
        expect(Number.isNaN(Date.parse(data.timestamp))).toBe(false);
      }

      // An EventSource keeps its last event id across keep-alives: the next event still follows on.
      const es = openEventSource(url, fastWorld.viewer.token!);
      await es.events.until(
        (items) => ofType(items, 'keepalive').length >= 1,
        'a keep-alive on the EventSource',
      );
      expect(ofType(es.events.items, 'keepalive')[0]!.id).toBeUndefined();
      const answer = await fastWorld.worker.post(`/runs/${fastWorld.runId}/logs`, {
        level: 'info',
        message: 'x',
      });
      expect(answer.status).toBe(201);
      await es.events.until(hasType('log'), 'the log after keep-alives');
      expect(ofType(es.events.items, 'log')[0]!.id).toBe(String(answer.body.first_seq));
      await stream.frames.until(
        (frames) => frames.some((frame) => frame.event === 'log'),
        'the log on the raw stream',
      );
      for (const close of closers.splice(0)) close();
      await vi.waitFor(() => expect(fast.runcast.hub.stats().subscribers).toBe(0), { timeout: 5000 });
    });
  });
});
