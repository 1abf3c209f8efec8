import { MemoryBus } from '../bus/memory.js';
import { Hub } from '../live/hub.js';
import { Metrics } from '../metrics.js';
import { RunService } from '../runs/run-service.js';
import { SqliteStore } from '../store/sqlite.js';

/** What Hub tests run against: an in-memory store with one project and one run, a bus, a Hub. */
export interface HubWorld {
  store: SqliteStore;
  runs: RunService;
  hub: Hub;
  runId: string;
  close(): Promise<void>;
}

/** Builds a HubWorld: user `usr_1`, project `prj_1`, and an external run in it. */
export async function hubWorld(): Promise<HubWorld> {
  const store = new SqliteStore({ file: ':memory:', eventRetention: 100 });
  const bus = new MemoryBus();
  const runs = new RunService(store, bus);
  const hub = new Hub(bus, runs, new Metrics(), { maxQueuedBytes: 1_000_000 });
  const at = new Date().toISOString();
  await store.createUser({
    user_id: 'usr_1',
    username: 'u',
    role: 'admin',
    password_hash: 'x',
    created_at: at,
  });
  await store.createProject({ project_id: 'prj_1', name: 'p', created_by: 'usr_1', created_at: at });
  const runId = (await runs.create({ project_id: 'prj_1', kind: 'external', created_by: 'usr_1' })).run_id;
  return {
    store,
    runs,
    hub,
    runId,
    async close() {
      hub.close();
      await store.close();
    },
  };
}
