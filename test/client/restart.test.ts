import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ExponentialBackoff, ProgressService } from '../../packages/client/src/index.js';
import type { ConnectionMethod } from '../../packages/client/src/types.js';
import { Api } from '../../packages/server/src/test-support/server.js';
import { Collector } from '../support/collector.js';
import { CHILD_ADMIN_PASSWORD, freePort, killAllServers, ServerProcess } from '../support/server-process.js';

// The server is killed (SIGKILL) mid-run and restarted on the same data dir and port: the
// subscriber resumes from its last seq with no missed and no doubled log.
describe.each<ConnectionMethod>(['websocket', 'sse', 'polling'])(
  'server restart under a %s subscriber',
  (method) => {
    const dataDir = mkdtempSync(join(tmpdir(), 'runcast-restart-'));
    afterAll(async () => {
      await killAllServers();
      rmSync(dataDir, { recursive: true, force: true });
    });

    it('resumes with every log exactly once', async () => {
      const port = await freePort();
      let server = await ServerProcess.start(dataDir, port);
      const admin = await new Api(server.url).login('admin', CHILD_ADMIN_PASSWORD);
      const project = await admin.post('/projects', { name: 'restart' });
      const run = await admin.post('/runs', { project_id: project.body.project_id, kind: 'external' });
      const runId: string = run.body.run_id;
      await admin.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
      const service = new ProgressService({
        baseUrl: server.url,
        token: admin.token,
        transports: [method],
        reconnectPolicy: new ExponentialBackoff({ initialDelayMs: 50, maxDelayMs: 400 }),
      });
      const seen = new Collector();
      try {
        service.subscribeToRun(runId, seen.push);
        await seen.until((events) => events.length > 0);
        for (let i = 0; i < 50; i++)
          await admin.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
        await seen.until(() => seen.logMessages.length === 50);
        await server.kill();
        server = await ServerProcess.start(dataDir, port);
        // The login session is in the store: the token still works after the restart.
        for (let i = 50; i < 100; i++)
          await admin.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
        await admin.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
        await seen.untilStatus('COMPLETED');
        expect(seen.logMessages).toEqual(Array.from({ length: 100 }, (_, i) => `line ${i}`));
        expect(service.getStats().reconnects).toBeGreaterThan(0);
      } finally {
        service.close();
      }
    }, 60_000);
  },
);
