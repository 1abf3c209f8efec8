import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { postgresForFile } from '../../../../test/support/postgres.js';
import type { CommitNotifier } from '../bus/bus.js';
import { AppError } from '../errors.js';
import {
  appendOne,
  claim,
  committed,
  describeStoreContract,
  rejection,
  seedRuns,
} from '../test-support/store-contract.js';
import { CachedStore } from './cached.js';
import { PostgresStore, type PostgresStoreOptions } from './postgres.js';
import { POSTGRES_MIGRATIONS } from './postgres-migrations.js';
import type { CommitResult, Store } from './store.js';

/** A new, empty database on the file's server. */
const newDatabase = postgresForFile('runcast');

describeStoreContract('PostgreSQL', async ({ eventRetention, now }) => {
  const url = await newDatabase();
  const options: PostgresStoreOptions = { url, eventRetention, now };
  return { store: await PostgresStore.open(options), reopen: () => PostgresStore.open(options) };
});

// Behind the read cache, as the server runs it, every commit is handed the caller's copy of its
// run and is first tried without locks: the same contract must hold.
describeStoreContract('PostgreSQL behind its read cache', async ({ eventRetention, now }) => {
  const url = await newDatabase();
  const options: PostgresStoreOptions = { url, eventRetention, now };
  return {
    store: new CachedStore(await PostgresStore.open(options)),
    reopen: async () => new CachedStore(await PostgresStore.open(options)),
  };
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

  /**
   * Two nodes commit one log each, `perWave` at a time, in interleaved waves, so that their batches
   * contend for the run's row again and again; then every seq was given once, and each log is
   * stored under the seq its commit was acknowledged with.
   */
  async function raceOnOneRun(a: Store, b: Store, waves: number, perWave: number): Promise<void> {
    await seedRuns(a, 'run_a');
    const calls: Promise<CommitResult>[] = [];
    for (let wave = 0; wave < waves; wave++) {
      for (let i = 0; i < perWave; i++) {
        calls.push(a.commitRun('run_a', appendOne(`a${wave}.${i}`)));
        calls.push(b.commitRun('run_a', appendOne(`b${wave}.${i}`)));
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    const results = await Promise.all(calls);
    const total = 2 * waves * perWave;
    const seqs = results.map((result) => committed(result).run.seq).sort((x, y) => x - y);
    expect(seqs).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    const replay = await a.replay('run_a', 0, 2 * total);
    expect(replay?.events.map((event) => event.seq)).toEqual(seqs);
    const bySeq = new Map(replay?.events.map((event) => [event.seq, event.log.message]));
    for (const result of results) {
      const { run, logs } = committed(result);
      expect(bySeq.get(run.seq)).toBe(logs[0]?.log.message);
    }
    expect(replay?.run).toMatchObject({ seq: total, log_count: total });
  }

  it('gives two nodes committing to one run every seq exactly once, with every log stored', async () => {
    const { stores: pair } = await nodes(2);
    await raceOnOneRun(pair[0] as PostgresStore, pair[1] as PostgresStore, 10, 50);
  });

  it('commits from copies another node made stale: every seq once, every log under its seq', async () => {
    const { stores: pair } = await nodes(2);
    // Behind their caches, each node hands its last copy of the run to every commit (tried
    // without locks), and the other node's commits keep making it stale.
    const [a, b] = pair.map((store) => new CachedStore(store)) as [CachedStore, CachedStore];
    await raceOnOneRun(a, b, 10, 20);
  });

  it("sends each commit's notifications with it: once, in commit order, however it was written", async () => {
    const channel = 'runcast_store_test';
    const notifier: CommitNotifier = {
      channel,
      payloads: (changes) => changes.map(({ run }) => `${run.run_id}:${run.seq}`),
    };
    const { url, stores: pair } = await nodes(2, { notifier });
    const listener = new pg.Client({ connectionString: url });
    await listener.connect();
    const heard: string[] = [];
    const runIds = ['run_a', 'run_b'];
    const total = 2 * 100 + 50;
    const allHeard = new Promise<void>((resolve) => {
      listener.on('notification', ({ payload }) => {
        heard.push(payload ?? '');
        if (heard.length === total) resolve();
      });
    });
    try {
      await listener.query(`LISTEN ${channel}`);
      const [a, b] = pair.map((store) => new CachedStore(store)) as [CachedStore, CachedStore];
      await seedRuns(a, ...runIds);
      const calls: Promise<CommitResult>[] = [];
      for (let i = 0; i < 50; i++) {
        // run_a from both nodes (their copies go stale and their batches are written again under
        // locks), run_b from one node (written without locks).
        calls.push(a.commitRun('run_a', appendOne(`a${i}`)), b.commitRun('run_a', appendOne(`b${i}`)));
        calls.push(a.commitRun('run_b', appendOne(`c${i}`)), a.commitRun('run_b', appendOne(`d${i}`)));
        calls.push(b.commitRun('run_a', appendOne(`e${i}`)));
        if (i % 5 === 0) await new Promise((resolve) => setImmediate(resolve));
      }
      await Promise.all(calls);
      await allHeard;
      for (const runId of runIds) {
        const seqs = heard
          .filter((note) => note.startsWith(`${runId}:`))
          .map((note) => Number(note.split(':')[1]));
        const count = (await pair[0]?.getRun(runId))?.seq ?? 0;
        expect(seqs).toEqual(Array.from({ length: count }, (_, i) => i + 1));
      }
      expect(heard).toHaveLength(total);
    } finally {
      await listener.end();
    }
  });

  it("starts a busy lane's batches at most every batchIntervalMs, gathering the calls meanwhile", async () => {
    const channel = 'runcast_interval_test';
    // One notification per batch, naming the seqs it committed.
    const notifier: CommitNotifier = {
      channel,
      payloads: (changes) => [changes.map(({ run }) => run.seq).join(',')],
    };
    const intervalMs = 300;
    const { url, stores: started } = await nodes(1, { notifier, batchIntervalMs: intervalMs });
    const store = started[0] as PostgresStore;
    const listener = new pg.Client({ connectionString: url });
    await listener.connect();
    const heard: string[] = [];
    const twoHeard = new Promise<void>((resolve) => {
      listener.on('notification', ({ payload }) => {
        heard.push(payload ?? '');
        if (heard.length === 2) resolve();
      });
    });
    try {
      await listener.query(`LISTEN ${channel}`);
      await seedRuns(store, 'run_a');
      const startedMs = performance.now();
      // An idle lane commits at once.
      await store.commitRun('run_a', appendOne('first'));
      // The next batch waits for the interval; a call made meanwhile, on a later turn, joins it.
      const second = store.commitRun('run_a', appendOne('second'));
      await new Promise((resolve) => setImmediate(resolve));
      const third = store.commitRun('run_a', appendOne('third'));
      expect((await Promise.all([second, third])).map((result) => committed(result).run.seq)).toEqual([2, 3]);
      expect(performance.now() - startedMs).toBeGreaterThanOrEqual(intervalMs - 5);
      await twoHeard;
      expect(heard).toEqual(['1', '2,3']);
    } finally {
      await listener.end();
    }
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
