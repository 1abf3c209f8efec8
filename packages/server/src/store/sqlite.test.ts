import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AppError } from '../errors.js';
import { SQLITE_MIGRATIONS } from './migrations.js';
import { SqliteStore } from './sqlite.js';
import type { CommitResult, IdempotencyClaim, RunChange, RunRecord } from './store.js';

const AT = '2026-01-01T00:00:00.000Z';
const PROJECT = 'prj_01J0000000000000000000000A';

function runRecord(runId: string): RunRecord {
  return {
    run_id: runId,
    project_id: PROJECT,
    kind: 'external',
    mode: null,
    status: 'CREATED',
    stage: null,
    current_stage: null,
    progress: null,
    stats: null,
    seq: 0,
    created_at: AT,
    started_at: null,
    finished_at: null,
    updated_at: AT,
    error: null,
    retry_of: null,
    config: null,
    created_by: 'usr_1',
    log_count: 0,
    pruned_through_seq: 0,
  };
}

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
