import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { type ClientRequest, request as httpRequest, type IncomingMessage } from 'node:http';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LogEntry, RunEvent, RunSnapshot, SnapshotEvent, SubscribeAck } from '@runcast/protocol';
import { EventSource } from 'eventsource';
import { io, type Socket } from 'socket.io-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  Api,
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { inFlight, within } from '../support/async.js';
import {
  CHILD_ADMIN_PASSWORD,
  freePort,
  killAllServers,
  requireBuiltServer,
  ServerProcess,
} from '../support/server-process.js';

// Live delivery under stress and at its edges (issue 3, DESIGN §3): a client that stops reading,
// a thousand connections coming and going, credentials on every transport, the metrics, and a
// graceful shutdown of the real server process. Real clients only: `eventsource`,
// `socket.io-client`, `fetch` and raw `node:http`.

type Frame = RunEvent | SnapshotEvent;

/* ------------------------------------------------------------------------------------------------
 * Waiting, always with a deadline
 * --------------------------------------------------------------------------------------------- */

/** Polls `check` until it holds; fails with `what` (and the last `detail`) at the deadline. */
async function until(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
  detail: () => unknown = () => '',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} ${JSON.stringify(detail())}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/* ------------------------------------------------------------------------------------------------
 * Clients, closed after every test
 * --------------------------------------------------------------------------------------------- */

const cleanups: (() => void | Promise<void>)[] = [];

/** Registers `close` to run after the current test, whatever its outcome. */
function track(close: () => void | Promise<void>): void {
  cleanups.push(close);
}

afterEach(async () => {
  for (const close of cleanups.splice(0).reverse()) {
    try {
      await close();
    } catch {
      // closing a client that is already gone
    }
  }
});

/** A Socket.IO client that never reconnects by itself (each test decides). */
function socketClient(
  url: string,
  options: { auth?: Record<string, unknown>; query?: Record<string, string> } = {},
): Socket {
  const socket = io(url, {
    path: '/socket.io',
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
    timeout: 10_000,
    ...(options.auth ? { auth: options.auth } : {}),
    ...(options.query ? { query: options.query } : {}),
  });
  track(() => {
    socket.disconnect();
  });
  return socket;
}

type ConnectResult = { connected: true } | { connected: false; error: Error & { data?: { code?: string } } };

/** Waits for `connect` or `connect_error`. */
function connected(socket: Socket): Promise<ConnectResult> {
  return within(
    new Promise<ConnectResult>((resolve) => {
      if (socket.connected) resolve({ connected: true });
      socket.once('connect', () => resolve({ connected: true }));
      socket.once('connect_error', (error) => resolve({ connected: false, error }));
    }),
    10_000,
    'the Socket.IO handshake',
  );
}

/** Connects or fails with the server's refusal. */
async function connectSocket(url: string, token: string, extraAuth: Record<string, unknown> = {}) {
  const socket = socketClient(url, { auth: { token, ...extraAuth } });
  const result = await connected(socket);
  if (!result.connected) throw new Error(`connect_error: ${JSON.stringify(result.error.data)}`);
  return socket;
}

async function subscribe(socket: Socket, runId: string, since?: number): Promise<SubscribeAck> {
  const payload = since === undefined ? { run_id: runId } : { run_id: runId, since };
  return (await socket.timeout(10_000).emitWithAck('subscribe', payload)) as SubscribeAck;
}

interface SseFrame {
  event: string;
  id?: string;
  data?: string;
  retry?: string;
}

/** Parses one SSE block (the lines between blank lines). */
function parseBlock(block: string): SseFrame | undefined {
  const frame: SseFrame = { event: 'message' };
  let any = false;
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    any = true;
    if (field === 'event') frame.event = value;
    else if (field === 'id') frame.id = value;
    else if (field === 'retry') frame.retry = value;
    else if (field === 'data') frame.data = frame.data === undefined ? value : `${frame.data}\n${value}`;
  }
  return any ? frame : undefined;
}

/** An SSE response read with `fetch`: every frame as it arrives, `done` when the body ends. */
class SseStream {
  readonly frames: SseFrame[] = [];
  readonly done: Promise<void>;
  ended = false;
  error: unknown;

  private constructor(
    readonly response: Response,
    private readonly controller: AbortController,
  ) {
    this.done = this.pump();
  }

  static async open(
    url: string,
    token: string | undefined,
    path: string,
    extraHeaders: Record<string, string> = {},
  ): Promise<SseStream> {
    const controller = new AbortController();
    const headers: Record<string, string> = { accept: 'text/event-stream', ...extraHeaders };
    if (token) headers.authorization = `Bearer ${token}`;
    const response = await fetch(`${url}${path}`, { headers, signal: controller.signal });
    const stream = new SseStream(response, controller);
    track(() => stream.close());
    return stream;
  }

  private async pump(): Promise<void> {
    if (this.response.status !== 200 || !this.response.body) {
      await this.response.text().catch(() => '');
      this.ended = true;
      return;
    }
    const reader = this.response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          const frame = parseBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (frame) this.frames.push(frame);
        }
      }
    } catch (err) {
      if (!this.controller.signal.aborted) this.error = err;
    } finally {
      this.ended = true;
    }
  }

  events(type?: string): Frame[] {
    return this.frames
      .filter((frame) => frame.data !== undefined && (type === undefined || frame.event === type))
      .map((frame) => JSON.parse(frame.data!) as Frame);
  }

  has(event: string): boolean {
    return this.frames.some((frame) => frame.event === event);
  }

  close(): void {
    this.controller.abort();
  }
}

/**
 * Closes an in-process test server once its tests are over. `fetch`'s connection pool may hold a
 * connection it opened ahead of a request and never used; such a connection keeps a closing
 * server waiting (see "exits 0 within 10 s while a client holds a connection..." below, which
 * tests that on the real process), so nothing being in flight any more, every connection is
 * ended first.
 */
async function stopServer(server: TestServer): Promise<void> {
  server.runcast.app.server.closeAllConnections();
  await server.close();
}

/* ------------------------------------------------------------------------------------------------
 * Metrics
 * --------------------------------------------------------------------------------------------- */

function parseLabels(raw: string): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const match of raw.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[match[1]!] = match[2]!;
  return labels;
}

/** The sum of the samples of `name` whose labels include `labels` (0 when there is none). */
function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line.trim());
    if (!match || match[1] !== name) continue;
    const got = parseLabels(match[2] ?? '');
    if (Object.entries(labels).every(([key, value]) => got[key] === value)) total += Number(match[3]);
  }
  return total;
}

async function scrape(url: string, admin: Api): Promise<string> {
  const res = await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${admin.token}` } });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}: ${text}`);
  return text;
}

/* ------------------------------------------------------------------------------------------------
 * Runs
 * --------------------------------------------------------------------------------------------- */

async function newRunningRun(world: World): Promise<string> {
  const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  const runId: string = created.body.run_id;
  const running = await world.worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
  expect(running.status, JSON.stringify(running.body)).toBe(200);
  return runId;
}

/** Posts log entries in one request; answers their seqs. */
async function postLogs(api: Api, runId: string, entries: LogEntry[]): Promise<number[]> {
  const answer = await api.post(`/runs/${runId}/logs`, { entries });
  if (answer.status !== 201) throw new Error(`logs refused: ${answer.status} ${JSON.stringify(answer.body)}`);
  const { first_seq, last_seq } = answer.body as { first_seq: number; last_seq: number };
  expect(last_seq - first_seq + 1).toBe(entries.length);
  return Array.from({ length: entries.length }, (_, i) => first_seq + i);
}

async function patchProgress(api: Api, runId: string, body: unknown): Promise<RunSnapshot> {
  const answer = await api.patch<RunSnapshot>(`/runs/${runId}/progress`, body);
  if (answer.status !== 200)
    throw new Error(`update refused: ${answer.status} ${JSON.stringify(answer.body)}`);
  return answer.body;
}

const isTerminalUpdate = (event: Frame) => event.type === 'update' && event.snapshot.status === 'COMPLETED';

/* ================================================================================================
 * 1. Slow consumer
 * ============================================================================================= */

/** A raw SSE request whose response is paused once the opening snapshot arrived, and never read. */
interface PausedStream {
  req: ClientRequest;
  res: IncomingMessage;
  /** Text read before pausing (and after `drainToEnd`). */
  text: string;
  closed: boolean;
  /** Resumes reading and resolves once the connection is gone. */
  drainToEnd(timeoutMs: number): Promise<void>;
}

function openPausedStream(url: string, path: string, token: string): Promise<PausedStream> {
  return within(
    new Promise<PausedStream>((resolve, reject) => {
      const req = httpRequest(`${url}${path}`, {
        headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
        agent: false,
      });
      track(() => {
        req.destroy();
      });
      req.once('error', reject);
      req.once('response', (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(new Error(`paused stream answered ${res.statusCode}`));
          return;
        }
        // The server ends this response abruptly: errors are expected and only recorded.
        res.on('error', () => {});
        req.on('error', () => {});
        const stream: PausedStream = {
          req,
          res,
          text: '',
          closed: false,
          drainToEnd: (timeoutMs) =>
            within(
              new Promise<void>((done) => {
                if (stream.closed) {
                  done();
                  return;
                }
                res.on('data', (chunk: Buffer) => {
                  stream.text += chunk.toString('utf8');
                });
                res.once('close', () => done());
                res.resume();
              }),
              timeoutMs,
              'the slow stream to end',
            ),
        };
        res.once('close', () => {
          stream.closed = true;
        });
        const onData = (chunk: Buffer) => {
          stream.text += chunk.toString('utf8');
          if (stream.text.includes('event: snapshot')) {
            res.off('data', onData);
            res.pause(); // and never read again while the events flow
            resolve(stream);
          }
        };
        res.on('data', onData);
      });
      req.end();
    }),
    10_000,
    'the paused stream to open',
  );
}

describe('slow consumer', () => {
  const QUEUE_LIMIT = 262_144;
  const ROUNDS = 80;
  const LOGS_PER_ROUND = 250; // ~100 KB of events per commit, well under the queue limit
  const UPDATES_PER_ROUND = 5;
  // About 400 bytes an event: 20,000 log events are ~8 MB, more than the kernel buffers of a
  // loopback connection (4 MB send + 128 KB receive) plus the queue limit can absorb.
  const PADDING = 'x'.repeat(220);
  // Random, so that a compressed connection (per-message deflate) fills its buffers as fast.
  const padding = () => randomBytes(165).toString('base64');

  let server: TestServer;
  let world: World;

  beforeAll(async () => {
    server = await startServer({
      RUNCAST_SUBSCRIBER_QUEUE_LIMIT: String(QUEUE_LIMIT),
      // Every log of the test stays replayable, so that the cut-off client can resume.
      RUNCAST_EVENT_RETENTION: '100000',
    });
    world = await makeWorld(server.url);
  });

  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await stopServer(server);
  });

  it('disconnects a client that stops reading while the others receive every log exactly once', async () => {
    const runId = await newRunningRun(world);
    const hub = server.runcast.hub;
    const heapBefore = process.memoryUsage().heapUsed;
    let heapPeak = heapBefore;
    const sampler = setInterval(() => {
      heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed);
    }, 20);
    track(() => clearInterval(sampler));

    // The slow one: reads the opening, then never again.
    const slow = await openPausedStream(server.url, `/api/v1/runs/${runId}/stream`, world.viewer.token!);

    // A normal SSE subscriber: the `eventsource` package, authenticated by header.
    const sseEvents: Frame[] = [];
    let sseErrors = 0;
    const viewerToken = world.viewer.token!;
    const source = new EventSource(`${server.url}/api/v1/runs/${runId}/stream`, {
      fetch: (input, init) =>
        fetch(input, { ...init, headers: { ...init.headers, authorization: `Bearer ${viewerToken}` } }),
    });
    track(() => source.close());
    for (const type of ['snapshot', 'log', 'update']) {
      source.addEventListener(type, (message) => {
        sseEvents.push(JSON.parse((message as { data: string }).data) as Frame);
      });
    }
    source.addEventListener('error', () => {
      // The server ends the stream after the terminal update, which EventSource reports as an
      // error too: only an error before it means the connection was lost.
      if (!sseEvents.some(isTerminalUpdate)) sseErrors++;
    });
    await until(() => sseEvents.some((event) => event.type === 'snapshot'), 'the SSE snapshot');

    // A normal Socket.IO subscriber.
    const socket = await connectSocket(server.url, world.viewer.token!);
    const socketEvents: Frame[] = [];
    const socketDisconnects: string[] = [];
    socket.on('run_event', (event: Frame) => socketEvents.push(event));
    socket.on('disconnect', (reason) => socketDisconnects.push(reason));
    const ack = await subscribe(socket, runId);
    expect(ack.ok, JSON.stringify(ack)).toBe(true);

    await until(
      () => hub.stats().subscribers === 3,
      'three subscribers in the Hub',
      5_000,
      () => hub.stats(),
    );
    expect(hub.stats()).toMatchObject({ subscribers: 3, rooms: 1, subscriptions: 3 });

    // The worker: 80 rounds of 250 log lines (one commit each) and 5 updates = 20,400 events.
    const ackedLogs: number[] = [];
    let line = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const entries: LogEntry[] = Array.from({ length: LOGS_PER_ROUND }, () => {
        line++;
        return { level: 'info', message: `line ${line} ${PADDING}` };
      });
      ackedLogs.push(...(await postLogs(world.worker, runId, entries)));
      for (let u = 0; u < UPDATES_PER_ROUND; u++) {
        const done = round * UPDATES_PER_ROUND + u + 1;
        await patchProgress(world.worker, runId, {
          progress: { percentage: (done * 100) / (ROUNDS * UPDATES_PER_ROUND + 1), done, unit: 'steps' },
        });
      }
    }
    expect(ackedLogs).toHaveLength(ROUNDS * LOGS_PER_ROUND);

    // The slow one was disconnected for being slow, and left the Hub.
    let metrics = '';
    await until(
      async () => {
        metrics = await scrape(server.url, world.admin);
        return metricValue(metrics, 'runcast_subscribers_disconnected_slow_total', { transport: 'sse' }) >= 1;
      },
      'runcast_subscribers_disconnected_slow_total{transport="sse"} >= 1',
      20_000,
      () => hub.stats(),
    );
    await until(
      () => hub.stats().subscribers === 2,
      'the slow subscriber to leave the Hub',
      5_000,
      () => hub.stats(),
    );
    expect(hub.stats()).toMatchObject({ subscribers: 2, rooms: 1, subscriptions: 2 });
    // While it was behind, its queued updates were replaced by newer ones.
    expect(metricValue(metrics, 'runcast_updates_conflated_total')).toBeGreaterThan(0);
    // The normal subscribers were never cut off: the slow one is the only one.
    expect(metricValue(metrics, 'runcast_subscribers_disconnected_slow_total', { transport: 'sse' })).toBe(1);
    expect(
      metricValue(metrics, 'runcast_subscribers_disconnected_slow_total', { transport: 'websocket' }),
    ).toBe(0);

    // The run ends; the normal subscribers end on the terminal snapshot.
    const final = await patchProgress(world.worker, runId, { status: 'COMPLETED' });
    await until(
      () => sseEvents.some(isTerminalUpdate) && socketEvents.some(isTerminalUpdate),
      'the terminal update on SSE and Socket.IO',
      30_000,
      () => ({ sse: sseEvents.length, socket: socketEvents.length }),
    );
    source.close();
    clearInterval(sampler);

    const logSeqs = (events: Frame[]) =>
      events.filter((event) => event.type === 'log').map((event) => event.seq);
    const seqs = (events: Frame[]) => events.map((event) => event.seq);
    const increasing = (values: number[]) => values.every((value, i) => i === 0 || value > values[i - 1]!);

    // Every log exactly once, in seq order, on both normal subscribers.
    expect(logSeqs(sseEvents)).toEqual(ackedLogs);
    expect(logSeqs(socketEvents)).toEqual(ackedLogs);
    expect(increasing(seqs(sseEvents))).toBe(true);
    expect(increasing(seqs(socketEvents))).toBe(true);
    // Both end on the terminal state, and both saw identical log events.
    expect(sseEvents[sseEvents.length - 1]).toMatchObject({ type: 'update', seq: final.seq });
    expect(socketEvents[socketEvents.length - 1]).toMatchObject({ type: 'update', seq: final.seq });
    expect(sseEvents.filter((event) => event.type === 'log')).toEqual(
      socketEvents.filter((event) => event.type === 'log'),
    );
    expect(sseErrors, 'the EventSource never lost its connection').toBe(0);
    expect(socketDisconnects, 'the Socket.IO client was never disconnected').toEqual([]);

    // The slow client's connection was really ended by the server, short of the terminal event.
    await slow.drainToEnd(20_000);
    expect(slow.text.includes('"status":"COMPLETED"'), 'the slow stream carried the terminal update').toBe(
      false,
    );
    // Only complete frames count: the connection may have been cut in the middle of one.
    const blocks = slow.text.split('\n\n').slice(0, -1);
    const slowFrames = blocks.map(parseBlock).filter((frame): frame is SseFrame => frame?.data !== undefined);
    const slowEvents = slowFrames.map((frame) => JSON.parse(frame.data!) as Frame);
    const lastId = Number(slowFrames.filter((frame) => frame.id !== undefined).pop()?.id ?? 0);
    expect(lastId).toBeGreaterThan(0);
    expect(lastId).toBeLessThan(final.seq);

    // It resumes from its last id and gets exactly the logs it missed, then the final state.
    const resumed = await SseStream.open(server.url, world.viewer.token, `/api/v1/runs/${runId}/stream`, {
      'last-event-id': String(lastId),
    });
    expect(resumed.response.status).toBe(200);
    await within(resumed.done, 20_000, 'the resumed stream to end after the terminal snapshot');
    const resumedEvents = resumed.events();
    expect(resumedEvents[resumedEvents.length - 1]).toMatchObject({
      type: 'snapshot',
      seq: final.seq,
      snapshot: { status: 'COMPLETED' },
    });
    expect(resumedEvents.some((event) => event.type === 'snapshot' && event.events_truncated)).toBe(false);
    expect([...logSeqs(slowEvents), ...logSeqs(resumedEvents)]).toEqual(ackedLogs);

    // Memory stayed bounded while 20,000 events flowed past a client that did not read.
    const growthMb = (heapPeak - heapBefore) / 1024 / 1024;
    expect(growthMb).toBeLessThan(200);

    socket.disconnect();
    await until(
      () => hub.stats().subscribers === 0 && hub.stats().rooms === 0,
      'an empty Hub',
      5_000,
      () => hub.stats(),
    );
  }, 180_000);

  it('disconnects a Socket.IO client that stops reading while another one receives every log', async () => {
    const runId = await newRunningRun(world);
    const hub = server.runcast.hub;

    // The slow one: a real socket.io-client whose TCP socket stops being read after the ack.
    // (Engine.IO's WebSocket transport keeps the `ws` WebSocket in `ws`, its net.Socket in `_socket`.)
    const slow = await connectSocket(server.url, world.viewer.token!);
    expect((await subscribe(slow, runId)).ok).toBe(true);
    const engine = slow.io.engine as unknown as {
      transport: { ws?: { _socket?: import('node:net').Socket } };
    };
    const tcp = engine.transport.ws?._socket;
    if (!tcp) throw new Error('no TCP socket under the Socket.IO client: its internals changed');
    tcp.pause();
    track(() => {
      tcp.destroy();
    });

    const socket = await connectSocket(server.url, world.viewer.token!);
    const events: Frame[] = [];
    const disconnects: string[] = [];
    socket.on('run_event', (event: Frame) => events.push(event));
    socket.on('disconnect', (reason) => disconnects.push(reason));
    expect((await subscribe(socket, runId)).ok).toBe(true);
    await until(
      () => hub.stats().subscribers === 2,
      'two subscribers in the Hub',
      5_000,
      () => hub.stats(),
    );

    const before = await scrape(server.url, world.admin);
    const ackedLogs: number[] = [];
    let line = 0;
    for (let round = 0; round < ROUNDS; round++) {
      const entries: LogEntry[] = Array.from({ length: LOGS_PER_ROUND }, () => {
        line++;
        return { level: 'info', message: `line ${line} ${padding()}` };
      });
      ackedLogs.push(...(await postLogs(world.worker, runId, entries)));
      for (let u = 0; u < UPDATES_PER_ROUND; u++) {
        await patchProgress(world.worker, runId, { progress: { done: round * UPDATES_PER_ROUND + u + 1 } });
      }
    }

    let metrics = '';
    await until(
      async () => {
        metrics = await scrape(server.url, world.admin);
        return (
          metricValue(metrics, 'runcast_subscribers_disconnected_slow_total', { transport: 'websocket' }) >
          metricValue(before, 'runcast_subscribers_disconnected_slow_total', { transport: 'websocket' })
        );
      },
      'runcast_subscribers_disconnected_slow_total{transport="websocket"} to grow',
      20_000,
      () => hub.stats(),
    );
    expect(
      metricValue(metrics, 'runcast_updates_conflated_total', { transport: 'websocket' }),
    ).toBeGreaterThan(metricValue(before, 'runcast_updates_conflated_total', { transport: 'websocket' }));
    // Disconnected means gone from the Hub: it must not hold a subscription (nor count as one).
    await until(
      () => hub.stats().subscribers === 1,
      'the slow Socket.IO subscriber to leave the Hub',
      10_000,
      () => hub.stats(),
    );
    expect(hub.stats()).toMatchObject({ subscribers: 1, rooms: 1, subscriptions: 1 });

    const final = await patchProgress(world.worker, runId, { status: 'COMPLETED' });
    await until(() => events.some(isTerminalUpdate), 'the terminal update', 30_000);
    const logSeqs = events.filter((event) => event.type === 'log').map((event) => event.seq);
    expect(logSeqs).toEqual(ackedLogs);
    expect(events[events.length - 1]).toMatchObject({ type: 'update', seq: final.seq });
    expect(disconnects).toEqual([]);
  }, 180_000);
});

/* ================================================================================================
 * 2. Cleanup
 * ============================================================================================= */

describe('cleanup', () => {
  const CYCLES = 1_000;
  const CONCURRENCY = 20;

  let server: TestServer;
  let world: World;
  const warnings: Error[] = [];
  const onWarning = (warning: Error) => warnings.push(warning);

  beforeAll(async () => {
    process.on('warning', onWarning);
    server = await startServer();
    world = await makeWorld(server.url);
  });

  afterAll(async () => {
    process.off('warning', onWarning);
    expect(server.errorLogs).toEqual([]);
    await stopServer(server);
  });

  it('leaves the Hub empty after 1,000 connect/subscribe/disconnect cycles', async () => {
    const runA = await newRunningRun(world);
    const runB = await newRunningRun(world);
    // A run nothing is written to: long-polls on it wait until they are abandoned.
    const quietId = await newRunningRun(world);
    const quiet = (await world.viewer.get<RunSnapshot>(`/runs/${quietId}/progress`)).body;
    const token = world.viewer.token!;

    // Events keep flowing, so that connections close with something queued or in flight.
    let producing = true;
    const producer = (async () => {
      let n = 0;
      while (producing) {
        n++;
        await postLogs(world.worker, n % 2 ? runA : runB, [{ level: 'info', message: `background ${n}` }]);
        await patchProgress(world.worker, n % 2 ? runB : runA, { progress: { done: n } });
      }
    })();

    /** SSE with fetch: read until the opening snapshot(s), then abort. */
    const sseCycle = async (path: string, snapshots: number) => {
      const controller = new AbortController();
      try {
        const res = await fetch(`${server.url}${path}`, {
          headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
          signal: controller.signal,
        });
        expect(res.status).toBe(200);
        const reader = res.body!.getReader();
        const decoder = new TextDecoder();
        let text = '';
        while (text.split('event: snapshot').length - 1 < snapshots) {
          const { done, value } = await reader.read();
          if (done) throw new Error(`stream ${path} ended before its snapshot`);
          text += decoder.decode(value, { stream: true });
        }
      } finally {
        controller.abort();
      }
    };

    /** Socket.IO: connect, subscribe (to one or two runs), maybe unsubscribe, disconnect. */
    const socketCycle = async (runs: string[], unsubscribeFirst: boolean) => {
      const socket = socketClient(server.url, { auth: { token } });
      try {
        const result = await connected(socket);
        if (!result.connected) throw new Error(`connect_error ${JSON.stringify(result.error.data)}`);
        for (const runId of runs) {
          const ack = await subscribe(socket, runId);
          expect(ack.ok, JSON.stringify(ack)).toBe(true);
        }
        if (unsubscribeFirst) socket.emit('unsubscribe', { run_id: runs[0] });
      } finally {
        socket.disconnect();
      }
    };

    /** SSE, impatient: abort as soon as the response starts, without reading it. */
    const sseImpatientCycle = async (path: string) => {
      const controller = new AbortController();
      try {
        const res = await fetch(`${server.url}${path}`, {
          headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
          signal: controller.signal,
        });
        expect(res.status).toBe(200);
      } finally {
        controller.abort();
      }
    };

    /** Socket.IO, impatient: ask to subscribe and hang up without waiting for the ack. */
    const socketImpatientCycle = async (runId: string) => {
      const socket = socketClient(server.url, { auth: { token } });
      try {
        const result = await connected(socket);
        if (!result.connected) throw new Error(`connect_error ${JSON.stringify(result.error.data)}`);
        socket.emit('subscribe', { run_id: runId });
      } finally {
        socket.disconnect();
      }
    };

    /** Polling: a long-poll on a quiet run, abandoned while it waits. */
    const hub = server.runcast.hub;
    const pollCycle = async () => {
      const controller = new AbortController();
      let settled = false;
      const poll = fetch(`${server.url}/api/v1/runs/${quiet.run_id}/progress?since=${quiet.seq}&wait=30`, {
        headers: { authorization: `Bearer ${token}` },
        signal: controller.signal,
      }).then(
        async (res) => {
          settled = true;
          await res.text();
          return res.status;
        },
        () => {
          settled = true;
          return 0;
        },
      );
      try {
        await until(() => settled || hub.stats().waiters > 0, 'a long-poll to wait', 10_000);
      } finally {
        controller.abort();
      }
      expect([0, 304]).toContain(await poll);
    };

    const tasks = Array.from({ length: CYCLES }, (_, i) => async () => {
      switch (i % 8) {
        case 0:
          return sseCycle(`/api/v1/runs/${runA}/stream`, 1);
        case 1:
          return sseCycle(`/api/v1/stream?runs=${runA},${runB}`, 2);
        case 2:
          return sseImpatientCycle(`/api/v1/stream?runs=${runB},${runA}`);
        case 3:
          return socketCycle([runA], false);
        case 4:
          return socketCycle([runA, runB], false);
        case 5:
          return socketCycle([runB, runA], true);
        case 6:
          return socketImpatientCycle(i % 16 < 8 ? runA : runB);
        default:
          return pollCycle();
      }
    });
    try {
      await inFlight(tasks, CONCURRENCY);
    } finally {
      producing = false;
      await producer;
    }

    await until(
      () => {
        const stats = hub.stats();
        return (
          stats.subscribers === 0 && stats.subscriptions === 0 && stats.rooms === 0 && stats.waiters === 0
        );
      },
      'the Hub to be empty',
      15_000,
      () => hub.stats(),
    );
    expect(hub.stats()).toEqual({ subscribers: 0, rooms: 0, subscriptions: 0, waiters: 0 });

    // The gauges agree with the Hub: nothing was counted twice or forgotten.
    const metrics = await scrape(server.url, world.admin);
    for (const transport of ['sse', 'websocket', 'polling']) {
      expect(metricValue(metrics, 'runcast_connections', { transport }), `connections ${transport}`).toBe(0);
      expect(metricValue(metrics, 'runcast_subscriptions', { transport }), `subscriptions ${transport}`).toBe(
        0,
      );
    }

    expect(warnings.filter((warning) => warning.name === 'MaxListenersExceededWarning')).toEqual([]);
  }, 180_000);
});

/* ================================================================================================
 * 3. Authorization on every transport
 * ============================================================================================= */

type Outcome =
  | { result: 'ok' }
  | { result: 'refused'; stage: 'http' | 'connect' | 'subscribe'; status?: number; code?: string };

interface Credentials {
  /** Sent the transport's proper way: `Authorization: Bearer` or the handshake `auth.token`. */
  token?: string;
  /** Sent in the URL's query string, which must never count. */
  query?: Record<string, string>;
}

interface TransportCase {
  name: 'sse' | 'sse-multiplexed' | 'websocket' | 'polling';
  attempt(url: string, runId: string, credentials: Credentials): Promise<Outcome>;
  /** Refusal without (valid) credentials. */
  unauthenticated: Outcome;
  /** Refusal of a run the caller may not see. */
  hidden: Outcome;
}

/** An HTTP attempt: 200 is `ok`, anything else a refusal with its status and error code. */
async function httpAttempt(url: string, path: string, credentials: Credentials): Promise<Outcome> {
  const controller = new AbortController();
  const headers: Record<string, string> = { accept: 'text/event-stream, application/json' };
  if (credentials.token) headers.authorization = `Bearer ${credentials.token}`;
  const query = credentials.query
    ? `${path.includes('?') ? '&' : '?'}${new URLSearchParams(credentials.query)}`
    : '';
  try {
    const res = await fetch(`${url}${path}${query}`, { headers, signal: controller.signal });
    if (res.status === 200) return { result: 'ok' };
    const text = await res.text();
    let code: string | undefined;
    try {
      code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
    } catch {
      code = undefined;
    }
    return { result: 'refused', stage: 'http', status: res.status, ...(code ? { code } : {}) };
  } finally {
    controller.abort(); // an accepted stream is not read further
  }
}

const TRANSPORT_CASES: TransportCase[] = [
  {
    name: 'sse',
    attempt: (url, runId, credentials) => httpAttempt(url, `/api/v1/runs/${runId}/stream`, credentials),
    unauthenticated: { result: 'refused', stage: 'http', status: 401, code: 'UNAUTHORIZED' },
    hidden: { result: 'refused', stage: 'http', status: 404, code: 'RUN_NOT_FOUND' },
  },
  {
    name: 'sse-multiplexed',
    attempt: (url, runId, credentials) => httpAttempt(url, `/api/v1/stream?runs=${runId}`, credentials),
    unauthenticated: { result: 'refused', stage: 'http', status: 401, code: 'UNAUTHORIZED' },
    hidden: { result: 'refused', stage: 'http', status: 404, code: 'RUN_NOT_FOUND' },
  },
  {
    name: 'websocket',
    attempt: async (url, runId, credentials) => {
      const socket = socketClient(url, {
        ...(credentials.token ? { auth: { token: credentials.token } } : {}),
        ...(credentials.query ? { query: credentials.query } : {}),
      });
      try {
        const result = await connected(socket);
        if (!result.connected) {
          const code = result.error.data?.code;
          return { result: 'refused', stage: 'connect', ...(code ? { code } : {}) };
        }
        const ack = await subscribe(socket, runId);
        if (ack.ok) return { result: 'ok' };
        return { result: 'refused', stage: 'subscribe', code: ack.error.code };
      } finally {
        socket.disconnect();
      }
    },
    unauthenticated: { result: 'refused', stage: 'connect', code: 'UNAUTHORIZED' },
    hidden: { result: 'refused', stage: 'subscribe', code: 'RUN_NOT_FOUND' },
  },
  {
    name: 'polling',
    attempt: (url, runId, credentials) => httpAttempt(url, `/api/v1/runs/${runId}/progress`, credentials),
    unauthenticated: { result: 'refused', stage: 'http', status: 401, code: 'UNAUTHORIZED' },
    hidden: { result: 'refused', stage: 'http', status: 404, code: 'RUN_NOT_FOUND' },
  },
];

describe('authorization on every transport', () => {
  // A well-formed run id that names nothing: a foreign run must be refused exactly like it.
  const MISSING_RUN = 'run_00000000000000000000000000';
  let server: TestServer;
  let world: World;
  let runId: string;

  beforeAll(async () => {
    server = await startServer();
    world = await makeWorld(server.url);
    runId = await newRunningRun(world);
  });

  afterAll(async () => {
    // Refused attempts leave nothing behind in the Hub.
    await until(
      () => server.runcast.hub.stats().subscribers === 0,
      'an empty Hub',
      5_000,
      () => server.runcast.hub.stats(),
    );
    expect(server.runcast.hub.stats()).toEqual({ subscribers: 0, rooms: 0, subscriptions: 0, waiters: 0 });
    expect(server.errorLogs).toEqual([]);
    await stopServer(server);
  });

  it('refuses a multiplexed stream that names one foreign run among visible ones', async () => {
    const outcome = await httpAttempt(server.url, `/api/v1/stream?runs=${runId},${world.otherRunId}`, {
      token: world.viewer.token!,
    });
    expect(outcome).toEqual({ result: 'refused', stage: 'http', status: 404, code: 'RUN_NOT_FOUND' });
  });

  describe.each(TRANSPORT_CASES)('$name', (transport) => {
    it('accepts a project member (the baseline the refusals are measured against)', async () => {
      expect(await transport.attempt(server.url, runId, { token: world.viewer.token! })).toEqual({
        result: 'ok',
      });
    });

    it('refuses a client without credentials', async () => {
      expect(await transport.attempt(server.url, runId, {})).toEqual(transport.unauthenticated);
    });

    it('refuses a forged token', async () => {
      expect(await transport.attempt(server.url, runId, { token: 'not-a-real-token' })).toEqual(
        transport.unauthenticated,
      );
    });

    it('refuses a foreign user as if the run did not exist', async () => {
      const foreign = await transport.attempt(server.url, runId, { token: world.outsider.token! });
      expect(foreign).toEqual(transport.hidden);
      expect(await transport.attempt(server.url, MISSING_RUN, { token: world.outsider.token! })).toEqual(
        foreign,
      );
    });

    it('refuses a revoked worker token', async () => {
      const created = await world.operator.post('/tokens', {
        project_id: world.projectId,
        name: `revoked-${transport.name}`,
      });
      expect(created.status, JSON.stringify(created.body)).toBe(201);
      const { token, token_id } = created.body as { token: string; token_id: string };
      expect(await transport.attempt(server.url, runId, { token })).toEqual({ result: 'ok' });

      const revoked = await world.operator.delete(`/tokens/${token_id}`);
      expect(revoked.status, JSON.stringify(revoked.body)).toBe(204);
      expect(await transport.attempt(server.url, runId, { token })).toEqual(transport.unauthenticated);
    });

    it.each(['token', 'access_token'])(
      'does not accept a credential in the query string (?%s=)',
      async (name) => {
        const outcome = await transport.attempt(server.url, runId, {
          query: { [name]: world.viewer.token! },
        });
        expect(outcome.result).toBe('refused');
        if (outcome.result !== 'refused') return;
        if (transport.name === 'websocket') {
          expect(outcome).toEqual(transport.unauthenticated);
        } else {
          expect(outcome.status).toBeGreaterThanOrEqual(400);
          expect(outcome.status).toBeLessThan(500);
        }
      },
    );

    it('does not let a query-string credential widen what the proper credential allows', async () => {
      const outcome = await transport.attempt(server.url, runId, {
        token: world.outsider.token!,
        query: { token: world.viewer.token!, access_token: world.viewer.token! },
      });
      expect(outcome.result).toBe('refused');
    });
  });
});

/* ================================================================================================
 * 4. Metrics
 * ============================================================================================= */

describe('metrics', () => {
  let server: TestServer;
  let world: World;
  let runId: string;

  beforeAll(async () => {
    server = await startServer();
    world = await makeWorld(server.url);
    runId = await newRunningRun(world);
  });

  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await stopServer(server);
  });

  it('serves /metrics to admins only', async () => {
    const anonymous = await fetch(`${server.url}/metrics`);
    expect(anonymous.status).toBe(401);
    await anonymous.text();
    const operator = await fetch(`${server.url}/metrics`, {
      headers: { authorization: `Bearer ${world.operator.token}` },
    });
    expect(operator.status).toBe(403);
    await operator.text();
    const worker = await fetch(`${server.url}/metrics`, {
      headers: { authorization: `Bearer ${world.worker.token}` },
    });
    expect(worker.status).toBe(403);
    await worker.text();

    const admin = await fetch(`${server.url}/metrics`, {
      headers: { authorization: `Bearer ${world.admin.token}` },
    });
    expect(admin.status).toBe(200);
    expect(admin.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await admin.text();
    for (const name of [
      'runcast_connections',
      'runcast_subscriptions',
      'runcast_events_published_total',
      'runcast_events_delivered_total',
      'runcast_delivery_lag_seconds',
    ]) {
      expect(text, name).toMatch(new RegExp(`^# TYPE ${name} `, 'm'));
    }
  });

  it('counts events published and delivered, and the delivery lag', async () => {
    const socket = await connectSocket(server.url, world.viewer.token!);
    const events: Frame[] = [];
    socket.on('run_event', (event: Frame) => events.push(event));
    expect((await subscribe(socket, runId)).ok).toBe(true);

    const before = await scrape(server.url, world.admin);
    const [seq] = await postLogs(world.worker, runId, [{ level: 'info', message: 'counted' }]);
    await until(() => events.some((event) => event.seq === seq), 'the log on the socket');
    let after = '';
    await until(async () => {
      after = await scrape(server.url, world.admin);
      return (
        metricValue(after, 'runcast_events_delivered_total', { transport: 'websocket' }) >
        metricValue(before, 'runcast_events_delivered_total', { transport: 'websocket' })
      );
    }, 'runcast_events_delivered_total{transport="websocket"} to grow');
    expect(metricValue(after, 'runcast_events_published_total', { type: 'log' })).toBe(
      metricValue(before, 'runcast_events_published_total', { type: 'log' }) + 1,
    );
    expect(
      metricValue(after, 'runcast_delivery_lag_seconds_count', { transport: 'websocket' }),
    ).toBeGreaterThan(metricValue(before, 'runcast_delivery_lag_seconds_count', { transport: 'websocket' }));
    expect(metricValue(after, 'runcast_connections', { transport: 'websocket' })).toBe(1);
    expect(metricValue(after, 'runcast_subscriptions', { transport: 'websocket' })).toBe(1);
  });

  it('counts a fallback a polling client reports in its headers', async () => {
    const labels = { from: 'sse', to: 'polling', reason: 'timeout' };
    const before = await scrape(server.url, world.admin);
    const answer = await world.viewer.get(`/runs/${runId}/progress`, {
      'X-Runcast-Transport': 'polling',
      'X-Runcast-Fallback-From': 'sse',
      'X-Runcast-Fallback-Reason': 'timeout',
    });
    expect(answer.status, JSON.stringify(answer.body)).toBe(200);
    const after = await scrape(server.url, world.admin);
    expect(metricValue(after, 'runcast_client_fallbacks_total', labels)).toBe(
      metricValue(before, 'runcast_client_fallbacks_total', labels) + 1,
    );
    expect(metricValue(after, 'runcast_client_transport_total', { transport: 'polling' })).toBe(
      metricValue(before, 'runcast_client_transport_total', { transport: 'polling' }) + 1,
    );
  });

  it('counts the transport a Socket.IO client reports in its handshake', async () => {
    const before = await scrape(server.url, world.admin);
    await connectSocket(server.url, world.viewer.token!, { transport: 'websocket' });
    const after = await scrape(server.url, world.admin);
    expect(metricValue(after, 'runcast_client_transport_total', { transport: 'websocket' })).toBe(
      metricValue(before, 'runcast_client_transport_total', { transport: 'websocket' }) + 1,
    );
  });
});

/* ================================================================================================
 * 5. Graceful shutdown of the real server process
 * ============================================================================================= */

describe('graceful shutdown with busy connections (in-process)', () => {
  let server: TestServer;
  let world: World;

  beforeAll(async () => {
    server = await startServer({
      // Large enough that the clients below are behind but never dropped as slow.
      RUNCAST_SUBSCRIBER_QUEUE_LIMIT: String(64 * 1024 * 1024),
      RUNCAST_BODY_LIMIT: String(1024 * 1024),
    });
    world = await makeWorld(server.url);
  });

  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await stopServer(server);
  });

  it('tells a client whose connection is still busy writing to reconnect, on SSE and on Socket.IO', async () => {
    const runId = await newRunningRun(world);
    const hub = server.runcast.hub;

    // Two clients that stop reading, so that the server still has writes pending to them when it
    // shuts down: a raw SSE request and a real socket.io-client with its TCP socket paused.
    const sse = await openPausedStream(server.url, `/api/v1/runs/${runId}/stream`, world.viewer.token!);
    const socket = await connectSocket(server.url, world.viewer.token!);
    const notices: unknown[] = [];
    const disconnects: string[] = [];
    socket.on('server_reconnect', (notice: unknown) => notices.push(notice));
    socket.on('disconnect', (reason) => disconnects.push(reason));
    expect((await subscribe(socket, runId)).ok).toBe(true);
    const engine = socket.io.engine as unknown as {
      transport: { ws?: { _socket?: import('node:net').Socket } };
    };
    const tcp = engine.transport.ws?._socket;
    if (!tcp) throw new Error('no TCP socket under the Socket.IO client: its internals changed');
    tcp.pause();
    track(() => {
      tcp.destroy();
    });

    // ~12 MB of events: more than the loopback buffers take, less than the queue limit.
    // Random, so that the compressed WebSocket (per-message deflate) fills its buffers too.
    const padding = () => randomBytes(750).toString('base64');
    let published = 0;
    for (let round = 0; round < 40; round++) {
      const entries: LogEntry[] = Array.from({ length: 250 }, (_, i) => ({
        level: 'info',
        message: `busy ${round}/${i} ${padding()}`,
      }));
      published += (await postLogs(world.worker, runId, entries)).length;
    }
    // Both connections are behind: the server holds undelivered events for them.
    const metrics = await scrape(server.url, world.admin);
    expect(metricValue(metrics, 'runcast_events_delivered_total', { transport: 'websocket' })).toBeLessThan(
      published,
    );
    expect(metricValue(metrics, 'runcast_events_delivered_total', { transport: 'sse' })).toBeLessThan(
      published,
    );
    expect(hub.stats()).toMatchObject({ subscribers: 2, subscriptions: 2 });

    // Shut down (what SIGTERM does), then let the clients read what they were sent.
    const closing = server.runcast.close();
    await until(() => hub.stats().subscribers === 0, 'the shutdown to reach the live clients', 5_000);
    tcp.resume();
    await sse.drainToEnd(30_000);
    await until(() => disconnects.length > 0, 'the Socket.IO client to be disconnected', 30_000);

    // Both clients got everything they had been sent, ending with the request to reconnect:
    // the SSE stream's last frame (the text is megabytes: look at its end) and the Socket.IO
    // `server_reconnect` event before the transport closed.
    const tail = sse.text.slice(-200);
    expect({
      sseEndsWithReconnect: /event: reconnect\ndata: \{"reason":"SERVER_SHUTDOWN"\}\n\n$/.test(tail),
      sseStreamComplete: sse.text.endsWith('\n\n'),
      socketNotices: notices,
      socketDisconnects: disconnects,
    }).toEqual({
      sseEndsWithReconnect: true,
      sseStreamComplete: true,
      socketNotices: [{ reason: 'SERVER_SHUTDOWN' }],
      socketDisconnects: ['transport close'],
    });
    await within(closing, 15_000, 'the server to close');
  }, 120_000);
});

describe('graceful shutdown', () => {
  let dataDir: string | undefined;

  beforeAll(() => {
    requireBuiltServer();
    dataDir = mkdtempSync(join(tmpdir(), 'runcast-shutdown-'));
  });

  afterAll(async () => {
    await killAllServers();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('tells SSE and Socket.IO clients to reconnect, exits 0 promptly and keeps acknowledged writes', async () => {
    const port = await freePort();
    const first = await ServerProcess.start(dataDir!, port);
    const admin = await new Api(first.url).login('admin', CHILD_ADMIN_PASSWORD);
    const project = await admin.post('/projects', { name: 'shutdown' });
    expect(project.status, JSON.stringify(project.body)).toBe(201);
    const run = await admin.post('/runs', { project_id: project.body.project_id, kind: 'external' });
    expect(run.status, JSON.stringify(run.body)).toBe(201);
    const runId: string = run.body.run_id;
    await patchProgress(admin, runId, { status: 'RUNNING' });

    const stream = await SseStream.open(first.url, admin.token, `/api/v1/runs/${runId}/stream`);
    expect(stream.response.status).toBe(200);
    await until(() => stream.has('snapshot'), 'the SSE snapshot');

    const socket = await connectSocket(first.url, admin.token!);
    const socketEvents: Frame[] = [];
    const reconnectNotices: unknown[] = [];
    const disconnects: string[] = [];
    socket.on('run_event', (event: Frame) => socketEvents.push(event));
    socket.on('server_reconnect', (notice: unknown) => reconnectNotices.push(notice));
    socket.on('disconnect', (reason) => disconnects.push(reason));
    expect((await subscribe(socket, runId)).ok).toBe(true);

    // An update acknowledged before the signal, seen live by both clients.
    const acked = await patchProgress(admin, runId, {
      stage: 'APPLY',
      progress: { percentage: 61.5, message: 'acknowledged before SIGTERM', done: 615, total: 1000 },
    });
    await until(
      () =>
        stream.events('update').some((event) => event.seq === acked.seq) &&
        socketEvents.some((event) => event.seq === acked.seq),
      'the acknowledged update on both clients',
    );

    // Writes keep coming (to another run) while the server shuts down: whatever it acknowledges
    // must survive. The clients above stay idle, so that their notices do not race a busy socket
    // (that case is covered, in-process, by the test before this one).
    const busy = await admin.post('/runs', { project_id: project.body.project_id, kind: 'external' });
    const busyRunId: string = busy.body.run_id;
    await patchProgress(admin, busyRunId, { status: 'RUNNING' });
    const ackedDuringShutdown: number[] = [];
    const writer = (async () => {
      for (let i = 0; ; i++) {
        try {
          const answer = await admin.post(`/runs/${busyRunId}/logs`, {
            level: 'info',
            message: `in flight ${i}`,
          });
          if (answer.status !== 201) return answer.status; // refused while closing
          ackedDuringShutdown.push((answer.body as { first_seq: number }).first_seq);
        } catch {
          return 'connection closed';
        }
      }
    })();
    await until(() => ackedDuringShutdown.length >= 20, 'the writer to be under way');

    // A long-poll pending on the (now quiet) run when the signal comes.
    const pollsBefore = metricValue(await scrape(first.url, admin), 'runcast_subscriptions', {
      transport: 'polling',
    });
    const longPoll = fetch(`${first.url}/api/v1/runs/${runId}/progress?since=${acked.seq}&wait=30`, {
      headers: { authorization: `Bearer ${admin.token}` },
    }).then(
      async (res) => ({ status: res.status, body: await res.text() }),
      (err: unknown) => ({ status: 0, body: String(err) }),
    );
    await until(
      async () =>
        metricValue(await scrape(first.url, admin), 'runcast_subscriptions', { transport: 'polling' }) >
        pollsBefore,
      'the long-poll to be waiting',
    );

    const signalledAt = Date.now();
    first.child.kill('SIGTERM');
    const exit = await within(first.exited, 15_000, 'the server process to exit');
    const exitMs = Date.now() - signalledAt;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(exitMs).toBeLessThan(10_000);

    // The long-poll was answered (woken by the shutdown), not cut off or left to its 30 s deadline.
    const polled = await within(longPoll, 5_000, 'the long-poll answer');
    expect([200, 304], JSON.stringify(polled)).toContain(polled.status);
    const writerEnd = await within(writer, 5_000, 'the writer to stop');
    expect(writerEnd === 503 || writerEnd === 'connection closed', String(writerEnd)).toBe(true);

    // SSE: a `reconnect` event with the reason, then the end of the stream.
    await within(stream.done, 5_000, 'the SSE stream to end');
    expect(stream.error).toBeUndefined();
    const last = stream.frames[stream.frames.length - 1];
    expect(last?.event).toBe('reconnect');
    expect(JSON.parse(last?.data ?? 'null')).toEqual({ reason: 'SERVER_SHUTDOWN' });

    // Socket.IO: told to reconnect, and disconnected by the transport closing (which a client
    // answers by reconnecting, unlike a server-side `disconnect`).
    await until(() => disconnects.length > 0, 'the Socket.IO client to be disconnected', 5_000);
    expect(reconnectNotices).toEqual([{ reason: 'SERVER_SHUTDOWN' }]);
    expect(disconnects).toEqual(['transport close']);
    expect(first.errorLines).toEqual([]);
    expect(first.stdout.some((line) => line.includes('"shutting down"'))).toBe(true);

    // The acknowledged update is there after a restart on the same data dir.
    const second = await ServerProcess.start(dataDir!, port);
    const again = await new Api(second.url).login('admin', CHILD_ADMIN_PASSWORD);
    const progress = await again.get<RunSnapshot>(`/runs/${runId}/progress`);
    expect(progress.status, JSON.stringify(progress.body)).toBe(200);
    // (What a restart does to a run left RUNNING is the runner's business, not this test's: only
    // the acknowledged fields are checked.)
    expect(progress.body.seq).toBeGreaterThanOrEqual(acked.seq);
    expect(progress.body.stage).toBe('APPLY');
    expect(progress.body.progress).toEqual(acked.progress);
    // ...and so is every log line acknowledged while the server was shutting down.
    const persisted: number[] = [];
    for (let since = 0, page = 0; ; page++) {
      if (page > 100) throw new Error('events paging did not end');
      const answer = await again.get<{ events: Frame[]; next_since: number }>(
        `/runs/${busyRunId}/events?since=${since}&limit=1000`,
      );
      expect(answer.status, JSON.stringify(answer.body)).toBe(200);
      if (answer.body.events.length === 0) break;
      persisted.push(...answer.body.events.map((event) => event.seq));
      since = answer.body.next_since;
    }
    expect(persisted).toEqual(expect.arrayContaining(ackedDuringShutdown));
    expect(second.errorLines).toEqual([]);
    await second.kill();
  }, 60_000);

  it('exits 0 within 10 s while a client holds a connection it has not sent a request on yet', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'runcast-shutdown-idle-'));
    track(() => rmSync(dir, { recursive: true, force: true }));
    const port = await freePort();
    const server = await ServerProcess.start(dir, port);

    // What a browser's preconnect or an HTTP client's connection pool does: open a connection
    // ahead of the request it will carry. Nothing is in flight on it.
    const socket = netConnect(port, '127.0.0.1');
    socket.on('error', () => {});
    track(() => {
      socket.destroy();
    });
    await within(once(socket, 'connect'), 5_000, 'the TCP connection');

    const signalledAt = Date.now();
    server.child.kill('SIGTERM');
    const exit = await within(server.exited, 15_000, 'the server process to exit');
    const exitMs = Date.now() - signalledAt;
    expect({ exit, exitedWithin10s: exitMs < 10_000 }, `exited after ${exitMs} ms`).toEqual({
      exit: { code: 0, signal: null },
      exitedWithin10s: true,
    });
  }, 30_000);
});
