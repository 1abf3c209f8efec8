import type { LogEvent } from '@runcast/protocol';
import { afterEach, describe, expect, it } from 'vitest';
import { AppError } from '../errors.js';
import type {
  CommitResult,
  IdempotencyClaim,
  RunChange,
  RunFence,
  RunRecord,
  Store,
} from '../store/store.js';
import { FIXTURE_AT, newRunRecord } from './records.js';

// What every Store implementation must do, run against each of them: SQLite (sqlite.test.ts) and
// PostgreSQL (postgres.test.ts). Tests of one implementation's own machinery stay in its file.

/** Settings a contract test asks of the store it is given. */
export interface ContractStoreOptions {
  eventRetention: number;
  /** The clock that dates idempotency keys. */
  now?: () => Date;
}

/** A store on a new, empty database, and a way to open that database again after closing it. */
export interface StoreUnderTest {
  store: Store;
  reopen(): Promise<Store>;
}

export type MakeStore = (options: ContractStoreOptions) => Promise<StoreUnderTest>;

const AT = FIXTURE_AT;
export const CONTRACT_PROJECT = 'prj_01J0000000000000000000000A';
const USER = 'usr_1';

export const contractRun = (runId: string): RunRecord => newRunRecord(runId, CONTRACT_PROJECT, USER);

/** A user, a project it operates, and runs in it. */
export async function seedRuns(store: Store, ...runIds: string[]): Promise<void> {
  await store.createUser({
    user_id: USER,
    username: 'op',
    role: 'operator',
    password_hash: 'x',
    created_at: AT,
  });
  await store.createProject({ project_id: CONTRACT_PROJECT, name: 'p', created_by: USER, created_at: AT });
  for (const runId of runIds) await store.createRun(contractRun(runId));
}

const logEvent = (runId: string, seq: number, message: string, data?: Record<string, unknown>): LogEvent => ({
  run_id: runId,
  seq,
  type: 'log',
  at: AT,
  log: data ? { level: 'info', message, data } : { level: 'info', message },
});

/** A change that appends one log line, counting how often it ran. */
export function appendOne(message: string, calls: { n: number } = { n: 0 }) {
  return (current: RunRecord): RunChange => {
    calls.n += 1;
    const seq = current.seq + 1;
    return { run: { ...current, seq }, logs: [logEvent(current.run_id, seq, message)] };
  };
}

/** A change that appends `count` log lines. */
function appendMany(count: number) {
  return (current: RunRecord): RunChange => {
    const logs = Array.from({ length: count }, (_, i) =>
      logEvent(current.run_id, current.seq + 1 + i, `m${i}`),
    );
    return { run: { ...current, seq: current.seq + count }, logs };
  };
}

/** A change that aborts its commit, counting how often it ran. */
function refuse(calls: { n: number }) {
  return (): RunChange => {
    calls.n += 1;
    throw new AppError('RUN_TERMINAL', 'refused');
  };
}

export function claim(key: string, fingerprint = 'fp'): IdempotencyClaim {
  return { key, fingerprint, response: ({ run }) => JSON.stringify({ seq: run.seq }) };
}

export function committed(result: CommitResult): RunChange {
  if (result.replayed) throw new Error('expected a commit, got a replay');
  return result.change;
}

/** Settles to the error a promise rejects with, or fails the test when it resolves. */
export async function rejection(promise: Promise<unknown>): Promise<AppError> {
  const outcome = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  if (!(outcome instanceof AppError)) throw new Error(`expected an AppError, got ${String(outcome)}`);
  return outcome;
}

const messages = (events: readonly LogEvent[] | undefined) => events?.map((event) => event.log.message);

/** Registers the Store contract's tests for one implementation. */
export function describeStoreContract(name: string, make: MakeStore): void {
  describe(`${name} store contract`, () => {
    const open: Store[] = [];
    afterEach(async () => {
      for (const store of open.splice(0)) await store.close();
    });

    async function storeWith(options: ContractStoreOptions, ...runIds: string[]): Promise<StoreUnderTest> {
      const made = await make(options);
      open.push(made.store);
      await seedRuns(made.store, ...runIds);
      return made;
    }

    describe('idempotent commits', () => {
      let nowMs: number;
      const fresh = async () => {
        nowMs = Date.parse(AT);
        return (await storeWith({ eventRetention: 100, now: () => new Date(nowMs) }, 'run_a', 'run_b')).store;
      };

      it('commits a key once and answers its repeats with the stored response', async () => {
        const store = await fresh();
        const calls = { n: 0 };
        const first = committed(
          await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') }),
        );
        expect(first.run.seq).toBe(1);
        const again = await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') });
        expect(again).toEqual({ replayed: true, response: JSON.stringify({ seq: 1 }) });
        // A store may have computed the repeat's change before finding the key (commitRun says
        // so): what counts is that nothing of it was stored.
        expect(calls.n).toBeLessThanOrEqual(2);
        expect((await store.getRun('run_a'))?.seq).toBe(1);
        expect((await store.replay('run_a', 0, 10))?.events).toHaveLength(1);
      });

      it('keeps keys apart per run, and commits every time without a key', async () => {
        const store = await fresh();
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
        const store = await fresh();
        const calls = { n: 0 };
        committed(await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1', 'one') }));
        const refused = await rejection(
          store.commitRun('run_a', appendOne('y', calls), { idempotency: claim('k1', 'two') }),
        );
        expect(refused.code).toBe('INVALID_INPUT');
        expect(calls.n).toBeLessThanOrEqual(2);
        expect((await store.getRun('run_a'))?.seq).toBe(1);
        expect((await store.replay('run_a', 0, 10))?.events.map((event) => event.log.message)).toEqual(['x']);
      });

      it('stores no key when the change throws, so a retry is evaluated afresh', async () => {
        const store = await fresh();
        const boom = () => {
          throw new AppError('RUN_TERMINAL', 'no');
        };
        await expect(store.commitRun('run_a', boom, { idempotency: claim('k1') })).rejects.toThrow('no');
        const calls = { n: 0 };
        committed(await store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') }));
        expect(calls.n).toBe(1);
      });

      it('answers RUN_NOT_FOUND for an unknown run even with a known key', async () => {
        const store = await fresh();
        committed(await store.commitRun('run_a', appendOne('x'), { idempotency: claim('k1') }));
        const err = await rejection(store.commitRun('run_zzz', appendOne('x'), { idempotency: claim('k1') }));
        expect(err.code).toBe('RUN_NOT_FOUND');
      });

      it('prunes keys past their TTL when a later key is stored', async () => {
        const store = await fresh();
        const commit = (key: string) => store.commitRun('run_a', appendOne('x'), { idempotency: claim(key) });
        committed(await commit('old'));
        nowMs += 23 * 60 * 60 * 1000;
        committed(await commit('recent'));
        // Within 24 h both keys still hold.
        expect((await commit('old')).replayed).toBe(true);
        nowMs += 2 * 60 * 60 * 1000;
        committed(await commit('trigger'));
        // 25 h after it was stored, `old` is gone and commits again; `recent` (2 h old) is kept.
        expect((await commit('old')).replayed).toBe(false);
        expect((await commit('recent')).replayed).toBe(true);
      });

      it('replays a key used twice in one batch, committing once', async () => {
        const store = await fresh();
        const calls = { n: 0 };
        const first = store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') });
        const again = store.commitRun('run_a', appendOne('x', calls), { idempotency: claim('k1') });
        const refused = rejection(
          store.commitRun('run_a', appendOne('y', calls), { idempotency: claim('k1', 'other') }),
        );
        expect(committed(await first).run.seq).toBe(1);
        expect(await again).toEqual({ replayed: true, response: JSON.stringify({ seq: 1 }) });
        expect((await refused).code).toBe('INVALID_INPUT');
        expect(calls.n).toBe(1);
        expect((await store.getRun('run_a'))?.seq).toBe(1);
        expect((await store.replay('run_a', 0, 10))?.events).toHaveLength(1);
      });
    });

    describe("commits given the caller's copy of the run", () => {
      const advance =
        (seen: RunRecord[]) =>
        (current: RunRecord): RunChange => {
          seen.push(current);
          return { run: { ...current, seq: current.seq + 1, stage: `S${current.seq + 1}` }, logs: [] };
        };

      it('uses a copy at the stored seq, and reads the row when the copy is behind', async () => {
        const { store } = await storeWith({ eventRetention: 1000 }, 'run_a');
        const first = committed(await store.commitRun('run_a', advance([])));
        const seen: RunRecord[] = [];
        await store.commitRun('run_a', advance(seen), { current: first.run });
        expect(seen[0]).toBe(first.run);

        // A copy behind the stored run may be handed to `change` first; what commits is computed
        // on the stored run.
        const stale = { ...first.run, stage: 'STALE' };
        await store.commitRun('run_a', advance(seen), { current: stale });
        expect(seen.at(-1)).not.toBe(stale);
        expect(seen.at(-1)).toMatchObject({ seq: 2, stage: 'S2' });
        expect(await store.getRun('run_a')).toMatchObject({ seq: 3, stage: 'S3' });
      });

      it('refuses a change that alters what the run was created with, or does not advance its seq', async () => {
        const { store } = await storeWith({ eventRetention: 1000 }, 'run_a');
        await expect(
          store.commitRun('run_a', (current) => ({
            run: { ...current, seq: 1, project_id: 'prj_other' },
            logs: [],
          })),
        ).rejects.toThrow("a commit may not change a run's project_id");
        await expect(
          store.commitRun('run_a', (current) => ({ run: { ...current, stage: 'X' }, logs: [] })),
        ).rejects.toThrow("a commit must advance the run's seq");
        expect(await store.getRun('run_a')).toMatchObject({
          seq: 0,
          stage: null,
          project_id: CONTRACT_PROJECT,
        });
      });
    });

    describe('group commit', () => {
      const three = () => storeWith({ eventRetention: 1000 }, 'run_a', 'run_b', 'run_c');

      it('commits many concurrent calls to several runs with consecutive seqs and all their logs', async () => {
        const { store } = await three();
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
          expect(messages(replay?.events)).toEqual(mine.map((call) => call.message));
          expect(replay?.run.log_count).toBe(100);
        }
      });

      it('rejects only the call whose change throws, committing the rest of its batch', async () => {
        const { store } = await three();
        const calls = { n: 0 };
        const refusals = { n: 0 };
        const first = store.commitRun('run_a', appendOne('a1', calls));
        const failing = rejection(store.commitRun('run_b', refuse(refusals)));
        const failingOnA = rejection(store.commitRun('run_a', refuse(refusals)));
        const second = store.commitRun('run_a', appendOne('a2', calls));
        const other = store.commitRun('run_c', appendOne('c1', calls));
        expect((await failing).code).toBe('RUN_TERMINAL');
        expect((await failingOnA).code).toBe('RUN_TERMINAL');
        expect(committed(await first).run.seq).toBe(1);
        expect(committed(await second).run.seq).toBe(2);
        expect(committed(await other).run.seq).toBe(1);
        expect(refusals.n).toBe(2);
        expect(await store.getRun('run_b')).toEqual(contractRun('run_b'));
        expect(messages((await store.replay('run_a', 0, 10))?.events)).toEqual(['a1', 'a2']);
      });

      it('stores nothing of a call whose events cannot be stored, and commits the rest', async () => {
        const { store } = await three();
        committed(await store.commitRun('run_a', appendOne('a1')));
        // The first event is fine; the second's data has no JSON form.
        const unstorable = (current: RunRecord): RunChange => ({
          run: { ...current, seq: current.seq + 2 },
          logs: [
            logEvent(current.run_id, current.seq + 1, 'fine'),
            logEvent(current.run_id, current.seq + 2, 'bad', { n: 1n }),
          ],
        });
        const before = store.commitRun('run_b', appendOne('b1'));
        const failing = expect(store.commitRun('run_a', unstorable)).rejects.toThrow(/BigInt/);
        const after = store.commitRun('run_a', appendOne('a2'));
        await failing;
        expect(committed(await before).run.seq).toBe(1);
        expect(committed(await after).run.seq).toBe(2);
        const replay = await store.replay('run_a', 0, 10);
        expect(messages(replay?.events)).toEqual(['a1', 'a2']);
        expect(replay?.run.log_count).toBe(2);
      });

      it("refuses log events whose seqs do not follow the run's, and commits the rest", async () => {
        const { store } = await three();
        committed(await store.commitRun('run_a', appendOne('a1')));
        const clash = (current: RunRecord): RunChange => ({
          run: { ...current, seq: 3 },
          logs: [logEvent(current.run_id, 2, 'x'), logEvent(current.run_id, 1, 'y')],
        });
        const beyond = (current: RunRecord): RunChange => ({
          run: { ...current, seq: current.seq + 1 },
          logs: [logEvent(current.run_id, current.seq + 2, 'z')],
        });
        const failing = [clash, beyond].map((change) =>
          expect(store.commitRun('run_a', change)).rejects.toThrow(/ascending seqs/),
        );
        const after = store.commitRun('run_a', appendOne('a2'));
        await Promise.all(failing);
        expect(committed(await after).run.seq).toBe(2);
        const replay = await store.replay('run_a', 0, 10);
        expect(replay?.events.map((event) => event.seq)).toEqual([1, 2]);
        expect(replay?.run.log_count).toBe(2);
      });

      it("settles each run's calls in call order, rejections included", async () => {
        const { store } = await three();
        const order: string[] = [];
        const calls: [string, (current: RunRecord) => RunChange, string][] = [
          ['a1', appendOne('a1'), 'run_a'],
          ['a2!', refuse({ n: 0 }), 'run_a'],
          ['b1', appendOne('b1'), 'run_b'],
          ['a3', appendOne('a3'), 'run_a'],
          ['b2!', refuse({ n: 0 }), 'run_b'],
          ['b3', appendOne('b3'), 'run_b'],
          ['a4', appendOne('a4'), 'run_a'],
        ];
        await Promise.all(
          calls.map(([name, change, runId]) =>
            store.commitRun(runId, change).then(
              () => order.push(name),
              () => order.push(name),
            ),
          ),
        );
        expect(order.filter((name) => name.startsWith('a'))).toEqual(['a1', 'a2!', 'a3', 'a4']);
        expect(order.filter((name) => name.startsWith('b'))).toEqual(['b1', 'b2!', 'b3']);
      });

      it('commits the pending calls on close, and refuses calls after it', async () => {
        const made = await three();
        const { store } = made;
        const pending = [1, 2, 3].map(() => store.commitRun('run_a', appendOne('x')));
        await store.close();
        expect((await Promise.all(pending)).map((result) => committed(result).run.seq)).toEqual([1, 2, 3]);
        expect((await rejection(store.commitRun('run_a', appendOne('x')))).code).toBe('NOT_READY');
        const reopened = await made.reopen();
        open.push(reopened);
        expect((await reopened.getRun('run_a'))?.seq).toBe(3);
        expect((await reopened.replay('run_a', 0, 10))?.events).toHaveLength(3);
      });
    });

    describe('run leases', () => {
      const GIT = ['git-mirror'] as const;
      const LONG_MS = 60_000;
      /** A store with QUEUED git-mirror runs run_q1, run_q2 and a QUEUED external run run_x. */
      const queued = async () => {
        const { store } = await storeWith({ eventRetention: 100 });
        for (const runId of ['run_q1', 'run_q2', 'run_x']) {
          await store.createRun({
            ...contractRun(runId),
            kind: runId === 'run_x' ? 'external' : 'git-mirror',
            status: 'QUEUED',
          });
        }
        return store;
      };
      const claimIds = async (store: Store, owner: string, leaseMs = LONG_MS, reclaimOwn = false) =>
        (await store.claimRuns({ owner, kinds: GIT, limit: 10, leaseMs, reclaimOwn })).map(
          ({ run, fence }) => `${run.run_id}@${fence}`,
        );
      /** Moves a run to RUNNING under a lease. */
      const start = (store: Store, runId: string, fence: RunFence) =>
        store.commitRun(
          runId,
          (current) => ({ run: { ...current, status: 'RUNNING', seq: current.seq + 1 }, logs: [] }),
          { fence },
        );
      const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

      it('gives each queued run of the kinds asked to one claimer, oldest first, with fence 1', async () => {
        const store = await queued();
        const [a, b] = await Promise.all([
          store.claimRuns({ owner: 'n1', kinds: GIT, limit: 1, leaseMs: LONG_MS }),
          store.claimRuns({ owner: 'n2', kinds: GIT, limit: 1, leaseMs: LONG_MS }),
        ]);
        const claimed = [...(a ?? []), ...(b ?? [])].map(({ run, fence }) => `${run.run_id}@${fence}`);
        expect(claimed.sort()).toEqual(['run_q1@1', 'run_q2@1']);
        expect(await claimIds(store, 'n3')).toEqual([]);
        expect(await store.claimRuns({ owner: 'n3', kinds: GIT, limit: 0, leaseMs: LONG_MS })).toEqual([]);
        const one = await queued();
        expect(await claimIds(one, 'n1')).toEqual(['run_q1@1', 'run_q2@1']);
        // What a run was created with comes back unchanged, without the lease.
        expect(await one.getRun('run_q1')).toEqual({
          ...contractRun('run_q1'),
          kind: 'git-mirror',
          status: 'QUEUED',
        });
      });

      it('renews only the leases still held under their fence', async () => {
        const store = await queued();
        await claimIds(store, 'n1');
        expect(
          await store.renewLeases(
            'n1',
            [
              { run_id: 'run_q1', fence: 1 },
              { run_id: 'run_q2', fence: 7 },
            ],
            LONG_MS,
          ),
        ).toEqual(['run_q1']);
        expect(await store.renewLeases('n2', [{ run_id: 'run_q1', fence: 1 }], LONG_MS)).toEqual([]);
        expect(await store.renewLeases('n1', [], LONG_MS)).toEqual([]);
      });

      it('lets another node take a run over once its lease ran out, and refuses the old owner', async () => {
        const store = await queued();
        expect(await claimIds(store, 'n1', 40)).toEqual(['run_q1@1', 'run_q2@1']);
        committed(await start(store, 'run_q1', { owner: 'n1', fence: 1 }));
        await pause(100);
        // A RUNNING run whose owner died comes back RUNNING: the new owner ends it.
        const taken = await store.claimRuns({ owner: 'n2', kinds: GIT, limit: 10, leaseMs: LONG_MS });
        expect(taken.map(({ run, fence }) => [run.run_id, run.status, fence])).toEqual([
          ['run_q1', 'RUNNING', 2],
          ['run_q2', 'QUEUED', 2],
        ]);
        expect(await store.renewLeases('n1', [{ run_id: 'run_q1', fence: 1 }], LONG_MS)).toEqual([]);
        const refused = await rejection(
          store.commitRun('run_q1', appendOne('stale'), { fence: { owner: 'n1', fence: 1 } }),
        );
        expect(refused.code).toBe('LEASE_LOST');
        expect(refused.statusCode).toBe(409);
        expect((await store.getRun('run_q1'))?.seq).toBe(1);
        expect(
          committed(
            await store.commitRun('run_q1', appendOne('new owner'), { fence: { owner: 'n2', fence: 2 } }),
          ).run.seq,
        ).toBe(2);
        // Writes without a fence (a user's cancel, an external worker) are not the runner's.
        expect(committed(await store.commitRun('run_q1', appendOne('unfenced'))).run.seq).toBe(3);
        expect((await store.replay('run_q1', 0, 10))?.events.map((e) => e.log.message)).toEqual([
          'new owner',
          'unfenced',
        ]);
      });

      it('refuses a stale fence in a batch without failing the calls beside it', async () => {
        const store = await queued();
        await claimIds(store, 'n1', 1);
        await pause(20);
        await claimIds(store, 'n2');
        const [stale, fresh] = await Promise.allSettled([
          store.commitRun('run_q1', appendOne('stale'), { fence: { owner: 'n1', fence: 1 } }),
          store.commitRun('run_q2', appendOne('fresh'), { fence: { owner: 'n2', fence: 2 } }),
        ]);
        expect(stale.status === 'rejected' && (stale.reason as AppError).code).toBe('LEASE_LOST');
        expect(fresh.status).toBe('fulfilled');
      });

      it('takes back the runs it held at start-up only when asked, whatever their lease', async () => {
        const store = await queued();
        await claimIds(store, 'n1');
        committed(await start(store, 'run_q1', { owner: 'n1', fence: 1 }));
        expect(await claimIds(store, 'n1')).toEqual([]);
        expect(await claimIds(store, 'n2', LONG_MS, true)).toEqual([]);
        expect(await claimIds(store, 'n1', LONG_MS, true)).toEqual(['run_q1@2', 'run_q2@2']);
      });
    });

    describe('retention and replay', () => {
      it('keeps the newest events within retention, in one batch and across batches', async () => {
        const { store } = await storeWith({ eventRetention: 5 }, 'run_a');
        const results = await Promise.all(
          Array.from({ length: 8 }, (_, i) => store.commitRun('run_a', appendOne(`line ${i + 1}`))),
        );
        expect(results.map((result) => committed(result).run.log_count)).toEqual([1, 2, 3, 4, 5, 5, 5, 5]);
        expect(results.map((result) => committed(result).run.pruned_through_seq)).toEqual([
          0, 0, 0, 0, 0, 1, 2, 3,
        ]);
        const fromStart = await store.replay('run_a', 0, 100);
        expect(fromStart?.truncated).toBe(true);
        expect(messages(fromStart?.events)).toEqual(['line 4', 'line 5', 'line 6', 'line 7', 'line 8']);
        expect((await store.replay('run_a', 3, 100))?.truncated).toBe(false);

        // More lines than retention in one commit: some of its own are pruned at once.
        const many = committed(await store.commitRun('run_a', appendMany(7)));
        expect(many.run).toMatchObject({ seq: 15, log_count: 5, pruned_through_seq: 10 });
        // An update without lines leaves the retained window as it is.
        const update = committed(
          await store.commitRun('run_a', (current) => ({
            run: { ...current, seq: current.seq + 1 },
            logs: [],
          })),
        );
        expect(update.run).toMatchObject({ seq: 16, log_count: 5, pruned_through_seq: 10 });
        const replay = await store.replay('run_a', 0, 100);
        expect(replay?.events.map((event) => event.seq)).toEqual([11, 12, 13, 14, 15]);
        expect(replay?.run).toMatchObject({ seq: 16, log_count: 5, pruned_through_seq: 10 });
      });

      it('pages a replay by count and by size, always giving the first event', async () => {
        const { store } = await storeWith({ eventRetention: 100 }, 'run_a');
        for (const message of ['a'.repeat(100), 'b'.repeat(100), 'c'.repeat(100), 'd'.repeat(500)]) {
          await store.commitRun('run_a', appendOne(message));
        }
        const size = JSON.stringify({ level: 'info', message: 'a'.repeat(100) }).length;
        const byCount = await store.replay('run_a', 0, 2);
        expect(byCount).toMatchObject({ more: true, truncated: false });
        expect(byCount?.events.map((event) => event.seq)).toEqual([1, 2]);
        const bySize = await store.replay('run_a', 0, 100, size * 2 + 10);
        expect(bySize?.more).toBe(true);
        expect(bySize?.events.map((event) => event.seq)).toEqual([1, 2]);
        const large = await store.replay('run_a', 3, 100, 10);
        expect(large?.events.map((event) => event.seq)).toEqual([4]);
        expect(large?.more).toBe(false);
        expect(large?.events[0]).toEqual({
          run_id: 'run_a',
          seq: 4,
          type: 'log',
          at: AT,
          log: { level: 'info', message: 'd'.repeat(500) },
        });
        expect(await store.replay('run_a', 4, 100)).toMatchObject({ events: [], more: false });
        expect(await store.replay('run_zzz', 0, 100)).toBeUndefined();
      });
    });

    describe('directory and runs', () => {
      it('keeps users, sessions, tokens, projects and members', async () => {
        const { store } = await storeWith({ eventRetention: 100 });
        const user = {
          user_id: 'usr_2',
          username: 'viewer',
          role: 'viewer' as const,
          password_hash: 'h',
          created_at: AT,
        };
        await store.createUser(user);
        expect((await rejection(store.createUser({ ...user, user_id: 'usr_3' }))).code).toBe(
          'ALREADY_EXISTS',
        );
        expect(await store.getUser('usr_2')).toEqual(user);
        expect(await store.getUserByUsername('viewer')).toEqual(user);
        expect((await store.listUsers()).map((u) => u.username)).toEqual(['op', 'viewer']);
        expect(await store.countUsers()).toBe(2);

        const session = {
          session_id: 'ses_1',
          user_id: 'usr_2',
          created_at: AT,
          expires_at: '2999-01-01T00:00:00.000Z',
        };
        await store.createSession(session);
        expect(await store.getSession('ses_1')).toEqual(session);
        await store.setPassword('usr_2', 'h2');
        expect(await store.getSession('ses_1')).toBeUndefined();
        expect((await store.getUser('usr_2'))?.password_hash).toBe('h2');
        await store.createSession({ ...session, session_id: 'ses_2' });
        await store.deleteSession('ses_2');
        expect(await store.getSession('ses_2')).toBeUndefined();

        expect(await store.getProject(CONTRACT_PROJECT)).toMatchObject({ name: 'p', created_by: USER });
        expect(await store.getMemberRole(CONTRACT_PROJECT, USER)).toBe('operator');
        await store.createProject({ project_id: 'prj_2', name: 'q', created_by: 'usr_2', created_at: AT });
        expect((await store.listProjects('all')).map((p) => p.project_id)).toEqual([
          CONTRACT_PROJECT,
          'prj_2',
        ]);
        expect((await store.listProjects(USER)).map((p) => p.project_id)).toEqual([CONTRACT_PROJECT]);
        await store.setMember(CONTRACT_PROJECT, 'usr_2', 'viewer');
        expect(await store.listMembers(CONTRACT_PROJECT)).toEqual([
          { project_id: CONTRACT_PROJECT, user_id: USER, username: 'op', role: 'operator' },
          { project_id: CONTRACT_PROJECT, user_id: 'usr_2', username: 'viewer', role: 'viewer' },
        ]);
        expect(await store.memberProjectIds('usr_2', ['operator'])).toEqual(['prj_2']);
        expect((await store.memberProjectIds('usr_2', ['operator', 'viewer'])).sort()).toEqual([
          CONTRACT_PROJECT,
          'prj_2',
        ]);
        await store.setMember(CONTRACT_PROJECT, 'usr_2', 'operator');
        expect(await store.getMemberRole(CONTRACT_PROJECT, 'usr_2')).toBe('operator');
        expect(await store.removeMember(CONTRACT_PROJECT, 'usr_2')).toBe(true);
        expect(await store.removeMember(CONTRACT_PROJECT, 'usr_2')).toBe(false);
        expect(await store.getMemberRole(CONTRACT_PROJECT, 'usr_2')).toBeUndefined();

        const token = {
          token_id: 'tok_1',
          project_id: 'prj_2',
          name: 'worker',
          secret_hash: 's',
          created_by: 'usr_2',
          created_at: AT,
          revoked_at: null,
        };
        await store.createApiToken(token);
        await store.createApiToken({ ...token, token_id: 'tok_0', project_id: CONTRACT_PROJECT });
        expect(await store.getApiToken('tok_1')).toEqual(token);
        expect((await store.listApiTokens('all')).map((t) => t.token_id)).toEqual(['tok_0', 'tok_1']);
        expect((await store.listApiTokens(['prj_2'])).map((t) => t.token_id)).toEqual(['tok_1']);
        expect(await store.listApiTokens([])).toEqual([]);
        await store.revokeApiToken('tok_1', '2026-02-01T00:00:00.000Z');
        await store.revokeApiToken('tok_1', '2026-03-01T00:00:00.000Z');
        expect((await store.getApiToken('tok_1'))?.revoked_at).toBe('2026-02-01T00:00:00.000Z');
        await store.ping();
      });

      it('stores runs as given and lists them newest first, by project, status and cursor', async () => {
        const { store } = await storeWith({ eventRetention: 100 }, 'run_1', 'run_2', 'run_3');
        const configured: RunRecord = {
          ...contractRun('run_4'),
          kind: 'git-mirror',
          mode: 'FULL',
          config: { repositories: [{ source: 's', target: 't' }] },
          progress: { percentage: 12.5, message: 'ü ✓ "quoted"' },
          retry_of: 'run_1',
        };
        await store.createRun(configured);
        expect(await store.getRun('run_4')).toEqual(configured);
        expect(await store.getRun('run_zzz')).toBeUndefined();
        await store.commitRun('run_2', (current) => ({
          run: { ...current, seq: 1, status: 'RUNNING' },
          logs: [],
        }));
        const ids = async (query: Parameters<Store['listRuns']>[0]) =>
          (await store.listRuns(query)).map((run) => run.run_id);
        expect(await ids({ projectIds: 'all', limit: 10 })).toEqual(['run_4', 'run_3', 'run_2', 'run_1']);
        expect(await ids({ projectIds: [CONTRACT_PROJECT], limit: 2 })).toEqual(['run_4', 'run_3']);
        expect(await ids({ projectIds: [CONTRACT_PROJECT], before: 'run_3', limit: 10 })).toEqual([
          'run_2',
          'run_1',
        ]);
        expect(await ids({ projectIds: 'all', statuses: ['RUNNING'], limit: 10 })).toEqual(['run_2']);
        expect(await ids({ projectIds: [], limit: 10 })).toEqual([]);
        expect(await ids({ projectIds: ['prj_other'], limit: 10 })).toEqual([]);
      });
    });
  });
}
