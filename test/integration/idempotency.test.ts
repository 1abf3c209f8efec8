import type { RunEvent } from '@runcast/protocol';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  type Api,
  makeWorld,
  startServer,
  type TestServer,
} from '../../packages/server/src/test-support/server.js';

// A producer's request repeated with the same Idempotency-Key for the same run is applied once:
// the repeat answers what the first got, takes no seq and publishes nothing.
describe('Idempotency-Key on PATCH progress and POST logs', () => {
  let server: TestServer;
  let worker: Api;
  let operator: Api;
  let projectId: string;
  let runId: string;
  let published: RunEvent[];
  let unsubscribe: () => void;

  beforeAll(async () => {
    server = await startServer();
    const world = await makeWorld(server.url);
    worker = world.worker;
    operator = world.operator;
    projectId = world.projectId;
  });
  afterAll(() => server.close());

  beforeEach(async () => {
    const run = await operator.post('/runs', { project_id: projectId, kind: 'external' });
    runId = run.body.run_id;
    published = [];
    unsubscribe = server.runcast.bus.subscribe('run-events', ({ events }) => published.push(...events));
  });
  afterEach(() => {
    unsubscribe();
    expect(server.errorLogs).toEqual([]);
  });

  const key = (value: string) => ({ 'idempotency-key': value });
  const seqOf = async () => (await worker.get(`/runs/${runId}`)).body.seq as number;
  const events = async () => (await worker.get(`/runs/${runId}/events?since=0`)).body.events as any[];

  it('applies a progress update repeated with one key once, answering the same', async () => {
    const first = await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' }, key('update-1'));
    expect(first.status).toBe(200);
    expect(first.body.seq).toBe(1);
    const again = await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' }, key('update-1'));
    expect(again.status).toBe(first.status);
    expect(again.body).toEqual(first.body);
    expect(again.headers.get('etag')).toBe(first.headers.get('etag'));
    expect(await seqOf()).toBe(1);
    expect(published.map((e) => e.seq)).toEqual([1]);
  });

  it('applies two updates with different keys twice', async () => {
    const a = await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' }, key('a'));
    const b = await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' }, key('b'));
    expect([a.status, b.status]).toEqual([200, 200]);
    expect([a.body.seq, b.body.seq]).toEqual([1, 2]);
    expect(await seqOf()).toBe(2);
    expect(published.map((e) => e.seq)).toEqual([1, 2]);
  });

  it('answers a repeated terminal update as the first, not 409', async () => {
    await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
    const done = await worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' }, key('done'));
    expect(done.status).toBe(200);
    const again = await worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' }, key('done'));
    expect(again.status).toBe(200);
    expect(again.body).toEqual(done.body);
    expect(again.body.status).toBe('COMPLETED');
    // Without the key the same request is a new one, which a finished run refuses.
    const fresh = await worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
    expect(fresh.status).toBe(409);
  });

  it('appends a log batch repeated with one key once, answering the same seqs', async () => {
    const batch = { entries: [0, 1, 2].map((i) => ({ level: 'info', message: `line ${i}` })) };
    const first = await worker.post(`/runs/${runId}/logs`, batch, key('logs-1'));
    expect(first.status).toBe(201);
    expect(first.body).toEqual({ run_id: runId, first_seq: 1, last_seq: 3 });
    const again = await worker.post(`/runs/${runId}/logs`, batch, key('logs-1'));
    expect(again.status).toBe(201);
    expect(again.body).toEqual(first.body);
    const single = await worker.post(
      `/runs/${runId}/logs`,
      { level: 'warn', message: 'once' },
      key('logs-2'),
    );
    const singleAgain = await worker.post(
      `/runs/${runId}/logs`,
      { level: 'warn', message: 'once' },
      key('logs-2'),
    );
    expect(singleAgain.body).toEqual(single.body);
    expect((await events()).map((e) => e.log.message)).toEqual(['line 0', 'line 1', 'line 2', 'once']);
    expect(await seqOf()).toBe(4);
    expect(published.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
  });

  it('appends log batches with different keys each time', async () => {
    await worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'same' }, key('x'));
    await worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'same' }, key('y'));
    expect((await events()).map((e) => e.seq)).toEqual([1, 2]);
  });

  it('keeps keys apart per run', async () => {
    const other = (await operator.post('/runs', { project_id: projectId, kind: 'external' })).body.run_id;
    await worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'a' }, key('shared'));
    const there = await worker.post(`/runs/${other}/logs`, { level: 'info', message: 'a' }, key('shared'));
    expect(there.status).toBe(201);
    expect(there.body).toEqual({ run_id: other, first_seq: 1, last_seq: 1 });
  });

  it('keeps keys apart per operation and request: a reused key for another request is 400', async () => {
    await worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'a' }, key('k'));
    const otherBody = await worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'b' }, key('k'));
    expect(otherBody.status).toBe(400);
    expect(otherBody.body.error.code).toBe('INVALID_INPUT');
    const otherRoute = await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' }, key('k'));
    expect(otherRoute.status).toBe(400);
    expect(otherRoute.body.error.code).toBe('INVALID_INPUT');
    expect(await seqOf()).toBe(1);
  });

  it.each([
    ['empty', ''],
    ['longer than 200', 'k'.repeat(201)],
    ['with a tab', 'a\tb'],
    ['with a non-ASCII letter', 'clé'],
  ])('refuses a key %s with 400 INVALID_INPUT and commits nothing', async (_name, value) => {
    const update = await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' }, key(value));
    expect(update.status).toBe(400);
    expect(update.body).toEqual({ error: { code: 'INVALID_INPUT', message: expect.any(String) } });
    const logs = await worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'x' }, key(value));
    expect(logs.status).toBe(400);
    expect(logs.body.error.code).toBe('INVALID_INPUT');
    expect(await seqOf()).toBe(0);
  });

  it('accepts a key of 200 printable characters, spaces and punctuation included', async () => {
    const long = `${'a'.repeat(190)} ~!@#$%^&*`;
    expect(long).toHaveLength(200);
    const first = await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' }, key(long));
    const again = await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' }, key(long));
    expect([first.status, again.status]).toEqual([200, 200]);
    expect(await seqOf()).toBe(1);
  });

  it('checks access before answering a repeat', async () => {
    await worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'secret' }, key('k'));
    const anonymous = await worker
      .as(undefined)
      .post(`/runs/${runId}/logs`, { level: 'info', message: 'secret' }, key('k'));
    expect(anonymous.status).toBe(401);
  });
});
