import type { RunEvent } from '@runcast/protocol';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MemoryBus } from '../bus/memory.js';
import { AppError } from '../errors.js';
import { SqliteStore } from '../store/sqlite.js';
import { RunService } from './run-service.js';

describe('RunService', () => {
  let store: SqliteStore;
  let bus: MemoryBus;
  let runs: RunService;
  let published: RunEvent[];
  let projectId: string;

  beforeEach(async () => {
    store = new SqliteStore({ file: ':memory:', eventRetention: 5 });
    bus = new MemoryBus();
    published = [];
    bus.subscribe('run-events', ({ events }) => published.push(...events));
    runs = new RunService(store, bus);
    await store.createUser({
      user_id: 'usr_1',
      username: 'op',
      role: 'operator',
      password_hash: 'x',
      created_at: new Date().toISOString(),
    });
    projectId = 'prj_01J0000000000000000000000A';
    await store.createProject({
      project_id: projectId,
      name: 'p',
      created_by: 'usr_1',
      created_at: new Date().toISOString(),
    });
  });
  afterEach(() => store.close());

  const newRun = () => runs.create({ project_id: projectId, kind: 'external', created_by: 'usr_1' });

  async function rejection(promise: Promise<unknown>): Promise<AppError> {
    const err = await promise.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(AppError);
    return err as AppError;
  }

  it('creates a run in CREATED at seq 0 without publishing', async () => {
    const run = await newRun();
    expect(run).toMatchObject({ status: 'CREATED', seq: 0, stage: null, progress: null, started_at: null });
    expect(published).toEqual([]);
  });

  it('replaces present fields and leaves absent ones untouched', async () => {
    const { run_id } = await newRun();
    await runs.updateProgress(run_id, {
      status: 'RUNNING',
      stage: 'EXPORT',
      current_stage: 'EXPORT a (1/2)',
      progress: { percentage: 10, message: 'Receiving objects' },
      stats: { repositories: 2 },
    });
    const afterProgressOnly = await runs.updateProgress(run_id, { progress: { percentage: 20 } });
    expect(afterProgressOnly).toMatchObject({
      status: 'RUNNING',
      stage: 'EXPORT',
      current_stage: 'EXPORT a (1/2)',
      // A present object replaces the stored one whole: the message is gone.
      progress: { percentage: 20 },
      stats: { repositories: 2 },
    });
    const afterStageOnly = await runs.updateProgress(run_id, { current_stage: null });
    expect(afterStageOnly).toMatchObject({
      stage: 'EXPORT',
      current_stage: null,
      progress: { percentage: 20 },
    });
    expect(await runs.updateProgress(run_id, {})).toMatchObject({
      stage: 'EXPORT',
      progress: { percentage: 20 },
    });
  });

  it('gives every change the next seq and publishes it after commit', async () => {
    const { run_id } = await newRun();
    const seqs: number[] = [];
    for (let i = 0; i < 5; i++) {
      seqs.push((await runs.updateProgress(run_id, { progress: { percentage: i } })).seq);
      const { first_seq, last_seq } = await runs.appendLogs(run_id, [
        { level: 'info', message: `a${i}` },
        { level: 'warn', message: `b${i}` },
      ]);
      seqs.push(first_seq, last_seq);
    }
    expect(seqs).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));
    expect(published.map((e) => e.seq)).toEqual(seqs);
    expect((await runs.get(run_id))?.seq).toBe(15);
    const update = published[0];
    expect(update?.type === 'update' && update.snapshot.seq).toBe(1);
  });

  it('keeps seq monotonic per run under concurrent writers', async () => {
    const a = await newRun();
    const b = await newRun();
    await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        i % 2
          ? runs.appendLogs(a.run_id, [{ level: 'info', message: String(i) }])
          : runs.updateProgress(b.run_id, {}),
      ),
    );
    for (const id of [a.run_id, b.run_id]) {
      const seqs = published.filter((e) => e.run_id === id).map((e) => e.seq);
      expect(seqs).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
    }
  });

  it('sets started_at once and finished_at at the terminal state', async () => {
    const { run_id } = await newRun();
    const started = await runs.updateProgress(run_id, { status: 'RUNNING' });
    const again = await runs.updateProgress(run_id, { status: 'RUNNING' });
    expect(again.started_at).toBe(started.started_at);
    expect(again.finished_at).toBeNull();
    const done = await runs.updateProgress(run_id, { status: 'COMPLETED' });
    expect(done.finished_at).not.toBeNull();
  });

  it('refuses illegal transitions and any change to a terminal run, publishing nothing', async () => {
    const { run_id } = await newRun();
    expect((await rejection(runs.updateProgress(run_id, { status: 'COMPLETED' }))).code).toBe(
      'INVALID_TRANSITION',
    );
    await runs.cancel(run_id);
    published.length = 0;
    expect((await rejection(runs.updateProgress(run_id, { progress: { percentage: 1 } }))).code).toBe(
      'RUN_TERMINAL',
    );
    expect((await rejection(runs.appendLogs(run_id, [{ level: 'info', message: 'late' }]))).code).toBe(
      'RUN_TERMINAL',
    );
    expect((await rejection(runs.cancel(run_id))).code).toBe('RUN_TERMINAL');
    expect(published).toEqual([]);
    expect((await runs.get(run_id))?.status).toBe('CANCELED');
  });

  it('retries a FAILED or CANCELED run as a new run with the same configuration', async () => {
    const original = await runs.create({
      project_id: projectId,
      kind: 'external',
      mode: 'FULL',
      config: { source: 'a' },
      created_by: 'usr_1',
    });
    expect((await rejection(runs.retry(original.run_id, 'usr_1'))).code).toBe('INVALID_TRANSITION');
    await runs.updateProgress(original.run_id, { status: 'FAILED', error: { code: 'X', message: 'boom' } });
    const retried = await runs.retry(original.run_id, 'usr_1');
    expect(retried).toMatchObject({
      status: 'CREATED',
      mode: 'FULL',
      config: { source: 'a' },
      retry_of: original.run_id,
    });
    expect(retried.run_id).not.toBe(original.run_id);
  });

  it('refuses kinds this server cannot run', async () => {
    const err = await rejection(
      runs.create({ project_id: projectId, kind: 'git-mirror', created_by: 'usr_1' }),
    );
    expect(err.code).toBe('KIND_UNSUPPORTED');
  });

  it('keeps the newest logs within retention and reports a cursor that fell out of it', async () => {
    const { run_id } = await newRun();
    for (let i = 1; i <= 8; i++) await runs.appendLogs(run_id, [{ level: 'info', message: `line ${i}` }]);
    const fromStart = await runs.replay(run_id, 0, 100);
    expect(fromStart?.truncated).toBe(true);
    expect(fromStart?.events.map((e) => e.log.message)).toEqual([
      'line 4',
      'line 5',
      'line 6',
      'line 7',
      'line 8',
    ]);
    const fromEdge = await runs.replay(run_id, 3, 100);
    expect(fromEdge?.truncated).toBe(false);
    expect(fromEdge?.events.map((e) => e.seq)).toEqual([4, 5, 6, 7, 8]);
    const paged = await runs.replay(run_id, 3, 2);
    expect(paged).toMatchObject({ more: true, truncated: false });
    expect(paged?.events.map((e) => e.seq)).toEqual([4, 5]);
  });
});
