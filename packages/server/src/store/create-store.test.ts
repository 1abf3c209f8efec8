import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PostgresServer, startPostgres } from '../../../../test/support/postgres.js';
import { loadConfig } from '../config.js';
import { createStore } from './create-store.js';
import { PostgresStore } from './postgres.js';
import { SqliteStore } from './sqlite.js';

describe('createStore', () => {
  let server: PostgresServer;
  let dataDir: string;
  beforeAll(async () => {
    server = await startPostgres();
    dataDir = mkdtempSync(join(tmpdir(), 'runcast-create-store-'));
  });
  afterAll(async () => {
    await server?.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('opens the SQLite file in the data dir by default', async () => {
    const store = await createStore(loadConfig({ RUNCAST_DATA_DIR: dataDir }, []));
    try {
      expect(store).toBeInstanceOf(SqliteStore);
      await store.ping();
    } finally {
      await store.close();
    }
  });

  it('opens PostgreSQL, migrated, when RUNCAST_DATABASE_URL is set', async () => {
    const url = await server.createDatabase('runcast_factory');
    const store = await createStore(loadConfig({ RUNCAST_DATA_DIR: dataDir, RUNCAST_DATABASE_URL: url }, []));
    try {
      expect(store).toBeInstanceOf(PostgresStore);
      expect(await (store as PostgresStore).schemaVersion()).toBeGreaterThan(0);
      expect(await store.countUsers()).toBe(0);
    } finally {
      await store.close();
    }
  });

  it('fails at start-up when the database does not exist', async () => {
    const config = loadConfig(
      { RUNCAST_DATABASE_URL: `postgresql://postgres@127.0.0.1:${server.port}/missing` },
      [],
    );
    await expect(createStore(config)).rejects.toThrow(/missing/);
  });
});
