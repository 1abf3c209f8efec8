import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AppError } from '../errors.js';
import { FIXTURE_AT, newRunRecord } from '../test-support/records.js';
import { SQLITE_MIGRATIONS } from './migrations.js';
import { SqliteStore } from './sqlite.js';
import type { CommitResult, IdempotencyClaim, RunChange, RunRecord } from './store.js';

const AT = FIXTURE_AT;
const PROJECT = 'prj_01J0000000000000000000000A';

const runRecord = (runId: string): RunRecord => newRunRecord(runId, PROJECT, 'usr_1');

async function seed(store: SqliteStore, ...runIds: string[]): Promise<void> {
  await store.createUser({
    user_id: 'usr_1',
    username: 'op',
    role: 'operator',
    password_hash: 'x',
    created_at: AT,
  });
  await store.createProject({ project_id: PROJECT, name: 'p', created_by: 'usr_1', created_at: AT });
  for (const runId of runIds) await store.createRun(runRecord(runId));
}

/** A change that appends one log line, counting how often it ran. */
function appendOne(message: string, calls: { n: number }) {
  return (current: RunRecord): RunChange => {
    calls.n += 1;
    const seq = current.seq + 1;
    return {
      run: { ...current, seq },
      logs: [{ run_id: current.run_id, seq, type: 'log', at: AT, log: { level: 'info', message } }],
    };
  };
}

function claim(key: string, fingerprint = 'fp'): IdempotencyClaim {
  return { key, fingerprint, response: ({ run }) => JSON.stringify({ seq: run.seq }) };
}

function committed(result: CommitResult): RunChange {
  if (result.replayed) throw new Error('expected a commit, got a replay');
  return result.change;
}

describe('SqliteStore idempotent commits', () => {
  let store: SqliteStore;
  let nowMs: number;

  beforeEach(async () => {
    nowMs = Date.parse(AT);
    store = new SqliteStore({ file: ':memory:', eventRetention: 100, now: () => new Date(nowMs) });
    await seed(store, 'run_a', 'run_b');
  });
  afterEach(() => store.close());

  it('commits a key once and answers its repeats with the stored response', async () => {
    const calls = { n: 0 };
    const first = committed(
      await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') }),
    );
    expect(first.run.seq).toBe(1);
    const again = await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') });
    expect(again).toEqual({ replayed: true, response: JSON.stringify({ seq: 1 }) });
    expect(calls.n).toBe(1);
    expect((await store.getRun('run_a'))?.seq).toBe(1);
    expect((await store.replay('run_a', 0, 10))?.events).toHaveLength(1);
  });

  it('keeps keys apart per run, and commits every time without a key', async () => {
    const calls = { n: 0 };
    committed(await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') }));
    committed(await store.commitRun('run_b', appendOne('x', calls), { idempotency: claim('k1') }));
    committed(await store.commitRun('run_a', appendOne('x', calls)));
    committed(await store.commitRun('run_a', appendOne('x', calls), {}));
    expect(calls.n).toBe(4);
    expect((await store.getRun('run_a'))?.seq).toBe(3);
    expect((await store.getRun('run_b'))?.seq).toBe(1);
  });

  it('refuses a key reused for a different request, committing nothing', async () => {
    const calls = { n: 0 };
    committed(await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1', 'one') }));
    const refused = await store
      .commitRun('run_a', appendOne('y', calls), { idempotency: claim('k1', 'two') })
      .catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(AppError);
    expect((refused as AppError).code).toBe('INVALID_INPUT');
    expect(calls.n).toBe(1);
    expect((await store.getRun('run_a'))?.seq).toBe(1);
  });

  it('stores no key when the change throws, so a retry is evaluated afresh', async () => {
    const boom = () => {
      throw new AppError('RUN_TERMINAL', 'no');
    };
    await expect(store.commitRun('run_a', boom, { idempotency: claim('k1') })).rejects.toThrow('no');
    const calls = { n: 0 };
    committed(await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') }));
    expect(calls.n).toBe(1);
  });

  it('answers RUN_NOT_FOUND for an unknown run even with a known key', async () => {
    const calls = { n: 0 };
    committed(await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') }));
    const err = await store
      .commitRun('run_zzz', appendOne('x', calls), { idempotency: claim('k1') })
      .catch((e: unknown) => e);
    expect((err as AppError).code).toBe('RUN_NOT_FOUND');
  });

  it('prunes keys past their TTL when a later key is stored', async () => {
    const calls = { n: 0 };
    committed(await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('old') }));
    nowMs += 23 * 60 * 60 * 1000;
    committed(await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('recent') }));
    // Within 24 h both keys still hold.
    expect(
      (await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('old') })).replayed,
    ).toBe(true);
    nowMs += 2 * 60 * 60 * 1000;
    committed(await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('trigger') }));
    // 25 h after it was stored, `old` is gone and commits again; `recent` (2 h old) is kept.
    expect(
      (await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('old') })).replayed,
    ).toBe(false);
    expect(
      (await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('recent') })).replayed,
    ).toBe(true);
  });
});

/** A change that aborts its commit, counting how often it ran. */
function refuse(calls: { n: number }) {
  return (): RunChange => {
    calls.n += 1;
    throw new AppError('RUN_TERMINAL', 'refused');
  };
}

/** Settles to the error a promise rejects with, or fails the test when it resolves. */
async function rejection(promise: Promise<unknown>): Promise<AppError> {
  const outcome = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  if (!(outcome instanceof AppError)) throw new Error(`expected an AppError, got ${String(outcome)}`);
  return outcome;
}

describe("SqliteStore commits given the caller's copy of the run", () => {
  let store: SqliteStore;
  beforeEach(async () => {
    store = new SqliteStore({ file: ':memory:', eventRetention: 1000 });
    await seed(store, 'run_a');
  });
  afterEach(() => store.close());

  const advance =
    (seen: RunRecord[]) =>
    (current: RunRecord): RunChange => {
      seen.push(current);
      return { run: { ...current, seq: current.seq + 1, stage: `S${current.seq + 1}` }, logs: [] };
    };

  it('uses a copy at the stored seq, and reads the row when the copy is behind', async () => {
    const first = committed(await store.commitRun('run_a', advance([])));
    const seen: RunRecord[] = [];
    await store.commitRun('run_a', advance(seen), { current: first.run });
    expect(seen[0]).toBe(first.run);

    const stale = { ...first.run, stage: 'STALE' };
    await store.commitRun('run_a', advance(seen), { current: stale });
    expect(seen[1]).not.toBe(stale);
    expect(seen[1]).toMatchObject({ seq: 2, stage: 'S2' });
    expect(await store.getRun('run_a')).toMatchObject({ seq: 3, stage: 'S3' });
  });

  it('refuses a change that alters what the run was created with, or does not advance its seq', async () => {
    await expect(
      store.commitRun('run_a', (current) => ({
        run: { ...current, seq: 1, project_id: 'prj_other' },
        logs: [],
      })),
    ).rejects.toThrow("a commit may not change a run's project_id");
    await expect(
      store.commitRun('run_a', (current) => ({ run: { ...current, stage: 'X' }, logs: [] })),
    ).rejects.toThrow("a commit must advance the run's seq");
    expect(await store.getRun('run_a')).toMatchObject({ seq: 0, stage: null, project_id: PROJECT });
  });
});

describe('SqliteStore group commit', () => {
  let dir: string;
  let file: string;
  let store: SqliteStore;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'runcast-store-'));
    file = join(dir, 'runcast.db');
    store = new SqliteStore({ file, eventRetention: 1000 });
    await seed(store, 'run_a', 'run_b', 'run_c');
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('commits many concurrent calls to several runs with consecutive seqs and all their logs', async () => {
    const calls = { n: 0 };
    const runIds = ['run_a', 'run_b', 'run_c'];
    const pending: { runId: string; message: string; result: Promise<CommitResult> }[] = [];
    for (let i = 0; i < 300; i++) {
      const runId = runIds[i % runIds.length] ?? 'run_a';
      const message = `m${i}`;
      pending.push({ runId, message, result: store.commitRun(runId, appendOne(message, calls)) });
    }
    const results = await Promise.all(pending.map((call) => call.result));
    expect(calls.n).toBe(300);
    for (const runId of runIds) {
      const mine = pending.flatMap((call, i) => (call.runId === runId ? [{ ...call, i }] : []));
      // Each call read the row its predecessor wrote, in call order.
      expect(mine.map(({ i }) => committed(results[i] as CommitResult).run.seq)).toEqual(
        mine.map((_, k) => k + 1),
      );
      expect((await store.getRun(runId))?.seq).toBe(100);
      const replay = await store.replay(runId, 0, 1000);
      expect(replay?.events.map((event) => event.seq)).toEqual(mine.map((_, k) => k + 1));
      expect(replay?.events.map((event) => event.log.message)).toEqual(mine.map((call) => call.message));
      expect(replay?.run.log_count).toBe(100);
    }
  });

  /**
   * A change that appends one line to run_a, first noting the seq that a second connection sees:
   * what is committed, as opposed to what this batch has written so far.
   */
  function watchCommitted(seen: number[]) {
    const observer = new Database(file, { readonly: true });
    const committedSeq = observer.prepare('SELECT seq FROM runs WHERE run_id = ?').pluck();
    const change = (current: RunRecord): RunChange => {
      seen.push(committedSeq.get('run_a') as number);
      return appendOne('x', { n: 0 })(current);
    };
    return { change, close: () => observer.close() };
  }

  it('commits the calls of one turn in one transaction', async () => {
    const seen: number[] = [];
    const watch = watchCommitted(seen);
    try {
      await Promise.all([store.commitRun('run_a', watch.change), store.commitRun('run_a', watch.change)]);
      // The second call wrote on top of the first while another connection still saw neither.
      expect(seen).toEqual([0, 0]);
      await store.commitRun('run_a', watch.change);
      expect(seen).toEqual([0, 0, 2]);
    } finally {
      watch.close();
    }
  });

  it('caps a batch, committing the rest in the next turn', async () => {
    await store.close();
    store = new SqliteStore({ file, eventRetention: 1000, maxCommitBatch: 2 });
    const seen: number[] = [];
    const watch = watchCommitted(seen);
    try {
      const results = await Promise.all([1, 2, 3, 4, 5].map(() => store.commitRun('run_a', watch.change)));
      expect(results.map((result) => committed(result).run.seq)).toEqual([1, 2, 3, 4, 5]);
      expect(seen).toEqual([0, 0, 2, 2, 4]);
    } finally {
      watch.close();
    }
  });

  it('rejects only the call whose change throws, committing the rest of its batch', async () => {
    const calls = { n: 0 };
    const refusals = { n: 0 };
    const first = store.commitRun('run_a', appendOne('a1', calls));
    const failing = store.commitRun('run_b', refuse(refusals));
    const failingOnA = store.commitRun('run_a', refuse(refusals));
    const second = store.commitRun('run_a', appendOne('a2', calls));
    const other = store.commitRun('run_c', appendOne('c1', calls));
    expect((await rejection(failing)).code).toBe('RUN_TERMINAL');
    expect((await rejection(failingOnA)).code).toBe('RUN_TERMINAL');
    expect(committed(await first).run.seq).toBe(1);
    expect(committed(await second).run.seq).toBe(2);
    expect(committed(await other).run.seq).toBe(1);
    expect(refusals.n).toBe(2);
    expect(await store.getRun('run_b')).toEqual(runRecord('run_b'));
    expect((await store.replay('run_a', 0, 10))?.events.map((event) => event.log.message)).toEqual([
      'a1',
      'a2',
    ]);
  });

  it('rolls back every write of a call whose statement fails, and only that call', async () => {
    const calls = { n: 0 };
    committed(await store.commitRun('run_a', appendOne('a1', calls)));
    // Logs seq 2 (written), then seq 1 again: the primary key refuses the second insert.
    const clash = (current: RunRecord): RunChange => {
      const event = (seq: number) => ({
        run_id: current.run_id,
        seq,
        type: 'log' as const,
        at: AT,
        log: { level: 'info' as const, message: 'clash' },
      });
      return { run: { ...current, seq: 2 }, logs: [event(2), event(1)] };
    };
    const before = store.commitRun('run_b', appendOne('b1', calls));
    const failing = store.commitRun('run_a', clash);
    const after = store.commitRun('run_a', appendOne('a2', calls));
    await expect(failing).rejects.toThrow(/UNIQUE|PRIMARY/);
    expect(committed(await before).run.seq).toBe(1);
    expect(committed(await after).run.seq).toBe(2);
    const replay = await store.replay('run_a', 0, 10);
    expect(replay?.events.map((event) => event.log.message)).toEqual(['a1', 'a2']);
    expect(replay?.run.log_count).toBe(2);
  });

  it('settles calls in call order, rejections included', async () => {
    const calls = { n: 0 };
    const refusals = { n: 0 };
    const order: string[] = [];
    const settled = [
      ['a', appendOne('a', calls), 'run_a'],
      ['b!', refuse(refusals), 'run_b'],
      ['c', appendOne('c', calls), 'run_c'],
      ['zzz!', appendOne('z', calls), 'run_zzz'],
      ['a2', appendOne('a2', calls), 'run_a'],
      ['b2', appendOne('b2', calls), 'run_b'],
    ].map(([name, change, runId]) =>
      store.commitRun(runId as string, change as (current: RunRecord) => RunChange).then(
        () => order.push(name as string),
        () => order.push(name as string),
      ),
    );
    await Promise.all(settled);
    expect(order).toEqual(['a', 'b!', 'c', 'zzz!', 'a2', 'b2']);
  });

  it('replays a key used twice in one batch, committing once', async () => {
    const calls = { n: 0 };
    const first = store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') });
    const again = store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') });
    const refused = store.commitRun('run_a', appendOne('y', calls), { idempotency: claim('k1', 'other') });
    expect(committed(await first).run.seq).toBe(1);
    expect(await again).toEqual({ replayed: true, response: JSON.stringify({ seq: 1 }) });
    expect((await rejection(refused)).code).toBe('INVALID_INPUT');
    expect(calls.n).toBe(1);
    expect((await store.getRun('run_a'))?.seq).toBe(1);
    expect((await store.replay('run_a', 0, 10))?.events).toHaveLength(1);
  });

  it('commits the pending calls on close, and refuses calls after it', async () => {
    const calls = { n: 0 };
    const pending = [1, 2, 3].map(() => store.commitRun('run_a', appendOne('x', calls)));
    await store.close();
    expect((await Promise.all(pending)).map((result) => committed(result).run.seq)).toEqual([1, 2, 3]);
    expect((await rejection(store.commitRun('run_a', appendOne('x', calls)))).code).toBe('NOT_READY');
    store = new SqliteStore({ file, eventRetention: 1000 });
    expect((await store.getRun('run_a'))?.seq).toBe(3);
    expect((await store.replay('run_a', 0, 10))?.events).toHaveLength(3);
  });
});

describe('SqliteStore migrations', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'runcast-store-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('brings a version-1 database to the current version, keeping its runs', async () => {
    const file = join(dir, 'runcast.db');
    const old = new Database(file);
    old.exec(SQLITE_MIGRATIONS[0] ?? '');
    old.pragma('user_version = 1');
    old.exec(`
      INSERT INTO users (user_id, username, role, password_hash, created_at) VALUES ('usr_1', 'op', 'operator', 'x', '${AT}');
      INSERT INTO projects (project_id, name, created_by, created_at) VALUES ('${PROJECT}', 'p', 'usr_1', '${AT}');
      INSERT INTO runs (run_id, project_id, kind, status, seq, created_by, created_at, updated_at)
        VALUES ('run_old', '${PROJECT}', 'external', 'RUNNING', 7, 'usr_1', '${AT}', '${AT}');
    `);
    old.close();
    const store = new SqliteStore({ file, eventRetention: 100 });
    try {
      expect(store.schemaVersion()).toBe(2);
      expect((await store.getRun('run_old'))?.seq).toBe(7);
      const calls = { n: 0 };
      committed(await store.commitRun('run_old', appendOne('x', calls), { idempotency: claim('k') }));
      expect(
        (await store.commitRun('run_old', appendOne('x', calls), { idempotency: claim('k') })).replayed,
      ).toBe(true);
    } finally {
      await store.close();
    }
  });
});
