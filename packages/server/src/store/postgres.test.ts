import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { postgresForFile } from '../../../../test/support/postgres.js';
import { AppError } from '../errors.js';
import {
  appendOne,
  claim,
  committed,
  describeStoreContract,
  rejection,
  seedRuns,
} from '../test-support/store-contract.js';
import { PostgresStore, type PostgresStoreOptions } from './postgres.js';
import { POSTGRES_MIGRATIONS } from './postgres-migrations.js';
import type { CommitResult } from './store.js';

/** A new, empty database on the file's server. */
const newDatabase = postgresForFile('runcast');

describeStoreContract('PostgreSQL', async ({ eventRetention, now }) => {
  const url = await newDatabase();
  const options: PostgresStoreOptions = { url, eventRetention, now };
  return { store: await PostgresStore.open(options), reopen: () => PostgresStore.open(options) };
});

/** Runs SQL on a database outside any store. */
async function sql(url: string, text: string): Promise<pg.QueryResultRow[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(text)).rows;
  } finally {
    await client.end();
  }
}

describe('PostgresStore across nodes', () => {
  const stores: PostgresStore[] = [];
  afterEach(async () => {
    for (const store of stores.splice(0)) await store.close();
  });

  /** Stores on one database, each with its own pool, as separate nodes would have. */
  async function nodes(count: number, options: Partial<PostgresStoreOptions> = {}) {
    const url = await newDatabase();
    const opened = await Promise.all(
      Array.from({ length: count }, () => PostgresStore.open({ url, eventRetention: 100_000, ...options })),
    );
    stores.push(...opened);
    return { url, stores: opened };
  }

  it('runs the migrations once when several nodes start at once', async () => {
    const { url, stores: started } = await nodes(4);
    const rows = await sql(url, 'SELECT version FROM schema_migrations ORDER BY version');
    expect(rows.map((row) => row.version)).toEqual(POSTGRES_MIGRATIONS.map((_, i) => i + 1));
    for (const store of started) expect(await store.schemaVersion()).toBe(POSTGRES_MIGRATIONS.length);
  });

  it('refuses a database migrated by a newer Runcast', async () => {
    const { url } = await nodes(1);
    await sql(url, 'INSERT INTO schema_migrations (version) VALUES (999)');
    await expect(PostgresStore.open({ url, eventRetention: 100 })).rejects.toThrow(/newer than this Runcast/);
  });

  it('gives two nodes committing to one run every seq exactly once, with every log stored', async () => {
    const { stores: pair } = await nodes(2);
    const [a, b] = pair as [PostgresStore, PostgresStore];
    await seedRuns(a, 'run_a');
    const calls: Promise<CommitResult>[] = [];
    // Interleaved, in waves, so that both nodes' batches contend for the row again and again.
    for (let wave = 0; wave < 10; wave++) {
      for (let i = 0; i < 50; i++) {
        calls.push(a.commitRun('run_a', appendOne(`a${wave}.${i}`)));
        calls.push(b.commitRun('run_a', appendOne(`b${wave}.${i}`)));
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    const results = await Promise.all(calls);
    const seqs = results.map((result) => committed(result).run.seq).sort((x, y) => x - y);
    expect(seqs).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
    const replay = await a.replay('run_a', 0, 2000);
    expect(replay?.events.map((event) => event.seq)).toEqual(seqs);
    // The log each call wrote is stored under the seq its commit was acknowledged with.
    const bySeq = new Map(replay?.events.map((event) => [event.seq, event.log.message]));
    for (const result of results) {
      const { run, logs } = committed(result);
      expect(bySeq.get(run.seq)).toBe(logs[0]?.log.message);
    }
    expect(replay?.run).toMatchObject({ seq: 1000, log_count: 1000 });
  });

  it('never deadlocks nodes whose batches take the same runs in other orders', async () => {
    const { stores: pair } = await nodes(2, { commitLanes: 1 });
    const [a, b] = pair as [PostgresStore, PostgresStore];
    const runIds = ['run_1', 'run_2', 'run_3', 'run_4'];
    await seedRuns(a, ...runIds);
    const calls: Promise<CommitResult>[] = [];
    for (let i = 0; i < 100; i++) {
      for (const runId of runIds) calls.push(a.commitRun(runId, appendOne('a')));
      for (const runId of [...runIds].reverse()) calls.push(b.commitRun(runId, appendOne('b')));
    }
    await Promise.all(calls);
    for (const runId of runIds) expect((await a.getRun(runId))?.seq).toBe(200);
  });

  it('commits an idempotency key once when two nodes race with it', async () => {
    const { stores: pair } = await nodes(2);
    const [a, b] = pair as [PostgresStore, PostgresStore];
    await seedRuns(a, 'run_a');
    const calls = { n: 0 };
    const keys = Array.from({ length: 50 }, (_, i) => `key-${i}`);
    const answers = await Promise.all(
      keys.flatMap((key) => [
        a.commitRun('run_a', appendOne(key, calls), { idempotency: claim(key) }),
        b.commitRun('run_a', appendOne(key, calls), { idempotency: claim(key) }),
      ]),
    );
    expect(calls.n).toBe(keys.length);
    for (let i = 0; i < keys.length; i++) {
      const [first, second] = [answers[2 * i], answers[2 * i + 1]] as [CommitResult, CommitResult];
      expect([first.replayed, second.replayed].sort()).toEqual([false, true]);
      const made = first.replayed ? second : first;
      const repeat = first.replayed ? first : second;
      expect(repeat).toEqual({ replayed: true, response: JSON.stringify({ seq: committed(made).run.seq }) });
    }
    const replay = await a.replay('run_a', 0, 1000);
    expect(replay?.events.map((event) => event.log.message).sort()).toEqual([...keys].sort());
  });

  it('answers STORAGE_FULL while PostgreSQL reports its disk full, and recovers', async () => {
    const changes: boolean[] = [];
    const { url, stores: one } = await nodes(1, { onStorageFull: (full) => changes.push(full) });
    const store = one[0] as PostgresStore;
    await seedRuns(store, 'run_a');
    // What PostgreSQL raises when it cannot extend a file: SQLSTATE 53100.
    await sql(
      url,
      `CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full'; END $$;
       CREATE TRIGGER full_disk BEFORE INSERT ON run_events FOR EACH ROW EXECUTE FUNCTION full_disk();`,
    );
    const refused = await rejection(store.commitRun('run_a', appendOne('x')));
    expect(refused).toBeInstanceOf(AppError);
    expect(refused.code).toBe('STORAGE_FULL');
    expect(changes).toEqual([true]);
    await store.ping();
    await sql(url, 'DROP TRIGGER full_disk ON run_events');
    expect(committed(await store.commitRun('run_a', appendOne('x'))).run.seq).toBe(1);
    expect(changes).toEqual([true, false]);
  });
});
