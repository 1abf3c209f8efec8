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
