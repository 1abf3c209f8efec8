import { io as connectSocket, type Socket } from 'socket.io-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ProgressService } from '../../packages/client/src/index.js';
import type { ConnectionMethod, ProgressEvent } from '../../packages/client/src/types.js';
import {
  type Api,
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { Collector } from '../support/collector.js';

let server: TestServer;
let world: World;
let users = 0;
beforeAll(async () => {
  server = await startServer();
  world = await makeWorld(server.url);
});
afterAll(async () => {
  expect(server.errorLogs).toEqual([]);
  await server.close();
});

/** A member of the world's project, logged in: the principal whose access a test ends. */
async function member(): Promise<{ api: Api; userId: string; password: string }> {
  const username = `member${++users}`;
  const password = `${username}-password`;
  const created = await world.admin.post('/users', { username, password, role: 'operator' });
  const userId: string = created.body.user_id;
  await world.operator.post(`/projects/${world.projectId}/members`, { user_id: userId, role: 'viewer' });
  return { api: await world.anonymous.login(username, password), userId, password };
}

/** Each way access ends: who is watching, how it ends, and the code the watcher is told. */
const WAYS: {
  name: string;
  code: 'UNAUTHORIZED' | 'RUN_NOT_FOUND';
  watcher(): Promise<{ token: string; end(): Promise<void> }>;
}[] = [
  {
    name: 'the user logs out',
    code: 'UNAUTHORIZED',
    async watcher() {
      const { api } = await member();
      return {
        token: api.token!,
        end: async () => expect((await api.post('/auth/logout')).status).toBe(204),
      };
    },
  },
  {
    name: 'the user changes the password',
    code: 'UNAUTHORIZED',
    async watcher() {
      const { api, password } = await member();
      return {
        token: api.token!,
        end: async () => {
          const changed = await api.post('/auth/password', {
            current_password: password,
            new_password: `${password}-new`,
          });
          expect(changed.status).toBe(204);
        },
      };
    },
  },
  {
    name: 'the API token is revoked',
    code: 'UNAUTHORIZED',
    async watcher() {
      const created = await world.operator.post('/tokens', { project_id: world.projectId, name: 'watcher' });
      return {
        token: created.body.token,
        end: async () =>
          expect((await world.operator.delete(`/tokens/${created.body.token_id}`)).status).toBe(204),
      };
    },
  },
  {
    name: 'the membership is removed',
    code: 'RUN_NOT_FOUND',
    async watcher() {
      const { api, userId } = await member();
      return {
        token: api.token!,
        end: async () =>
          expect((await world.operator.delete(`/projects/${world.projectId}/members/${userId}`)).status).toBe(
            204,
          ),
      };
    },
  },
];

const isError = (event: ProgressEvent) => event.type === 'error';

/** A Socket.IO connection opened with `token`, once connected. */
async function connectedSocket(token: string | undefined): Promise<Socket> {
  const socket = connectSocket(server.url, {
    transports: ['websocket'],
    auth: { token },
    reconnection: false,
    forceNew: true,
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('connect_error', reject);
  });
  return socket;
}

describe.each<ConnectionMethod>(['websocket', 'sse', 'polling'])(
  'over %s, live access ends when',
  (method) => {
    const services: ProgressService[] = [];
    afterEach(() => {
      for (const service of services.splice(0)) service.close();
    });

    it.each(WAYS)('$name', async ({ code, watcher }) => {
      const run = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
      const runId: string = run.body.run_id;
      const { token, end } = await watcher();
      const watched = new ProgressService({ baseUrl: server.url, token, transports: [method] });
      // Someone whose access stays: when it has the last log, the watcher would have had it too.
      const control = new ProgressService({
        baseUrl: server.url,
        token: world.admin.token,
        transports: [method],
      });
      services.push(watched, control);
      const seen = new Collector();
      const controlSeen = new Collector();
      watched.subscribeToRun(runId, seen.push);
      control.subscribeToRun(runId, controlSeen.push);
      await seen.until((events) => events.some((e) => e.type === 'snapshot'));
      await controlSeen.until((events) => events.some((e) => e.type === 'snapshot'));

      await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'before' });
      await seen.until(() => seen.logMessages.includes('before'));

      await end();
      await seen.until((events) => events.some(isError));
      expect(seen.events.find(isError)).toMatchObject({ run_id: runId, type: 'error', error: { code } });

      await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'after' });
      await controlSeen.until(() => controlSeen.logMessages.includes('after'));
      expect(seen.logMessages).toEqual(['before']);
      // Access ended is said once, and the client stops instead of retrying.
      expect(seen.events.filter(isError)).toHaveLength(1);
      expect(watched.getConnectionState().state).not.toBe('reconnecting');
      expect(watched.getConnectionState().state).not.toBe('connected');
    });
  },
);

describe('an open Socket.IO connection whose credentials ended', () => {
  it('may not subscribe to any run, even one created after the revocation', async () => {
    const created = await world.operator.post('/tokens', { project_id: world.projectId, name: 'socket' });
    const socket = await connectedSocket(created.body.token);
    try {
      const disconnected = new Promise<string>((resolve) => socket.once('disconnect', resolve));
      const ended: unknown[] = [];
      socket.on('run_event', (event: { type: string }) => {
        if (event.type === 'error') ended.push(event);
      });
      const opened = await socket.emitWithAck('subscribe', { run_id: world.runId });
      expect(opened).toMatchObject({ ok: true });
      expect((await world.operator.delete(`/tokens/${created.body.token_id}`)).status).toBe(204);
      // The server ends the connection (a server-side disconnect is not retried by Socket.IO).
      expect(await disconnected).toBe('io server disconnect');
      expect(ended).toEqual([
        { run_id: world.runId, type: 'error', error: { code: 'UNAUTHORIZED', message: expect.any(String) } },
      ]);
    } finally {
      socket.disconnect();
    }
  });

  it('is refused at the handshake when it comes back with the ended credentials', async () => {
    const { api } = await member();
    const socket = await connectedSocket(api.token);
    const disconnected = new Promise<string>((resolve) => socket.once('disconnect', resolve));
    expect((await api.post('/auth/logout')).status).toBe(204);
    expect(await disconnected).toBe('io server disconnect');
    const again = connectSocket(server.url, {
      transports: ['websocket'],
      auth: { token: api.token },
      reconnection: false,
      forceNew: true,
    });
    try {
      const refused = await new Promise<Error & { data?: { code?: string } }>((resolve) => {
        again.once('connect_error', resolve);
      });
      expect(refused.data).toEqual({ code: 'UNAUTHORIZED' });
    } finally {
      again.disconnect();
    }
  });
});
