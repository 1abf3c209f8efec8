import { connect } from 'node:net';
import { FREE_FORM_BOUNDS } from '@runcast/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Answer,
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { within } from '../support/async.js';

// Input built to hurt: nesting that would exhaust the stack when a replay serializes it, numbers
// and strings that storage would keep as something else than what was acknowledged, and requests
// Node's HTTP parser refuses. Each is refused with the contract's error, and nothing is stored.

const DEPTH = FREE_FORM_BOUNDS.logData.depth;

/** JSON text of `{"a": {"a": … {}}}`, `depth` objects deep (built as text: no recursion). */
function nestedText(depth: number): string {
  return `${'{"a":'.repeat(depth - 1)}{}${'}'.repeat(depth - 1)}`;
}

/** An object `depth` levels deep. */
function nested(depth: number): Record<string, unknown> {
  return JSON.parse(nestedText(depth)) as Record<string, unknown>;
}

function expectError(answer: Answer, status: number, code: string): void {
  expect(answer.status, JSON.stringify(answer.body).slice(0, 300)).toBe(status);
  expect(answer.headers.get('content-type') ?? '').toMatch(/^application\/json/);
  expect(answer.body).toEqual({ error: { code, message: expect.any(String) } });
}

/** Sends raw bytes on a fresh connection; resolves with everything the server sent until it closed. */
function rawRequest(url: string, bytes: string | Buffer): Promise<string> {
  const { hostname, port } = new URL(url);
  return within(
    new Promise<string>((resolve, reject) => {
      const socket = connect(Number(port), hostname);
      const chunks: Buffer[] = [];
      socket.on('data', (chunk) => chunks.push(chunk));
      socket.on('error', reject);
      socket.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
      socket.write(bytes);
    }),
    10_000,
    'the server to answer and close',
  );
}

/** Status and JSON body of a raw HTTP/1.1 answer. */
function parseRaw(raw: string): { status: number; contentType: string; body: unknown } {
  const [head = '', body = ''] = raw.split('\r\n\r\n', 2);
  const status = Number(/^HTTP\/1\.1 (\d{3}) /.exec(head)?.[1]);
  const contentType = /\r\ncontent-type: ([^\r]*)/i.exec(head)?.[1] ?? '';
  return { status, contentType, body: body ? JSON.parse(body) : undefined };
}

describe('hostile input', () => {
  let server: TestServer;
  let world: World;

  beforeAll(async () => {
    server = await startServer();
    world = await makeWorld(server.url);
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  const seqOf = async (runId: string): Promise<number> =>
    (await world.operator.get(`/runs/${runId}`)).body.seq;

  /** Runs `act` and asserts that the run's seq did not move: nothing was stored. */
  async function expectNothingStored(runId: string, act: () => Promise<void>): Promise<void> {
    const before = await seqOf(runId);
    await act();
    expect(await seqOf(runId)).toBe(before);
  }

  /** Replays of the run still answer: every stored event serializes. */
  async function expectReplaysWork(runId: string): Promise<void> {
    for (const path of [`/runs/${runId}/events?since=0`, `/runs/${runId}/progress?since=0`]) {
      const answer = await world.operator.get(path);
      expect(answer.status, `${path}: ${JSON.stringify(answer.body).slice(0, 200)}`).toBe(200);
    }
  }

  async function newRun(body: Record<string, unknown> = {}): Promise<string> {
    const created = await world.operator.post('/runs', {
      project_id: world.projectId,
      kind: 'external',
      ...body,
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    return created.body.run_id;
  }

  describe('nesting and size of free-form fields', () => {
    it(`keeps log data ${DEPTH} levels deep, and refuses one level more`, async () => {
      const runId = await newRun();
      const atLimit = await world.worker.post(`/runs/${runId}/logs`, {
        level: 'info',
        message: 'deep but fine',
        data: nested(DEPTH),
      });
      expect(atLimit.status, JSON.stringify(atLimit.body)).toBe(201);
      await expectReplaysWork(runId);
      const events = await world.operator.get(`/runs/${runId}/events?since=0`);
      expect(events.body.events[0].log.data).toEqual(nested(DEPTH));

      await expectNothingStored(runId, async () => {
        const past = await world.worker.post(`/runs/${runId}/logs`, {
          entries: [
            { level: 'info', message: 'ok' },
            { level: 'info', message: 'x', data: nested(DEPTH + 1) },
          ],
        });
        expectError(past, 400, 'INVALID_INPUT');
        expect(past.body.error.message).toMatch(/data nests deeper than 32 levels/);
      });
      await expectReplaysWork(runId);
    });

    it('refuses a log nested 4,150 levels (8 KB) that would poison every replay of the run', async () => {
      const runId = await newRun();
      await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'before' });
      const poison = `{"level":"info","message":"poison","data":${nestedText(4150)}}`;
      expect(poison.length).toBeLessThan(server.config.bodyLimitBytes);
      await expectNothingStored(runId, async () => {
        expectError(await world.worker.post(`/runs/${runId}/logs`, poison), 400, 'INVALID_INPUT');
      });
      await expectReplaysWork(runId);
    });

    it('refuses nesting past the stack in any JSON body, on any route', async () => {
      const runId = await newRun();
      const deep = nestedText(5000);
      await expectNothingStored(runId, async () => {
        for (const [path, body] of [
          [`/runs/${runId}/logs`, `{"level":"info","message":"x","data":${deep}}`],
          [`/runs/${runId}/progress`, `{"error":{"code":"X","message":"y","details":${deep}}}`],
          ['/runs', `{"project_id":"${world.projectId}","kind":"external","config":${deep}}`],
          ['/projects', `{"name":${deep}}`],
        ] as const) {
          const method = path.endsWith('/progress') ? 'PATCH' : 'POST';
          const answer = await world.operator.request(method, path, body);
          expectError(answer, 400, 'INVALID_INPUT');
          expect(answer.body.error.message).toContain('nests deeper than');
        }
      });
    });

    it(`bounds run config at ${DEPTH} levels and ${FREE_FORM_BOUNDS.runConfig.bytes} bytes`, async () => {
      await newRun({ config: nested(DEPTH) });
      const runs = (await world.operator.get(`/runs?project_id=${world.projectId}&limit=200`)).body.runs
        .length;
      const tooDeep = await world.operator.post('/runs', {
        project_id: world.projectId,
        kind: 'external',
        config: nested(DEPTH + 1),
      });
      expectError(tooDeep, 400, 'INVALID_INPUT');
      expect(tooDeep.body.error.message).toMatch(/config nests deeper than 32 levels/);
      const tooLarge = await world.operator.post('/runs', {
        project_id: world.projectId,
        kind: 'external',
        config: { notes: 'x'.repeat(FREE_FORM_BOUNDS.runConfig.bytes) },
      });
      expectError(tooLarge, 400, 'INVALID_INPUT');
      expect(tooLarge.body.error.message).toMatch(/config is larger than 65536 bytes/);
      const after = (await world.operator.get(`/runs?project_id=${world.projectId}&limit=200`)).body.runs
        .length;
      expect(after).toBe(runs);
    });

    it(`bounds error.details at ${DEPTH} levels and log data at 16 KB`, async () => {
      const runId = await newRun();
      await expectNothingStored(runId, async () => {
        const deep = await world.worker.patch(`/runs/${runId}/progress`, {
          error: { code: 'E', message: 'deep', details: nested(DEPTH + 1) },
        });
        expectError(deep, 400, 'INVALID_INPUT');
        expect(deep.body.error.message).toMatch(/error\.details nests deeper than 32 levels/);
        const large = await world.worker.post(`/runs/${runId}/logs`, {
          level: 'info',
          message: 'large',
          data: { blob: 'x'.repeat(FREE_FORM_BOUNDS.logData.bytes) },
        });
        expectError(large, 400, 'INVALID_INPUT');
        expect(large.body.error.message).toMatch(/data is larger than 16384 bytes/);
      });
      const fine = await world.worker.patch(`/runs/${runId}/progress`, {
        error: { code: 'E', message: 'fine', details: nested(DEPTH) },
      });
      expect(fine.status, JSON.stringify(fine.body)).toBe(200);
      await expectReplaysWork(runId);
    });
  });

  describe('values storage would not keep as sent', () => {
    // [case, method, path (run id filled in), raw JSON body, text the message names]
    const cases: [string, string, string, string, string][] = [
      [
        '1e999 in progress.done',
        'PATCH',
        '/runs/RUN/progress',
        '{"progress":{"done":1e999}}',
        'body.progress.done',
      ],
      [
        '-1e999 in log data',
        'POST',
        '/runs/RUN/logs',
        '{"level":"info","message":"x","data":{"n":-1e999}}',
        'body.data.n',
      ],
      [
        '1e999 deep in a batch',
        'POST',
        '/runs/RUN/logs',
        '{"entries":[{"level":"info","message":"x","data":{"list":[1,2,1e400]}}]}',
        'body.entries.0.data.list.2',
      ],
      [
        'a lone high surrogate in a message',
        'POST',
        '/runs/RUN/logs',
        '{"level":"info","message":"a\\ud800b"}',
        'body.message',
      ],
      ['a lone low surrogate in a stage', 'PATCH', '/runs/RUN/progress', '{"stage":"\\udc00"}', 'body.stage'],
      [
        'a lone surrogate in a data key',
        'POST',
        '/runs/RUN/logs',
        '{"level":"info","message":"x","data":{"\\ud800":1}}',
        'key',
      ],
      [
        'a reversed surrogate pair',
        'POST',
        '/runs/RUN/logs',
        '{"level":"info","message":"\\ude00\\ud83d"}',
        'lone surrogate',
      ],
    ];
    it.each(cases)('refuses %s with 400 INVALID_INPUT', async (_name, method, path, body, named) => {
      const runId = await newRun();
      await expectNothingStored(runId, async () => {
        const answer = await world.worker.request(method, path.replace('RUN', runId), body);
        expectError(answer, 400, 'INVALID_INPUT');
        expect(answer.body.error.message).toContain(named);
      });
    });

    it('refuses a Last-Event-ID past 2^53 - 1 as it refuses the same ?since=', async () => {
      const runId = await newRun();
      const tooLarge = '9007199254740993';
      expectError(await world.viewer.get(`/runs/${runId}/stream?since=${tooLarge}`), 400, 'INVALID_INPUT');
      expectError(
        await world.viewer.get(`/runs/${runId}/stream`, { 'last-event-id': tooLarge }),
        400,
        'INVALID_INPUT',
      );
      expectError(
        await world.viewer.get(`/stream?runs=${runId}`, { 'last-event-id': `${runId}:${tooLarge}` }),
        400,
        'INVALID_INPUT',
      );
    });

    it('refuses them on routes that store no run, and keeps surrogate pairs and huge finite numbers', async () => {
      expectError(await world.operator.post('/projects', '{"name":"p\\ud800"}'), 400, 'INVALID_INPUT');
      expectError(
        await world.anonymous.post('/auth/login', '{"username":"admin","password":"\\udfff"}'),
        400,
        'INVALID_INPUT',
      );
      const notFinite = await world.operator.post(
        '/runs',
        `{"project_id":"${world.projectId}","kind":"external","config":{"n":1e999}}`,
      );
      expectError(notFinite, 400, 'INVALID_INPUT');
      expect(notFinite.body.error.message).toContain('finite');
      const runId = await newRun();
      const log = {
        level: 'info',
        message: 'emoji \ud83d\ude80 done',
        data: { big: 1.7976931348623157e308 },
      };
      expect((await world.worker.post(`/runs/${runId}/logs`, log)).status).toBe(201);
      const events = await world.operator.get(`/runs/${runId}/events?since=0`);
      expect(events.body.events[0].log).toEqual(log);
    });

    it('refuses bytes that are not UTF-8 with 400 INVALID_JSON', async () => {
      const runId = await newRun();
      await expectNothingStored(runId, async () => {
        const body = Buffer.concat([
          Buffer.from('{"level":"info","message":"'),
          Buffer.from([0xed, 0xa0, 0x80, 0xff]),
          Buffer.from('"}'),
        ]);
        const res = await fetch(`${server.url}/api/v1/runs/${runId}/logs`, {
          method: 'POST',
          headers: { authorization: `Bearer ${world.worker.token}`, 'content-type': 'application/json' },
          body,
        });
        expect(res.status).toBe(400);
        expect(await res.json()).toEqual({ error: { code: 'INVALID_JSON', message: expect.any(String) } });
      });
    });
  });

  describe('requests the HTTP parser refuses answer the contract body', () => {
    const head = 'GET /api/v1/auth/me HTTP/1.1\r\nHost: localhost\r\n';
    // [case, status, code, raw request]
    const cases: [string, number, string, string][] = [
      ['a NUL in a header value', 400, 'INVALID_INPUT', `${head}X-Note: a\0b\r\n\r\n`],
      ['a bare CR in a header value', 400, 'INVALID_INPUT', `${head}X-Note: a\rb\r\n\r\n`],
      [
        'a Content-Length that is not a number',
        400,
        'INVALID_INPUT',
        'POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n',
      ],
      [
        'Content-Length with Transfer-Encoding',
        400,
        'INVALID_INPUT',
        'POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      ],
      ['a 20 KB header', 431, 'HEADERS_TOO_LARGE', `${head}X-Big: ${'a'.repeat(20 * 1024)}\r\n\r\n`],
      ['a malformed request line', 400, 'INVALID_INPUT', 'GET\0/ HTTP/1.1\r\n\r\n'],
    ];
    it.each(cases)('%s answers %i %s', async (_name, status, code, request) => {
      const answer = parseRaw(await rawRequest(server.url, request));
      expect(answer.status).toBe(status);
      expect(answer.contentType).toMatch(/^application\/json/);
      expect(answer.body).toEqual({ error: { code, message: expect.any(String) } });
    });

    it('answers a malformed request that follows an answered one on a kept-alive connection', async () => {
      const { hostname, port } = new URL(server.url);
      const socket = connect(Number(port), hostname);
      const received: Buffer[] = [];
      const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
      const firstAnswered = new Promise<void>((resolve) =>
        socket.on('data', (chunk) => {
          received.push(chunk);
          if (Buffer.concat(received).includes('{"status":"ok"}')) resolve();
        }),
      );
      socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      await within(firstAnswered, 10_000, 'the first answer');
      received.length = 0;
      socket.write(`${head}X-Note: a\0b\r\n\r\n`);
      await within(closed, 10_000, 'the server to close the connection');
      const answer = parseRaw(Buffer.concat(received).toString('utf8'));
      expect(answer.status).toBe(400);
      expect(answer.body).toEqual({ error: { code: 'INVALID_INPUT', message: expect.any(String) } });
    });
  });
});
