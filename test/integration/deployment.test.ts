import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';

// A dashboard built for another origin (VITE_API_URL) calls the API cross-origin with its token.
describe('a split deployment', () => {
  const DASHBOARD = 'http://dashboard.example';
  let server: TestServer;
  let world: World;
  beforeAll(async () => {
    server = await startServer({ RUNCAST_ALLOWED_ORIGINS: DASHBOARD });
    world = await makeWorld(server.url);
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  const preflight = (origin: string) =>
    fetch(`${server.url}/api/v1/runs/${world.runId}/progress`, {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'PATCH',
        'access-control-request-headers': 'authorization,content-type',
      },
    });

  it('answers the preflight of an allowed origin', async () => {
    const answer = await preflight(DASHBOARD);
    expect(answer.status).toBeLessThan(300);
    expect(answer.headers.get('access-control-allow-origin')).toBe(DASHBOARD);
    expect(answer.headers.get('access-control-allow-headers')).toContain('authorization');
  });

  it('does not allow other origins', async () => {
    const answer = await preflight('http://evil.example');
    expect(answer.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('lets the allowed origin read answers and their ETag', async () => {
    const answer = await fetch(`${server.url}/api/v1/runs/${world.runId}/progress`, {
      headers: { origin: DASHBOARD, authorization: `Bearer ${world.viewer.token}` },
    });
    expect(answer.status).toBe(200);
    expect(answer.headers.get('access-control-allow-origin')).toBe(DASHBOARD);
    expect(answer.headers.get('access-control-expose-headers')).toContain('etag');
  });

  it('lets the allowed origin read repeated conditional polls, each 304 with its CORS headers', async () => {
    const poll = () =>
      fetch(`${server.url}/api/v1/runs/${world.runId}/progress`, {
        headers: { origin: DASHBOARD, authorization: `Bearer ${world.viewer.token}`, 'if-none-match': '"0"' },
      });
    for (let i = 0; i < 3; i++) {
      const answer = await poll();
      expect(answer.status).toBe(304);
      expect(answer.headers.get('access-control-allow-origin')).toBe(DASHBOARD);
      expect(answer.headers.get('access-control-expose-headers')).toContain('etag');
    }
  });
});

describe('a metrics bind address', () => {
  it('serves /metrics without credentials there, while the API still requires an admin', async () => {
    const server = await startServer({ RUNCAST_METRICS_PORT: '0', RUNCAST_METRICS_HOST: '127.0.0.1' });
    try {
      const address = server.runcast.metricsServer?.address();
      if (!address || typeof address === 'string') throw new Error('no metrics listener');
      const scraped = await fetch(`http://127.0.0.1:${address.port}/metrics`);
      expect(scraped.status).toBe(200);
      expect(await scraped.text()).toContain('runcast_connections{transport="sse"}');
      expect((await fetch(`http://127.0.0.1:${address.port}/api/v1/runs`)).status).toBe(404);
      expect((await fetch(`${server.url}/metrics`)).status).toBe(401);
    } finally {
      await server.close();
    }
  });
});
