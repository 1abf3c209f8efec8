import { type IncomingMessage, request } from 'node:http';
import { createGunzip } from 'node:zlib';
import { applyDeltaPatch, type RunSnapshot } from '@runcast/protocol';
import { EventSource } from 'eventsource';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProgressService } from '../../packages/client/src/index.js';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { Collector, eventually } from '../support/collector.js';

// Gzipped SSE streams as clients read them: a raw request piped through a streaming inflater
// (every event must come out of it before the next is published: nothing may wait in a
// compressor), the `eventsource` package, and @runcast/client — all over real HTTP.

/** An SSE message as parsed from the decoded stream. */
interface Message {
  event: string;
  id: string | undefined;
  data: any;
}

/** A stream read through `createGunzip` as bytes arrive, its messages parsed one by one. */
class InflatedStream {
  readonly messages: Message[] = [];
  private waiters: (() => void)[] = [];
  private buffered = '';
  ended = false;
  error: Error | undefined;
  /** Bytes of the body as sent (compressed). */
  wireBytes = 0;

  constructor(readonly response: IncomingMessage) {
    response.on('data', (chunk: Buffer) => {
      this.wireBytes += chunk.length;
    });
    const gunzip = createGunzip();
    response.pipe(gunzip);
    gunzip.setEncoding('utf8');
    gunzip.on('data', (text: string) => this.take(text));
    // `end` after the gzip trailer was read and checked (CRC-32 and length).
    gunzip.on('end', () => this.finish());
    gunzip.on('error', (err) => {
      this.error = err;
      this.finish();
    });
  }

  private take(text: string): void {
    this.buffered += text;
    let end = this.buffered.indexOf('\n\n');
    while (end >= 0) {
      const block = this.buffered.slice(0, end);
      this.buffered = this.buffered.slice(end + 2);
      const fields = new Map<string, string>();
      for (const line of block.split('\n')) {
        const colon = line.indexOf(': ');
        if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 2));
      }
      const data = fields.get('data');
      if (data !== undefined) {
        this.messages.push({
          event: fields.get('event') ?? 'message',
          id: fields.get('id'),
          data: JSON.parse(data),
        });
      }
      end = this.buffered.indexOf('\n\n');
    }
    this.wake();
  }

  private finish(): void {
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  /** Resolves once a message satisfies `predicate`; fails if the stream ends first. */
  async until(predicate: (message: Message) => boolean, what: string): Promise<Message> {
    for (;;) {
      const found = this.messages.find(predicate);
      if (found) return found;
      if (this.ended)
        throw new Error(`${what}: the stream ended first (${this.error?.message ?? 'cleanly'})`);
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** Resolves when the stream has ended, its gzip trailer read. */
  async closed(): Promise<void> {
    while (!this.ended) await new Promise<void>((resolve) => this.waiters.push(resolve));
    if (this.error) throw this.error;
  }
}

function openStream(url: string, headers: Record<string, string>): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers }, resolve);
    req.on('error', reject);
    req.end();
  });
}

describe('compressed SSE streams', () => {
  let server: TestServer;
  let world: World;
  const responses: IncomingMessage[] = [];

  beforeAll(async () => {
    server = await startServer({ RUNCAST_SSE_COMPRESSION: 'gzip' });
    world = await makeWorld(server.url);
  });

  afterAll(async () => {
    for (const response of responses) response.destroy();
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  async function newRun(): Promise<string> {
    const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
    expect(created.status).toBe(201);
    await world.worker.patch(`/runs/${created.body.run_id}/progress`, { status: 'RUNNING' });
    return created.body.run_id;
  }

  async function gzipStream(runId: string, headers: Record<string, string> = {}): Promise<InflatedStream> {
    const response = await openStream(`${server.url}/api/v1/runs/${runId}/stream`, {
      authorization: `Bearer ${world.viewer.token}`,
      'accept-encoding': 'gzip',
      ...headers,
    });
    responses.push(response);
    expect(response.statusCode).toBe(200);
    expect(response.headers['content-encoding']).toBe('gzip');
    expect(response.headers.vary).toMatch(/accept-encoding/i);
    expect(response.headers['content-type']).toMatch(/^text\/event-stream/);
    return new InflatedStream(response);
  }

  it('delivers the opening snapshot, then each event before the next is published', async () => {
    const runId = await newRun();
    const stream = await gzipStream(runId);
    const snapshot = await stream.until((m) => m.event === 'snapshot', 'the opening snapshot');
    expect(snapshot.data.snapshot.status).toBe('RUNNING');
    for (let i = 0; i < 10; i++) {
      // The next event is published only once this one came out of the inflater.
      const posted = await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
      const log = await stream.until(
        (m) => m.event === 'log' && m.data.log.message === `line ${i}`,
        `line ${i}`,
      );
      expect(Number(log.id)).toBe(posted.body.last_seq);
      await world.worker.patch(`/runs/${runId}/progress`, { progress: { percentage: i * 10 } });
      await stream.until(
        (m) => m.event === 'update' && m.data.snapshot.progress.percentage === i * 10,
        `update ${i}`,
      );
    }
    // The terminal update closes the stream, and the gzip trailer checks out.
    await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
    await stream.until(
      (m) => m.event === 'update' && m.data.snapshot.status === 'COMPLETED',
      'the final state',
    );
    await stream.closed();
    const seqs = stream.messages.map((m) => m.data.seq as number);
    expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
  });

  it('compresses each update after the frame before it: a delta tick costs a few dozen bytes', async () => {
    const runId = await newRun();
    const path = (multiplexed: boolean) =>
      multiplexed ? `/api/v1/stream?runs=${runId}&delta=1` : `/api/v1/runs/${runId}/stream?delta=1`;
    const streams: InflatedStream[] = [];
    for (const multiplexed of [false, true, false]) {
      const response = await openStream(`${server.url}${path(multiplexed)}`, {
        authorization: `Bearer ${world.viewer.token}`,
        'accept-encoding': 'gzip',
      });
      responses.push(response);
      const stream = new InflatedStream(response);
      await stream.until((m) => m.event === 'snapshot', 'the opening snapshot');
      streams.push(stream);
    }
    const ticks = 30;
    const before = streams.map((stream) => stream.wireBytes);
    let last = 0;
    for (let i = 1; i <= ticks; i++) {
      const answer = await world.worker.patch(`/runs/${runId}/progress`, {
        progress: { percentage: i, message: 'Receiving objects', done: i * 137, total: 10_000 },
      });
      last = answer.body.seq;
      // Each tick reaches every stream before the next is made: no stream lags behind the others.
      for (const stream of streams) await stream.until((m) => m.data.seq === last, `update ${last}`);
    }
    const expected = (await world.viewer.get(`/runs/${runId}/progress`)).body;
    streams.forEach((stream, i) => {
      const perTick = (stream.wireBytes - (before[i] as number)) / ticks;
      // Alone, a delta frame gzips to about 190 bytes; after the frame before it, to a few dozen.
      expect(perTick).toBeLessThan(110);
      // The state rebuilt from the decoded frames is the server's.
      let state: Record<string, unknown> | undefined;
      for (const { event, data } of stream.messages) {
        if (event === 'snapshot' || (event === 'update' && data.snapshot)) state = data.snapshot;
        else if (event === 'update') state = applyDeltaPatch(state as RunSnapshot, data);
      }
      expect(state).toEqual(expected);
    });
  });

  it('resumes from Last-Event-ID with the missed logs, then the snapshot, then live events', async () => {
    const runId = await newRun();
    const first = await gzipStream(runId);
    for (let i = 0; i < 5; i++)
      await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `before ${i}` });
    const seen = await first.until((m) => m.event === 'log' && m.data.log.message === 'before 2', 'before 2');
    first.response.destroy();
    const resumed = await gzipStream(runId, { 'last-event-id': String(seen.id) });
    const opening = await resumed.until((m) => m.event === 'snapshot', 'the snapshot');
    const replayed = resumed.messages.slice(0, resumed.messages.indexOf(opening));
    expect(replayed.map((m) => m.data.log.message)).toEqual(['before 3', 'before 4']);
    await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'after' });
    await resumed.until((m) => m.event === 'log' && m.data.log.message === 'after', 'the live log');
  });

  it('sends a replay of 100 logs in at most a fifth of its bytes', async () => {
    const runId = await newRun();
    const entries = Array.from({ length: 100 }, (_, i) => ({
      level: 'info',
      message: `Pushed ${i * 7} refs to group/api-${i % 5}`,
      stage: 'APPLY',
    }));
    await world.worker.post(`/runs/${runId}/logs`, { entries });
    const gzipped = await gzipStream(runId, { 'last-event-id': '1' });
    await gzipped.until((m) => m.event === 'snapshot', 'the snapshot');
    expect(gzipped.messages.filter((m) => m.event === 'log')).toHaveLength(100);
    const plain = await openStream(`${server.url}/api/v1/runs/${runId}/stream`, {
      authorization: `Bearer ${world.viewer.token}`,
      'last-event-id': '1',
    });
    responses.push(plain);
    let text = '';
    for await (const chunk of plain) {
      text += (chunk as Buffer).toString('utf8');
      if (/event: snapshot\ndata: .*\n\n/.test(text)) break;
    }
    expect(gzipped.wireBytes).toBeLessThanOrEqual(Buffer.byteLength(text) * 0.2);
  });

  it('delivers every event to the eventsource package, which reads it gzipped', async () => {
    const runId = await newRun();
    const encodings: (string | null)[] = [];
    const source = new EventSource(`${server.url}/api/v1/runs/${runId}/stream`, {
      fetch: async (input, init) => {
        const response = await fetch(input, {
          ...init,
          headers: { ...init?.headers, authorization: `Bearer ${world.viewer.token}` },
        });
        encodings.push(response.headers.get('content-encoding'));
        return response;
      },
    });
    const messages: string[] = [];
    let wake = () => {};
    const arrived = (count: number) =>
      new Promise<void>((resolve) => {
        wake = () => {
          if (messages.length >= count) resolve();
        };
        wake();
      });
    for (const type of ['snapshot', 'log', 'update']) {
      source.addEventListener(type, (event) => {
        messages.push(`${type}:${event.lastEventId}`);
        wake();
      });
    }
    try {
      await arrived(1);
      for (let i = 0; i < 5; i++)
        await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `${i}` });
      await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
      await arrived(7);
      expect(encodings[0]).toBe('gzip');
      expect(messages.slice(1)).toEqual(['log:2', 'log:3', 'log:4', 'log:5', 'log:6', 'update:7']);
    } finally {
      source.close();
    }
  });

  it('gives @runcast/client over SSE every log exactly once', async () => {
    const runId = await newRun();
    const encodings = new Set<string | null>();
    const service = new ProgressService({
      baseUrl: server.url,
      token: world.viewer.token,
      transports: ['sse'],
      env: {
        fetch: async (input, init) => {
          const response = await fetch(input, init);
          if (String(input).includes('/stream')) encodings.add(response.headers.get('content-encoding'));
          return response;
        },
      },
    });
    try {
      const seen = new Collector();
      service.subscribeToRun(runId, seen.push);
      await seen.until((events) => events.length > 0);
      await eventually(() => service.getConnectionMethod() === 'sse');
      for (let i = 0; i < 30; i++)
        await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
      await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
      await seen.untilStatus('COMPLETED');
      expect(seen.logMessages).toEqual(Array.from({ length: 30 }, (_, i) => `line ${i}`));
      expect([...encodings]).toEqual(['gzip']);
    } finally {
      service.close();
    }
  });

  it('goes uncompressed to a client that does not accept gzip', async () => {
    const runId = await newRun();
    const response = await openStream(`${server.url}/api/v1/runs/${runId}/stream`, {
      authorization: `Bearer ${world.viewer.token}`,
    });
    responses.push(response);
    expect(response.headers['content-encoding']).toBeUndefined();
    expect(response.headers.vary).toMatch(/accept-encoding/i);
    const [chunk] = await Promise.all([new Promise<Buffer>((resolve) => response.once('data', resolve))]);
    expect(chunk.toString('utf8')).toMatch(/^retry: \d+\n/);
  });
});

describe('SSE compression turned off', () => {
  let server: TestServer;

  beforeAll(async () => {
    server = await startServer({ RUNCAST_SSE_COMPRESSION: 'off' });
  });

  afterAll(async () => {
    await server.close();
  });

  it('sends streams as they are, whatever the client accepts', async () => {
    const world = await makeWorld(server.url);
    const response = await openStream(`${server.url}/api/v1/runs/${world.runId}/stream`, {
      authorization: `Bearer ${world.viewer.token}`,
      'accept-encoding': 'gzip, deflate, br, zstd',
    });
    try {
      expect(response.statusCode).toBe(200);
      expect(response.headers['content-encoding']).toBeUndefined();
      const chunk = await new Promise<Buffer>((resolve) => response.once('data', resolve));
      expect(chunk.toString('utf8')).toMatch(/^retry: \d+\n/);
    } finally {
      response.destroy();
    }
  });
});
