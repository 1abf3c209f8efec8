import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ProgressService, type ProgressServiceOptions } from '../../packages/client/src/index.js';
import type { ConnectionChange, ConnectionMethod } from '../../packages/client/src/types.js';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { Collector, eventually } from '../support/collector.js';

let server: TestServer;
let world: World;
const cleanups: (() => Promise<void> | void)[] = [];
beforeAll(async () => {
  server = await startServer();
  world = await makeWorld(server.url);
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});
afterAll(async () => {
  expect(server.errorLogs).toEqual([]);
  await server.close();
});

function service(options: ProgressServiceOptions) {
  const s = new ProgressService({ baseUrl: server.url, token: world.viewer.token, ...options });
  const changes: ConnectionChange[] = [];
  s.onConnectionChange((change) => changes.push(change));
  cleanups.push(() => s.close());
  return { s, changes };
}

async function runWithLogs(lines: number): Promise<string> {
  const runId: string = (
    await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' })
  ).body.run_id;
  await world.worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
  for (let i = 0; i < lines; i++)
    await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
  return runId;
}

/** A TCP port that accepts connections and never answers: a black hole. */
async function blackHole(): Promise<string> {
  const sockets = new Set<Socket>();
  const hole = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => hole.listen(0, '127.0.0.1', resolve));
  cleanups.push(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => hole.close(resolve));
  });
  const address = hole.address();
  if (address === null || typeof address === 'string') throw new Error('no port');
  return `http://127.0.0.1:${address.port}`;
}

/** A TCP forwarder to the server that can go away (connection refused) and come back on its port. */
async function outage(): Promise<{ url: string; down(): Promise<void>; up(): Promise<void> }> {
  const target = Number(new URL(server.url).port);
  const sockets = new Set<Socket>();
  let listener: Server | undefined;
  let port = 0;
  const up = async () => {
    listener = createServer((client) => {
      const upstream = connect(target, '127.0.0.1');
      for (const socket of [client, upstream]) {
        sockets.add(socket);
        socket.on('error', () => {});
        socket.on('close', () => {
          sockets.delete(socket);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve) => listener?.listen(port, '127.0.0.1', resolve));
    const address = listener.address();
    if (address && typeof address !== 'string') port = address.port;
  };
  const down = async () => {
    const closing = new Promise((resolve) => listener?.close(resolve));
    for (const socket of sockets) socket.destroy();
    await closing;
  };
  await up();
  cleanups.push(down);
  return { url: `http://127.0.0.1:${port}`, down, up };
}

describe.each<ConnectionMethod>(['websocket', 'sse', 'polling'])('history from seq 0 over %s', (method) => {
  it.each([true, false])(
    'replays every retained line once, then follows live (REST opening: %s)',
    async (openingFetch) => {
      const runId = await runWithLogs(12);
      const { s } = service({ transports: [method], openingFetch });
      const seen = new Collector();
      s.subscribeToRun(runId, seen.push, { since: 0 });
      await eventually(() => seen.logMessages.length === 12);
      for (let i = 12; i < 20; i++)
        await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
      await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
      await seen.untilStatus('COMPLETED');
      expect(seen.logMessages).toEqual(Array.from({ length: 20 }, (_, i) => `line ${i}`));
      const seqs = seen.events.flatMap((e) => (e.type === 'error' ? [] : [e.seq]));
      expect([...seqs].sort((a, b) => a - b)).toEqual(seqs);
      expect(seen.events.filter((e) => e.type === 'snapshot')).toHaveLength(1);
    },
  );
});

describe('first data on a network that black-holes the WebSocket', () => {
  it('delivers the snapshot over REST while the WebSocket is still connecting', async () => {
    const runId = await runWithLogs(1);
    // The WebSocket may take 30 s: anything seen within this test's timeout came another way.
    const { s, changes } = service({
      wsUrl: await blackHole(),
      connectTimeoutMs: { websocket: 30_000 },
      raceAfterMs: null,
    });
    const seen = new Collector();
    s.subscribeToRun(runId, seen.push);
    await seen.until((events) => events.length > 0);
    expect(seen.events[0]).toMatchObject({ type: 'snapshot', snapshot: { status: 'RUNNING' } });
    expect(s.getConnectionMethod()).toBeNull();
    expect(changes.map((c) => c.state)).toEqual(['connecting']);
  });

  it('races SSE beside it and carries the run there, every log once', async () => {
    const runId = await runWithLogs(0);
    const { s } = service({ wsUrl: await blackHole(), connectTimeoutMs: { websocket: 30_000 } });
    const seen = new Collector();
    s.subscribeToRun(runId, seen.push);
    await eventually(() => s.getConnectionMethod() === 'sse');
    for (let i = 0; i < 5; i++)
      await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
    await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
    await seen.untilStatus('COMPLETED');
    expect(seen.logMessages).toEqual(Array.from({ length: 5 }, (_, i) => `line ${i}`));
  });
});

describe('failures told apart against a real server', () => {
  it('server down and back: offline on the same method, no fallback', async () => {
    const runId = await runWithLogs(0);
    const path = await outage();
    const { s, changes } = service({ baseUrl: path.url });
    const seen = new Collector();
    s.subscribeToRun(runId, seen.push);
    await eventually(() => s.getConnectionMethod() === 'websocket');
    await path.down();
    await eventually(() => changes.some((c) => c.state === 'offline'));
    await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'while down' });
    await path.up();
    await eventually(() => s.getConnectionMethod() === 'websocket', 20_000);
    await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
    await seen.untilStatus('COMPLETED');
    expect(seen.logMessages).toEqual(['while down']);
    expect(s.getStats().fallbacks).toBe(0);
    expect(changes.every((c) => c.method === null || c.method === 'websocket')).toBe(true);
  });

  it.each<ConnectionMethod>(['websocket', 'sse', 'polling'])(
    'refused credentials over %s: unauthorized, one error event, no retry loop',
    async (method) => {
      const runId = await runWithLogs(0);
      const { s, changes } = service({ token: 'rc_not_a_token', transports: [method], openingFetch: false });
      const seen = new Collector();
      s.subscribeToRun(runId, seen.push);
      await eventually(() => s.getConnectionState().state === 'unauthorized');
      await new Promise((resolve) => setTimeout(resolve, 1500));
      expect(seen.events).toEqual([
        { run_id: runId, type: 'error', error: expect.objectContaining({ code: 'UNAUTHORIZED' }) },
      ]);
      expect(changes.filter((c) => c.state === 'connecting' || c.state === 'reconnecting')).toHaveLength(1);
      expect(s.getConnectionState().state).toBe('unauthorized');
    },
  );
});
