import { afterEach, describe, expect, it } from 'vitest';
import { ProgressService } from '../../packages/client/src/index.js';
import type { ConnectionChange } from '../../packages/client/src/types.js';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { Collector, eventually } from '../support/collector.js';
import { type HttpProxy, startHttpProxy } from '../support/proxies.js';

const FAST = {
  connectTimeoutMs: { websocket: 1500, sse: 1500, polling: 5000 },
  failureWindowMs: 60_000,
  fallbackAfterFailures: 2,
};

describe('fallback against the real server', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  async function setup(
    env: Record<string, string> = {},
  ): Promise<{ server: TestServer; world: World; runId: string }> {
    const server = await startServer(env);
    cleanups.push(async () => {
      expect(server.errorLogs).toEqual([]);
      await server.close();
    });
    const world = await makeWorld(server.url);
    const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
    await world.worker.patch(`/runs/${created.body.run_id}/progress`, { status: 'RUNNING' });
    return { server, world, runId: created.body.run_id };
  }

  function service(baseUrl: string, token: string | undefined, extra: Record<string, unknown> = {}) {
    const s = new ProgressService({ baseUrl, token, ...FAST, ...extra });
    const changes: ConnectionChange[] = [];
    s.onConnectionChange((change) => changes.push(change));
    cleanups.push(() => s.close());
    return { s, changes };
  }

  async function produce(world: World, runId: string, from: number, count: number): Promise<void> {
    for (let i = from; i < from + count; i++)
      await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
  }

  it('falls back to SSE when the server has no WebSocket gateway', async () => {
    const { server, world, runId } = await setup({ RUNCAST_TRANSPORTS: 'sse,polling' });
    const { s, changes } = service(server.url, world.viewer.token);
    const seen = new Collector();
    s.subscribeToRun(runId, seen.push);
    await eventually(() => s.getConnectionMethod() === 'sse');
    expect(changes.some((c) => c.reason?.startsWith('fallback'))).toBe(true);
    await produce(world, runId, 0, 10);
    await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
    await seen.untilStatus('COMPLETED');
    expect(seen.logMessages).toEqual(Array.from({ length: 10 }, (_, i) => `line ${i}`));
  });

  it('falls back to polling when WebSockets are blocked and a proxy buffers the SSE stream', async () => {
    const { server, world, runId } = await setup();
    const proxy: HttpProxy = await startHttpProxy(server.url);
    cleanups.push(() => proxy.close());
    proxy.blockWebSocket = true;
    proxy.bufferEventStreams = true;
    const { s } = service(proxy.url, world.viewer.token);
    const seen = new Collector();
    s.subscribeToRun(runId, seen.push);
    await eventually(() => s.getConnectionMethod() === 'polling', 20_000);
    await produce(world, runId, 0, 10);
    await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
    await seen.untilStatus('COMPLETED');
    expect(seen.logMessages).toEqual(Array.from({ length: 10 }, (_, i) => `line ${i}`));
    // No switch to SSE while the run was live. (When the server ends the stream at the terminal
    // state, the buffering proxy lets it through, and SSE may bring that state itself.)
    expect(s.getStats().upgrades).toBeLessThanOrEqual(1);
  });

  it('upgrades back to WebSocket when it works again, without a gap or a duplicate', async () => {
    const { server, world, runId } = await setup();
    const proxy = await startHttpProxy(server.url);
    cleanups.push(() => proxy.close());
    proxy.blockWebSocket = true;
    const { s, changes } = service(proxy.url, world.viewer.token, { upgradeProbeIntervalMs: 400 });
    const seen = new Collector();
    s.subscribeToRun(runId, seen.push);
    await eventually(() => s.getConnectionMethod() === 'sse');
    await produce(world, runId, 0, 20);
    proxy.blockWebSocket = false;
    // Logs keep coming while the client probes and switches.
    const producing = produce(world, runId, 20, 60);
    await eventually(() => s.getConnectionMethod() === 'websocket', 20_000);
    await producing;
    await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
    await seen.untilStatus('COMPLETED');
    expect(seen.logMessages).toEqual(Array.from({ length: 80 }, (_, i) => `line ${i}`));
    expect(changes.at(-1)).toMatchObject({ method: 'websocket', state: 'connected' });
    expect(changes.some((c) => c.reason === 'upgrade')).toBe(true);
    expect(s.getStats().upgrades).toBe(1);
  });
});
