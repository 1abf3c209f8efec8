import { afterAll, beforeAll, expect } from 'vitest';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';

/** A file's server and World, set before its first test. */
export interface ServerWorld {
  server: TestServer;
  world: World;
}

/**
 * Starts a server (settings in `env`) and builds its World before the file's tests; after them,
 * checks that the server logged no error and closes it.
 */
export function serverWorld(env: Record<string, string> = {}): ServerWorld {
  const handle = {} as ServerWorld;
  beforeAll(async () => {
    handle.server = await startServer(env);
    handle.world = await makeWorld(handle.server.url);
  });
  afterAll(async () => {
    expect(handle.server.errorLogs).toEqual([]);
    await handle.server.close();
  });
  return handle;
}
