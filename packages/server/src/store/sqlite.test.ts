import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FIXTURE_AT } from '../test-support/records.js';
import {
  appendOne,
  CONTRACT_PROJECT,
  claim,
  committed,
  describeStoreContract,
  seedRuns,
} from '../test-support/store-contract.js';
import { SQLITE_MIGRATIONS } from './migrations.js';
import { SqliteStore } from './sqlite.js';
import type { RunChange, RunRecord } from './store.js';

const AT = FIXTURE_AT;

const contractDirs: string[] = [];
afterAll(() => {
  for (const dir of contractDirs) rmSync(dir, { recursive: true, force: true });
});

describeStoreContract('SQLite', async ({ eventRetention, now }) => {
  const dir = mkdtempSync(join(tmpdir(), 'runcast-store-'));
  contractDirs.push(dir);
  const file = join(dir, 'runcast.db');
  return {
    store: new SqliteStore({ file, eventRetention, now }),
    reopen: async () => new SqliteStore({ file, eventRetention, now }),
  };
});

describe('SqliteStore group commit', () => {
  let dir: string;
  let file: string;
  let store: SqliteStore;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'runcast-store-'));
    file = join(dir, 'runcast.db');
    store = new SqliteStore({ file, eventRetention: 1000 });
    await seedRuns(store, 'run_a', 'run_b', 'run_c');
  });
  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
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
      return appendOne('x')(current);
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

  it('settles calls in call order across runs, rejections included', async () => {
    const order: string[] = [];
    const refuse = (): RunChange => {
      throw new Error('refused');
    };
    const settled = (
      [
        ['a', appendOne('a'), 'run_a'],
        ['b!', refuse, 'run_b'],
        ['c', appendOne('c'), 'run_c'],
        ['zzz!', appendOne('z'), 'run_zzz'],
        ['a2', appendOne('a2'), 'run_a'],
        ['b2', appendOne('b2'), 'run_b'],
      ] as const
    ).map(([name, change, runId]) =>
      store.commitRun(runId, change).then(
        () => order.push(name),
        () => order.push(name),
      ),
    );
    await Promise.all(settled);
    expect(order).toEqual(['a', 'b!', 'c', 'zzz!', 'a2', 'b2']);
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
      INSERT INTO projects (project_id, name, created_by, created_at) VALUES ('${CONTRACT_PROJECT}', 'p', 'usr_1', '${AT}');
      INSERT INTO runs (run_id, project_id, kind, status, seq, created_by, created_at, updated_at)
        VALUES ('run_old', '${CONTRACT_PROJECT}', 'external', 'RUNNING', 7, 'usr_1', '${AT}', '${AT}');
    `);
    old.close();
    const store = new SqliteStore({ file, eventRetention: 100 });
    try {
      expect(store.schemaVersion()).toBe(SQLITE_MIGRATIONS.length);
      expect((await store.getRun('run_old'))?.seq).toBe(7);
      committed(await store.commitRun('run_old', appendOne('x'), { idempotency: claim('k') }));
      expect((await store.commitRun('run_old', appendOne('x'), { idempotency: claim('k') })).replayed).toBe(
        true,
      );
    } finally {
      await store.close();
    }
  });
});
