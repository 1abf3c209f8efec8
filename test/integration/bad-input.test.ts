import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Answer,
  type Api,
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';

// Bad input of every kind: each answer is its 4xx with the contract's error body, never a 500,
// and no run changes because of it.

/** A well-formed run id that no run has. */
const UNKNOWN_RUN_ID = 'run_01ARZ3NDEKTSV4RRFFQ69G5FAV';
const MB = 1024 * 1024;

/** Asserts the answer is the contract's error: the status, `{error: {code, message}}`, never a 500. */
function expectError(answer: Answer, status: number, code: string): void {
  expect(answer.status, JSON.stringify(answer.body).slice(0, 300)).toBeLessThan(500);
  expect(answer.status, JSON.stringify(answer.body).slice(0, 300)).toBe(status);
  expect(answer.headers.get('content-type') ?? '').toMatch(/^application\/json/);
  expect(answer.body).toEqual({ error: { code, message: expect.any(String) } });
  expect(answer.body.error.message.length).toBeGreaterThan(0);
}

describe('bad input', () => {
  let server: TestServer;
  let world: World;
  /** Every run a case could touch, and who may read it. */
  let watched: { runId: string; reader: Api }[];

  /** Runs `act` and asserts that no watched run changed: same seq, same fields. */
  async function expectNoRunChanged(act: () => Promise<void>): Promise<void> {
    const read = () => Promise.all(watched.map(({ runId, reader }) => reader.get(`/runs/${runId}`)));
    const before = await read();
    for (const answer of before) expect(answer.status).toBe(200);
    await act();
    const after = await read();
    expect(after.map((answer) => answer.body)).toEqual(before.map((answer) => answer.body));
  }

  beforeAll(async () => {
    server = await startServer();
    world = await makeWorld(server.url);
    // A run with something in every field, so that "unchanged" means something.
    const running = await world.worker.patch(`/runs/${world.runId}/progress`, {
      status: 'RUNNING',
      stage: 'EXPORT',
      current_stage: 'EXPORT group/api (2/5)',
      progress: { percentage: 42.5, message: 'Receiving objects', done: 4250, total: 10000, unit: 'objects' },
      stats: { repositories: 5, repositories_done: 1, refs: 120, objects: 4250, bytes: 1234567, errors: 0 },
    });
    expect(running.status).toBe(200);
    const logged = await world.worker.post(`/runs/${world.runId}/logs`, {
      level: 'info',
      message: 'cloning',
    });
    expect(logged.status).toBe(201);
    watched = [
      { runId: world.runId, reader: world.operator },
      { runId: world.otherRunId, reader: world.outsider },
    ];
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  describe('PATCH /runs/{id}/progress with a bad body', () => {
    const json = 'application/json';
    // [case, status, code, raw body, content type]
    const raw: [string, number, string, string, string][] = [
      ['malformed JSON (unclosed object)', 400, 'INVALID_JSON', '{"status": "RUNNING"', json],
      ['malformed JSON (single quotes)', 400, 'INVALID_JSON', "{'status': 'RUNNING'}", json],
      ['malformed JSON (trailing garbage)', 400, 'INVALID_JSON', '{"status": "RUNNING"} x', json],
      ['malformed JSON (trailing comma)', 400, 'INVALID_JSON', '{"status": "RUNNING",}', json],
      ['a bare NaN literal', 400, 'INVALID_JSON', '{"progress": {"percentage": NaN}}', json],
      ['an Infinity literal', 400, 'INVALID_JSON', '{"progress": {"percentage": Infinity}}', json],
      [
        'a number that overflows to Infinity',
        400,
        'INVALID_INPUT',
        '{"progress": {"percentage": 1e999}}',
        json,
      ],
      ['an empty body with a JSON content type', 400, 'INVALID_JSON', '', json],
      ['a blank body with a JSON content type', 400, 'INVALID_JSON', '   ', json],
      ['a JSON array', 400, 'INVALID_INPUT', '[]', json],
      ['a JSON array of an update', 400, 'INVALID_INPUT', '[{"status": "RUNNING"}]', json],
      ['a JSON string', 400, 'INVALID_INPUT', '"RUNNING"', json],
      ['a JSON number', 400, 'INVALID_INPUT', '42', json],
      ['JSON null', 400, 'INVALID_INPUT', 'null', json],
      ['a __proto__ key', 400, 'INVALID_JSON', '{"__proto__": {"status": "COMPLETED"}}', json],
      [
        'a constructor.prototype key',
        400,
        'INVALID_JSON',
        '{"constructor": {"prototype": {"status": "COMPLETED"}}}',
        json,
      ],
      ['JSON sent as text/plain', 415, 'UNSUPPORTED_MEDIA_TYPE', '{"status": "RUNNING"}', 'text/plain'],
      [
        'JSON sent as application/xml',
        415,
        'UNSUPPORTED_MEDIA_TYPE',
        '{"status": "RUNNING"}',
        'application/xml',
      ],
      ['a form body', 415, 'UNSUPPORTED_MEDIA_TYPE', 'status=RUNNING', 'application/x-www-form-urlencoded'],
      ['a multipart content type', 415, 'UNSUPPORTED_MEDIA_TYPE', '--x--', 'multipart/form-data; boundary=x'],
    ];
    it.each(raw)('%s answers %i %s', async (_name, status, code, body, contentType) => {
      await expectNoRunChanged(async () => {
        const answer = await world.worker.patch(`/runs/${world.runId}/progress`, body, {
          'content-type': contentType,
        });
        expectError(answer, status, code);
      });
    });

    // [case, body] — every one is a 400 INVALID_INPUT.
    const invalid: [string, unknown][] = [
      ['percentage as a string', { progress: { percentage: '42' } }],
      ['percentage as "NaN"', { progress: { percentage: 'NaN' } }],
      ['percentage as null', { progress: { percentage: null } }],
      ['percentage as a boolean', { progress: { percentage: true } }],
      ['percentage below 0', { progress: { percentage: -1 } }],
      ['percentage just below 0', { progress: { percentage: -0.001 } }],
      ['percentage above 100', { progress: { percentage: 100.5 } }],
      ['percentage far above 100', { progress: { percentage: 1e9 } }],
      ['done as "NaN"', { progress: { done: 'NaN' } }],
      ['done negative', { progress: { done: -5 } }],
      ['total as a string', { progress: { total: '10000' } }],
      ['rate_per_s negative', { progress: { rate_per_s: -1 } }],
      ['eta_s as "NaN"', { progress: { eta_s: 'NaN' } }],
      ['progress message as a number', { progress: { message: 12 } }],
      ['progress as an array', { progress: [42] }],
      ['progress as a number', { progress: 42 }],
      ['status as a number', { status: 5 }],
      ['status unknown', { status: 'DONE' }],
      ['status in lower case', { status: 'running' }],
      ['status as null', { status: null }],
      ['stage as a number', { stage: 3 }],
      ['stage too long', { stage: 'S'.repeat(81) }],
      ['current_stage as an object', { current_stage: { name: 'EXPORT' } }],
      ['stats as a string', { stats: 'many' }],
      ['stats.refs as a string', { stats: { refs: '120' } }],
      ['stats.refs as null', { stats: { refs: null } }],
      ['stats.objects as "NaN"', { stats: { objects: 'NaN' } }],
      ['stats.bytes negative', { stats: { bytes: -1 } }],
      ['stats.errors fractional', { stats: { errors: 1.5 } }],
      ['stats.bytes beyond a safe integer', { stats: { bytes: 2 ** 60 } }],
      ['error without a message', { error: { code: 'X' } }],
      ['unknown top-level field', { status: 'RUNNING', percent: 42 }],
      ['only an unknown top-level field', { colour: 'green' }],
      ['seq in the body', { seq: 9999 }],
      ['run_id in the body', { run_id: UNKNOWN_RUN_ID }],
      ['finished_at in the body', { finished_at: '2020-01-01T00:00:00.000Z' }],
      ['unknown field in progress', { progress: { percentage: 50, speed: 'fast' } }],
      ['unknown field in stats', { stats: { refs: 1, branches: 2 } }],
      ['unknown field in error', { error: { code: 'X', message: 'y', hint: 'z' } }],
      ['valid fields beside an invalid one', { stage: 'APPLY', progress: { percentage: 101 } }],
    ];
    it.each(invalid)('%s answers 400 INVALID_INPUT', async (_name, body) => {
      await expectNoRunChanged(async () => {
        const answer = await world.worker.patch(`/runs/${world.runId}/progress`, body);
        expectError(answer, 400, 'INVALID_INPUT');
      });
    });

    it('names the unknown field in the message', async () => {
      const answer = await world.worker.patch(`/runs/${world.runId}/progress`, {
        status: 'RUNNING',
        percent: 42,
      });
      expectError(answer, 400, 'INVALID_INPUT');
      expect(answer.body.error.message).toContain('percent');
      const nested = await world.worker.patch(`/runs/${world.runId}/progress`, { progress: { speed: 1 } });
      expectError(nested, 400, 'INVALID_INPUT');
      expect(nested.body.error.message).toContain('speed');
    });

    it('answers an empty PATCH (no body, no content type) with 400 INVALID_INPUT', async () => {
      await expectNoRunChanged(async () => {
        const answer = await world.worker.patch(`/runs/${world.runId}/progress`);
        expectError(answer, 400, 'INVALID_INPUT');
      });
    });

    it('answers a 1 MB body with 413 PAYLOAD_TOO_LARGE', async () => {
      await expectNoRunChanged(async () => {
        const answer = await world.worker.patch(`/runs/${world.runId}/progress`, {
          current_stage: 'x'.repeat(MB),
        });
        expectError(answer, 413, 'PAYLOAD_TOO_LARGE');
      });
    });
  });

  describe('POST /runs/{id}/logs with a bad body', () => {
    const entry = { level: 'info', message: 'ok' };
    // [case, body, status, code]
    const cases: [string, unknown, number, string][] = [
      ['a bad level', { level: 'fatal', message: 'x' }, 400, 'INVALID_INPUT'],
      ['a level in upper case', { level: 'INFO', message: 'x' }, 400, 'INVALID_INPUT'],
      ['a numeric level', { level: 3, message: 'x' }, 400, 'INVALID_INPUT'],
      ['no message', { level: 'info' }, 400, 'INVALID_INPUT'],
      ['a numeric message', { level: 'info', message: 42 }, 400, 'INVALID_INPUT'],
      ['a null message', { level: 'info', message: null }, 400, 'INVALID_INPUT'],
      ['an unknown field in an entry', { level: 'info', message: 'x', colour: 'red' }, 400, 'INVALID_INPUT'],
      ['data that is not an object', { level: 'info', message: 'x', data: [1, 2] }, 400, 'INVALID_INPUT'],
      ['a stage that is a number', { level: 'info', message: 'x', stage: 7 }, 400, 'INVALID_INPUT'],
      ['an empty object', {}, 400, 'INVALID_INPUT'],
      ['an empty entries array', { entries: [] }, 400, 'INVALID_INPUT'],
      ['1001 entries', { entries: Array.from({ length: 1001 }, () => entry) }, 400, 'INVALID_INPUT'],
      ['entries that is not an array', { entries: entry }, 400, 'INVALID_INPUT'],
      [
        'one bad entry among good ones',
        { entries: [entry, { level: 'loud', message: 'x' }, entry] },
        400,
        'INVALID_INPUT',
      ],
      ['entries beside an entry', { ...entry, entries: [entry] }, 400, 'INVALID_INPUT'],
      ['an unknown field beside entries', { entries: [entry], flush: true }, 400, 'INVALID_INPUT'],
      ['a bare array of entries', [entry], 400, 'INVALID_INPUT'],
      ['a 1 MB message', { level: 'info', message: 'x'.repeat(MB) }, 413, 'PAYLOAD_TOO_LARGE'],
      [
        '1 MB of entries',
        { entries: Array.from({ length: 1000 }, () => ({ ...entry, message: 'y'.repeat(1100) })) },
        413,
        'PAYLOAD_TOO_LARGE',
      ],
    ];
    it.each(cases)('%s answers %i %s', async (_name, body, status, code) => {
      await expectNoRunChanged(async () => {
        const answer = await world.worker.post(`/runs/${world.runId}/logs`, body);
        expectError(answer, status, code);
      });
    });

    it.each([
      ['malformed JSON', 400, 'INVALID_JSON', '{"level": "info", "message": ', 'application/json'],
      ['an empty body', 400, 'INVALID_JSON', '', 'application/json'],
      ['text/plain', 415, 'UNSUPPORTED_MEDIA_TYPE', '{"level": "info", "message": "x"}', 'text/plain'],
    ] as const)('%s answers %i %s', async (_name, status, code, body, contentType) => {
      await expectNoRunChanged(async () => {
        const answer = await world.worker.post(`/runs/${world.runId}/logs`, body, {
          'content-type': contentType,
        });
        expectError(answer, status, code);
      });
    });

    it('keeps no entry of a batch that had one bad entry', async () => {
      const before = await world.operator.get(`/runs/${world.runId}/events?since=0`);
      const answer = await world.worker.post(`/runs/${world.runId}/logs`, {
        entries: [entry, { level: 'info', message: 'x', extra: 1 }],
      });
      expectError(answer, 400, 'INVALID_INPUT');
      const after = await world.operator.get(`/runs/${world.runId}/events?since=0`);
      expect(after.body).toEqual(before.body);
    });
  });

  describe('run ids', () => {
    const requests: [string, string, (id: string) => string, unknown][] = [
      ['GET', 'run', (id) => `/runs/${id}`, undefined],
      ['GET', 'progress', (id) => `/runs/${id}/progress`, undefined],
      ['GET', 'progress long-poll', (id) => `/runs/${id}/progress?since=0&wait=1`, undefined],
      ['PATCH', 'progress', (id) => `/runs/${id}/progress`, { stage: 'APPLY' }],
      ['POST', 'logs', (id) => `/runs/${id}/logs`, { level: 'info', message: 'x' }],
      ['GET', 'events', (id) => `/runs/${id}/events`, undefined],
      ['POST', 'cancel', (id) => `/runs/${id}/cancel`, undefined],
      ['POST', 'retry', (id) => `/runs/${id}/retry`, undefined],
    ];
    const malformed: [string, string][] = [
      ['no prefix', '01ARZ3NDEKTSV4RRFFQ69G5FAV'],
      ['a word', 'not-a-run'],
      ['a short id', 'run_123'],
      ['the project prefix', 'prj_01ARZ3NDEKTSV4RRFFQ69G5FAV'],
      ['a letter outside the alphabet', 'run_01ARZ3NDEKTSV4RRFFQ69G5FAU'],
      ['one character too many', 'run_01ARZ3NDEKTSV4RRFFQ69G5FAVX'],
      ['a very long id', `run_${'A'.repeat(5000)}`],
      ['an SQL fragment', encodeURIComponent("run_' OR '1'='1")],
      ['an encoded path', encodeURIComponent('../runs')],
      ['a broken percent-encoding', '%E0%A4%A'],
    ];
    const malformedCases = requests.flatMap(([method, what, path, body]) =>
      malformed.map(([idName, id]) => [`${method} ${what}`, idName, method, path(id), body] as const),
    );
    it.each(malformedCases)(
      '%s with %s answers 400 INVALID_INPUT',
      async (_what, _idName, method, path, body) => {
        await expectNoRunChanged(async () => {
          expectError(await world.worker.request(method, path, body), 400, 'INVALID_INPUT');
          expectError(await world.operator.request(method, path, body), 400, 'INVALID_INPUT');
        });
      },
    );

    const missingCases = requests.flatMap(([method, what, path, body]) => [
      [`${method} ${what}`, 'an unknown run', method, path, body, (): string => UNKNOWN_RUN_ID] as const,
      [
        `${method} ${what}`,
        "another project's run",
        method,
        path,
        body,
        (): string => world.otherRunId,
      ] as const,
    ]);
    it.each(missingCases)(
      '%s of %s answers 404 RUN_NOT_FOUND',
      async (_what, _idName, method, path, body, id) => {
        await expectNoRunChanged(async () => {
          // A worker token, an operator and a viewer alike: never reveal that a run exists.
          for (const api of [world.worker, world.operator, world.viewer]) {
            expectError(await api.request(method, path(id()), body), 404, 'RUN_NOT_FOUND');
          }
        });
      },
    );

    it('answers the same message shape for an unknown and a foreign run', async () => {
      const unknown = await world.operator.get(`/runs/${UNKNOWN_RUN_ID}/progress`);
      const foreign = await world.operator.get(`/runs/${world.otherRunId}/progress`);
      expectError(unknown, 404, 'RUN_NOT_FOUND');
      expectError(foreign, 404, 'RUN_NOT_FOUND');
      expect(foreign.body.error.message.replace(world.otherRunId, 'ID')).toBe(
        unknown.body.error.message.replace(UNKNOWN_RUN_ID, 'ID'),
      );
    });
  });

  describe('query strings', () => {
    const progressQueries = [
      'since=-1',
      'since=1.5',
      'since=abc',
      'since=99999999999999999999',
      `since=${Number.MAX_SAFE_INTEGER + 1}`,
      'since=1&since=2',
      'wait=31',
      'wait=-1',
      'wait=x',
      'wait=1.5',
      'wait=3600',
      'since=0&wait=31',
      'since=-1&wait=1',
      'since=0&wait=x',
      'wait=1&wait=2',
      'follow=true',
    ];
    it.each(progressQueries)('GET progress?%s answers 400 INVALID_INPUT', async (query) => {
      await expectNoRunChanged(async () => {
        const answer = await world.viewer.get(`/runs/${world.runId}/progress?${query}`);
        expectError(answer, 400, 'INVALID_INPUT');
        expect(answer.headers.get('etag')).toBeNull();
      });
    });

    const eventsQueries = [
      'since=-1',
      'since=1.5',
      'since=abc',
      'since=99999999999999999999',
      'limit=0',
      'limit=-3',
      'limit=abc',
      'limit=10001',
      'wait=1',
    ];
    it.each(eventsQueries)('GET events?%s answers 400 INVALID_INPUT', async (query) => {
      await expectNoRunChanged(async () => {
        expectError(await world.viewer.get(`/runs/${world.runId}/events?${query}`), 400, 'INVALID_INPUT');
      });
    });

    const listQueries = [
      'status=DONE',
      'status=RUNNING,DONE',
      'limit=0',
      'limit=201',
      'limit=abc',
      'cursor=abc',
      'project_id=nope',
      'colour=green',
    ];
    it.each(listQueries)('GET runs?%s answers 400 INVALID_INPUT', async (query) => {
      expectError(await world.operator.get(`/runs?${query}`), 400, 'INVALID_INPUT');
    });
  });

  describe('state changes', () => {
    async function newRun(): Promise<string> {
      const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
      expect(created.status).toBe(201);
      return created.body.run_id;
    }

    async function runIn(path: readonly string[]): Promise<string> {
      const runId = await newRun();
      for (const status of path) {
        const moved = await world.worker.patch(`/runs/${runId}/progress`, { status });
        expect(moved.status, JSON.stringify(moved.body)).toBe(200);
      }
      return runId;
    }

    /** Runs `act` and asserts that `runId` did not change. */
    async function expectRunUnchanged(runId: string, act: () => Promise<void>): Promise<void> {
      const before = await world.operator.get(`/runs/${runId}`);
      const beforeEvents = await world.operator.get(`/runs/${runId}/events?since=0`);
      await act();
      expect((await world.operator.get(`/runs/${runId}`)).body).toEqual(before.body);
      expect((await world.operator.get(`/runs/${runId}/events?since=0`)).body).toEqual(beforeEvents.body);
    }

    // [from, path to reach it, to]
    const illegal: [string, string[], string][] = [
      ['CREATED', [], 'COMPLETED'],
      ['QUEUED', ['QUEUED'], 'CREATED'],
      ['QUEUED', ['QUEUED'], 'COMPLETED'],
      ['RUNNING', ['RUNNING'], 'CREATED'],
      ['RUNNING', ['RUNNING'], 'QUEUED'],
      ['RUNNING', ['QUEUED', 'RUNNING'], 'QUEUED'],
    ];
    it.each(illegal)('%s -> %s is 409 INVALID_TRANSITION', async (_from, path, to) => {
      const runId = await runIn(path);
      await expectRunUnchanged(runId, async () => {
        const answer = await world.worker.patch(`/runs/${runId}/progress`, {
          status: to,
          stage: 'APPLY',
          progress: { percentage: 99 },
        });
        expectError(answer, 409, 'INVALID_TRANSITION');
      });
    });

    it('refuses to retry a run that is not FAILED or CANCELED with 409 INVALID_TRANSITION', async () => {
      const runId = await runIn(['RUNNING']);
      await expectRunUnchanged(runId, async () => {
        expectError(await world.operator.post(`/runs/${runId}/retry`), 409, 'INVALID_TRANSITION');
      });
      const listed = await world.operator.get(`/runs?project_id=${world.projectId}&limit=200`);
      expect(listed.body.runs.filter((run: { retry_of: string | null }) => run.retry_of === runId)).toEqual(
        [],
      );
    });

    const terminalPaths: Record<string, string[]> = {
      COMPLETED: ['RUNNING', 'COMPLETED'],
      FAILED: ['RUNNING', 'FAILED'],
      CANCELED: ['CANCELED'],
    };
    const changes: [string, string, string, unknown][] = [
      ['PATCH the same status', 'PATCH', 'progress', 'SAME'],
      ['PATCH RUNNING', 'PATCH', 'progress', { status: 'RUNNING' }],
      ['PATCH another terminal status', 'PATCH', 'progress', 'OTHER'],
      ['PATCH progress only', 'PATCH', 'progress', { progress: { percentage: 10 } }],
      ['PATCH stage only', 'PATCH', 'progress', { stage: 'VERIFY' }],
      ['PATCH an empty update', 'PATCH', 'progress', {}],
      ['POST one log line', 'POST', 'logs', { level: 'info', message: 'late' }],
      ['POST a batch of log lines', 'POST', 'logs', { entries: [{ level: 'warn', message: 'late' }] }],
      ['POST cancel', 'POST', 'cancel', undefined],
    ];
    const terminalCases = Object.keys(terminalPaths).flatMap((status) =>
      changes.map(([name, method, what, body]) => [status, name, method, what, body] as const),
    );
    it.each(terminalCases)('a %s run: %s is 409 RUN_TERMINAL', async (status, _name, method, what, body) => {
      const runId = await runIn(terminalPaths[status]!);
      const other = status === 'COMPLETED' ? 'FAILED' : 'COMPLETED';
      const sent = body === 'SAME' ? { status } : body === 'OTHER' ? { status: other } : body;
      await expectRunUnchanged(runId, async () => {
        const answer = await world.worker.request(method, `/runs/${runId}/${what}`, sent);
        expectError(answer, 409, 'RUN_TERMINAL');
        expect(answer.body.error.message).toContain(status);
      });
    });
  });
});
