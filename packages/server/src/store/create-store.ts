import { join } from 'node:path';
import type { CommitNotifier } from '../bus/bus.js';
import type { Config } from '../config.js';
import { PostgresStore } from './postgres.js';
import { SqliteStore } from './sqlite.js';
import type { Store } from './store.js';

export interface CreateStoreOptions {
  /** Told when a write finds the disk full (with the error) and when writes succeed again. */
  onStorageFull?: (full: boolean, err?: unknown) => void;
  /** Told about an error on an idle database connection (PostgreSQL). */
  onError?: (err: Error) => void;
  /** The bus's way of sending run events inside commits (the PostgreSQL bus). */
  notifier?: CommitNotifier | undefined;
}

/**
 * The store the configuration asks for: PostgreSQL when `RUNCAST_DATABASE_URL` is set (connected
 * and migrated when this resolves), otherwise the SQLite file in the data dir.
 */
export async function createStore(config: Config, options: CreateStoreOptions = {}): Promise<Store> {
  if (config.databaseUrl !== undefined) {
    return PostgresStore.open({
      url: config.databaseUrl,
      eventRetention: config.eventRetention,
      onStorageFull: options.onStorageFull,
      onError: options.onError,
      notifier: options.notifier,
    });
  }
  return new SqliteStore({
    file: join(config.dataDir, 'runcast.db'),
    eventRetention: config.eventRetention,
    synchronous: config.sqliteSynchronous,
    onStorageFull: options.onStorageFull,
  });
}
