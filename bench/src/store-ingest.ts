/**
 * Child process: progress updates committed through Runcast's own RunService, CachedStore and
 * SqliteStore in this process, without HTTP — what ingest costs below the HTTP layer.
 * `measure` keeps `concurrency` updates in flight (one run each) for `durationMs`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryBus } from '../../packages/server/dist/bus/memory.js';
import { RunService } from '../../packages/server/dist/runs/run-service.js';
import { CachedStore } from '../../packages/server/dist/store/cached.js';
import { SqliteStore } from '../../packages/server/dist/store/sqlite.js';
import { serveCommands } from './ipc.js';
import { progressUpdate } from './payload.js';

const dir = mkdtempSync(join(tmpdir(), 'runcast-store-ingest-'));
const store = new CachedStore(new SqliteStore({ file: join(dir, 'runcast.db'), eventRetention: 10_000 }));
const runs = new RunService(store, new MemoryBus());
const AT = new Date().toISOString();

async function measure(args: unknown): Promise<{ updates: number; wallMs: number; cpuUs: number }> {
  const { concurrency, durationMs } = args as { concurrency: number; durationMs: number };
  await store.createUser({
    user_id: 'usr_bench',
    username: `bench-${Date.now()}`,
    role: 'admin',
    password_hash: 'x',
    created_at: AT,
  });
  const project = `prj_${'B'.repeat(26)}`;
  if (!(await store.getProject(project)))
    await store.createProject({
      project_id: project,
      name: 'bench',
      created_by: 'usr_bench',
      created_at: AT,
    });
  const runIds: string[] = [];
  for (let i = 0; i < concurrency; i++) {
    const run = await runs.create({ project_id: project, kind: 'external', created_by: 'usr_bench' });
    await runs.updateProgress(run.run_id, { status: 'RUNNING' });
    runIds.push(run.run_id);
  }
  let updates = 0;
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const deadline = started + durationMs;
  await Promise.all(
    runIds.map(async (runId) => {
      while (performance.now() < deadline) {
        await runs.updateProgress(runId, progressUpdate(Date.now(), updates));
        updates++;
      }
    }),
  );
  const wallMs = performance.now() - started;
  const cpu = process.cpuUsage(cpuBefore);
  return { updates, wallMs, cpuUs: cpu.user + cpu.system };
}

serveCommands(
  { measure },
  {
    onOrphaned: () => {
      rmSync(dir, { recursive: true, force: true });
      process.exit(0);
    },
  },
);
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
