import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExponentialBackoff, ProgressService } from '../../packages/client/src/index.js';
import type { ConnectionMethod } from '../../packages/client/src/types.js';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { Collector } from '../support/collector.js';
import { startChaosProxy } from '../support/proxies.js';

const LOGS = 2000;
const UPDATES = 500;

// A loopback proxy cuts every connection after 50–300 ms while a run produces 2,000 logs and
// 500 updates; whatever the starting transport, the callback must see every log once, in order.
describe('chaos: connections cut at random', () => {
  let server: TestServer;
  let world: World;
  beforeAll(async () => {
    server = await startServer({ LOG_LEVEL: 'error' });
    world = await makeWorld(server.url);
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  const orders: [ConnectionMethod, ConnectionMethod[]][] = [
    ['websocket', ['websocket', 'sse', 'polling']],
    ['sse', ['sse', 'polling']],
    ['polling', ['polling']],
  ];

  it.each(orders)(
    'starting on %s',
    async (_start, transports) => {
      const port = Number(new URL(server.url).port);
      let seed = 42;
      const random = () => {
        seed = (seed * 16807) % 2147483647;
        return seed / 2147483647;
      };
      const proxy = await startChaosProxy(port, { min: 50, max: 300 }, random);
      const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
      const runId: string = created.body.run_id;
      const service = new ProgressService({
        baseUrl: proxy.url,
        token: world.viewer.token,
        transports,
        connectTimeoutMs: { websocket: 2000, sse: 2000, polling: 4000 },
        reconnectPolicy: new ExponentialBackoff({ initialDelayMs: 20, maxDelayMs: 300 }),
        upgradeProbeIntervalMs: 500,
      });
      const seen = new Collector();
      try {
        service.subscribeToRun(runId, seen.push);
        await seen.until((events) => events.length > 0);
        await world.worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
        const logsPerUpdate = LOGS / UPDATES;
        for (let i = 0; i < UPDATES; i++) {
          await world.worker.patch(`/runs/${runId}/progress`, {
            progress: { percentage: (i / UPDATES) * 100, done: i },
          });
          const entries = Array.from({ length: logsPerUpdate }, (_, j) => ({
            level: 'info' as const,
            message: `line ${i * logsPerUpdate + j}`,
          }));
          await world.worker.post(`/runs/${runId}/logs`, { entries });
        }
        await world.worker.patch(`/runs/${runId}/progress`, {
          status: 'COMPLETED',
          progress: { percentage: 100 },
        });
        await seen.untilStatus('COMPLETED');
        const cuts = proxy.cuts;
        expect(seen.logMessages).toEqual(Array.from({ length: LOGS }, (_, i) => `line ${i}`));
        expect(seen.lastState).toMatchObject({ status: 'COMPLETED', seq: 1 + UPDATES + LOGS + 1 });
        expect(cuts).toBeGreaterThan(0);
        const stats = service.getStats();
        console.log(
          `chaos ${transports[0]}: ${cuts} connections cut, ${stats.eventsDelivered} events delivered, ` +
            `${stats.duplicatesDropped} duplicates dropped, ${stats.reconnects} reconnects, losses: 0`,
        );
      } finally {
        service.close();
        await proxy.close();
      }
    },
    120_000,
  );
});
