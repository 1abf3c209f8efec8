import type { Bus } from './bus.js';
import { MemoryBus } from './memory.js';
import { PostgresBus } from './postgres.js';

export interface BusSettings {
  /** With a PostgreSQL database, nodes share it and talk through LISTEN/NOTIFY. */
  databaseUrl?: string | undefined;
  /** Where a listener's failures are reported (they are retried). */
  onError: (err: unknown) => void;
}

/** The Bus for these settings: in-process alone, PostgreSQL LISTEN/NOTIFY between nodes. */
export async function createBus(settings: BusSettings): Promise<Bus> {
  if (!settings.databaseUrl) return new MemoryBus(settings.onError);
  // The store shares the database: each commit carries its own run events to the other nodes.
  const bus = new PostgresBus({
    connectionString: settings.databaseUrl,
    onError: settings.onError,
    eventsInCommits: true,
  });
  await bus.start();
  return bus;
}
