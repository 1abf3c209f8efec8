import { describe, expect, it } from 'vitest';
import { FIXTURE_AT, newRunRecord } from '../test-support/records.js';
import { CachedStore } from './cached.js';
import { ReadCache } from './read-cache.js';
import { SqliteStore } from './sqlite.js';
import type { SessionRecord, Store } from './store.js';

const AT = FIXTURE_AT;
const LATER = '2999-01-01T00:00:00.000Z';

describe('ReadCache', () => {
  it('evicts the entry stored longest ago when full', async () => {
    const cache = new ReadCache<string, number>(2);
    cache.set('a', 1);
    cache.set('b', 2);
    cache.set('c', 3);
    expect([cache.has('a'), cache.has('b'), cache.has('c')]).toEqual([false, true, true]);
    expect(cache.size).toBe(2);
  });

  it('reads each key once, and keeps misses only when asked', async () => {
    const cache = new ReadCache<string, number | undefined>(10);
    let reads = 0;
    const loader = async () => {
      reads++;
      return undefined;
    };
    await cache.load('x', loader);
    await cache.load('x', loader);
    expect(reads).toBe(2);
    await cache.load('y', loader, true);
    await cache.load('y', loader, true);
    expect(reads).toBe(3);
  });

  it('does not store a value read before an invalidation that happened during the read', async () => {
    const cache = new ReadCache<string, string>(10);
    let finishRead: (value: string) => void = () => {};
    const loading = cache.load('k', () => new Promise<string>((resolve) => (finishRead = resolve)));
    cache.delete('k');
    finishRead('stale');
    expect(await loading).toBe('stale');
    expect(cache.has('k')).toBe(false);
    expect(await cache.load('k', async () => 'fresh')).toBe('fresh');
  });
});

/** Counts the reads that reach the underlying store. */
function counting(inner: SqliteStore): { store: Store; reads: Record<string, number> } {
  const reads: Record<string, number> = {};
  const store = new Proxy(inner, {
    get(target, name, receiver) {
      const value = Reflect.get(target, name, receiver);
      if (typeof value !== 'function') return value;
      return (...args: unknown[]) => {
        reads[String(name)] = (reads[String(name)] ?? 0) + 1;
        return value.apply(target, args);
      };
    },
  });
  return { store, reads };
}

async function seeded() {
  const { store: inner, reads } = counting(new SqliteStore({ file: ':memory:', eventRetention: 100 }));
  const store = new CachedStore(inner);
  await store.createUser({
    user_id: 'usr_1',
    username: 'ann',
    role: 'operator',
    password_hash: 'h1',
    created_at: AT,
  });
  await store.createUser({
    user_id: 'usr_2',
    username: 'bob',
    role: 'operator',
    password_hash: 'h2',
    created_at: AT,
  });
  await store.createProject({ project_id: 'prj_1', name: 'p', created_by: 'usr_1', created_at: AT });
  const session = (id: string, user: string): SessionRecord => ({
    session_id: id,
    user_id: user,
    created_at: AT,
    expires_at: LATER,
  });
  await store.createSession(session('ses_a', 'usr_1'));
  await store.createSession(session('ses_b', 'usr_1'));
  await store.createSession(session('ses_c', 'usr_2'));
  return { store, reads };
}

const run = (runId: string) => newRunRecord(runId, 'prj_1', 'usr_1');

describe('CachedStore', () => {
  it('answers repeated reads from memory', async () => {
    const { store, reads } = await seeded();
    await store.createRun(run('run_1'));
    for (let i = 0; i < 5; i++) {
      await store.getSession('ses_a');
      await store.getUser('usr_1');
      await store.getProject('prj_1');
      await store.getMemberRole('prj_1', 'usr_2');
      await store.getRun('run_1');
    }
    expect(reads).toMatchObject({ getSession: 1, getUser: 1, getProject: 1, getMemberRole: 1, getRun: 1 });
  });

  it('forgets a session at logout, and every session of a user whose password changed', async () => {
    const { store } = await seeded();
    for (const id of ['ses_a', 'ses_b', 'ses_c']) expect(await store.getSession(id)).toBeDefined();
    await store.deleteSession('ses_a');
    expect(await store.getSession('ses_a')).toBeUndefined();
    await store.setPassword('usr_1', 'h1-new');
    expect(await store.getSession('ses_b')).toBeUndefined();
    expect(await store.getSession('ses_c')).toBeDefined();
    expect((await store.getUser('usr_1'))?.password_hash).toBe('h1-new');
  });

  it('sees a revoked API token as revoked', async () => {
    const { store } = await seeded();
    const token = {
      token_id: 'tok_1',
      project_id: 'prj_1',
      name: 'w',
      secret_hash: 'x',
      created_by: 'usr_1',
      created_at: AT,
      revoked_at: null,
    };
    await store.createApiToken(token);
    expect((await store.getApiToken('tok_1'))?.revoked_at).toBeNull();
    await store.revokeApiToken('tok_1', LATER);
    expect((await store.getApiToken('tok_1'))?.revoked_at).toBe(LATER);
  });

  it('follows membership changes, including from and to no membership', async () => {
    const { store } = await seeded();
    expect(await store.getMemberRole('prj_1', 'usr_2')).toBeUndefined();
    await store.setMember('prj_1', 'usr_2', 'viewer');
    expect(await store.getMemberRole('prj_1', 'usr_2')).toBe('viewer');
    await store.setMember('prj_1', 'usr_2', 'operator');
    expect(await store.getMemberRole('prj_1', 'usr_2')).toBe('operator');
    await store.removeMember('prj_1', 'usr_2');
    expect(await store.getMemberRole('prj_1', 'usr_2')).toBeUndefined();
    expect(await store.getProject('prj_2')).toBeUndefined();
    await store.createProject({ project_id: 'prj_2', name: 'q', created_by: 'usr_2', created_at: AT });
    expect(await store.getProject('prj_2')).toBeDefined();
    expect(await store.getMemberRole('prj_2', 'usr_2')).toBe('operator');
  });

  it('holds the committed run after each commit, and the stored one after a failed commit', async () => {
    const { store, reads } = await seeded();
    await store.createRun(run('run_1'));
    expect((await store.getRun('run_1'))?.seq).toBe(0);
    await store.commitRun('run_1', (current) => ({
      run: { ...current, seq: 1, status: 'RUNNING' },
      logs: [],
    }));
    expect(await store.getRun('run_1')).toMatchObject({ seq: 1, status: 'RUNNING' });
    await expect(
      store.commitRun('run_1', () => {
        throw new Error('refused');
      }),
    ).rejects.toThrow('refused');
    expect(await store.getRun('run_1')).toMatchObject({ seq: 1, status: 'RUNNING' });
    expect(reads.getRun).toBe(2);
  });

  it('hands out frozen records, so that no caller can change what others read', async () => {
    const { store } = await seeded();
    const user = await store.getUser('usr_1');
    expect(() => {
      (user as { role: string }).role = 'admin';
    }).toThrow(TypeError);
    expect((await store.getUser('usr_1'))?.role).toBe('operator');
  });
});
