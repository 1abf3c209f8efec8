import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';

describe('a fresh server', () => {
  let server: TestServer;
  let world: World;
  beforeAll(async () => {
    server = await startServer();
    world = await makeWorld(server.url);
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  it('lets an operator follow a run from creation to completion', async () => {
    const patched = await world.worker.patch(`/runs/${world.runId}/progress`, {
      status: 'RUNNING',
      stage: 'EXPORT',
    });
    expect(patched.status).toBe(200);
    expect(patched.body).toMatchObject({ status: 'RUNNING', stage: 'EXPORT', seq: 1 });
    const done = await world.worker.patch(`/runs/${world.runId}/progress`, { status: 'COMPLETED' });
    expect(done.body.finished_at).not.toBeNull();
    const seen = await world.viewer.get(`/runs/${world.runId}`);
    expect(seen.body).toMatchObject({ status: 'COMPLETED', seq: 2 });
  });
});

describe('changing a password', () => {
  it('needs the current password, ends every session, and lets the new one in', async () => {
    const server = await startServer();
    try {
      const world = await makeWorld(server.url);
      const wrong = await world.viewer.post('/auth/password', {
        current_password: 'nope',
        new_password: 'a-new-password',
      });
      expect(wrong.status).toBe(401);
      const changed = await world.viewer.post('/auth/password', {
        current_password: 'viewer-password',
        new_password: 'a-new-password',
      });
      expect(changed.status).toBe(204);
      expect((await world.viewer.get('/auth/me')).status).toBe(401);
      expect(
        (await world.anonymous.post('/auth/login', { username: 'viewer', password: 'viewer-password' }))
          .status,
      ).toBe(401);
      await world.anonymous.login('viewer', 'a-new-password');
      expect(
        (await world.worker.post('/auth/password', { current_password: 'x', new_password: 'yyyyyyyy' }))
          .status,
      ).toBe(403);
      expect(server.errorLogs).toEqual([]);
    } finally {
      await server.close();
    }
  });
});
