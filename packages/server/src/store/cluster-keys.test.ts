import { describe, expect, it } from 'vitest';
import { postgresForFile } from '../../../../test/support/postgres.js';
import { ConfigError } from '../config.js';
import { SecretBox } from '../runner/secrets.js';
import { loadClusterKeys } from './cluster-keys.js';
import { PostgresStore } from './postgres.js';

const newDatabase = postgresForFile('keys');

/** A new database with the store's schema. */
async function migrated(): Promise<string> {
  const url = await newDatabase();
  await (await PostgresStore.open({ url, eventRetention: 10 })).close();
  return url;
}

const SECRET = 'a-cluster-signing-secret-0123456789abcdef';

async function failure(promise: Promise<unknown>): Promise<Error> {
  return promise.then(
    () => {
      throw new Error('expected a failure');
    },
    (err: Error) => err,
  );
}

describe('cluster keys', () => {
  it('gives nodes started together one generated signing key and one sealing key', async () => {
    const url = await migrated();
    const keys = await Promise.all([1, 2, 3].map(() => loadClusterKeys(url, undefined)));
    for (const other of keys) {
      expect(other.signingSecret).toBe(keys[0]?.signingSecret);
      expect(other.sealingKey.equals(keys[0]?.sealingKey as Buffer)).toBe(true);
    }
    // A token sealed on one node opens on another.
    const sealed = new SecretBox(keys[0]?.sealingKey as Buffer).seal('glpat-x');
    expect(new SecretBox(keys[2]?.sealingKey as Buffer).open(sealed)).toBe('glpat-x');
    expect(keys[0]?.sealingKey).toHaveLength(32);
  });

  it('uses RUNCAST_SECRET when set, keeping only its hash, and refuses a node that disagrees', async () => {
    const url = await migrated();
    expect((await loadClusterKeys(url, SECRET)).signingSecret).toBe(SECRET);
    expect((await loadClusterKeys(url, SECRET)).signingSecret).toBe(SECRET);
    const differs = await failure(loadClusterKeys(url, `${SECRET}-other`));
    expect(differs).toBeInstanceOf(ConfigError);
    expect(differs.message).toMatch(/^RUNCAST_SECRET on this node differs from the one the other nodes/);
    expect(differs.message).not.toContain(SECRET);
    expect((await failure(loadClusterKeys(url, undefined))).message).toMatch(
      /RUNCAST_SECRET is not set on this node/,
    );
    const generated = await migrated();
    await loadClusterKeys(generated, undefined);
    expect((await failure(loadClusterKeys(generated, SECRET))).message).toMatch(/use a generated key/);
  });
});
