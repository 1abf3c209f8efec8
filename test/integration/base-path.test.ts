import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ProgressService } from '../../packages/client/src/index.js';
import type { ConnectionMethod } from '../../packages/client/src/types.js';
import {
  ADMIN_PASSWORD,
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { Collector, eventually } from '../support/collector.js';

const BASE = '/runcast';

describe('under RUNCAST_BASE_PATH', () => {
  let server: TestServer;
  let world: World;
  let webDir: string;
  /** The server's URL with the base path, as a client behind the proxy addresses it. */
  let url: string;
  beforeAll(async () => {
    // A stand-in for the dashboard's build: relative asset URLs, as Vite's `base: './'` writes.
    webDir = mkdtempSync(join(tmpdir(), 'runcast-web-'));
    mkdirSync(join(webDir, 'assets'));
    writeFileSync(
      join(webDir, 'index.html'),
      '<!doctype html><html><head><script type="module" src="./assets/app.js"></script></head><body></body></html>',
    );
    writeFileSync(join(webDir, 'assets', 'app.js'), 'export {};\n');
    server = await startServer({ RUNCAST_BASE_PATH: `${BASE}/`, RUNCAST_WEB_DIR: webDir });
    url = `${server.url}${BASE}`;
    world = await makeWorld(url);
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
    rmSync(webDir, { recursive: true, force: true });
  });

  it('serves the probes, the metrics and the API reference under the prefix', async () => {
    expect((await fetch(`${url}/healthz`)).status).toBe(200);
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
    const metrics = await fetch(`${url}/metrics`, {
      headers: { authorization: `Bearer ${world.admin.token}` },
    });
    expect(metrics.status).toBe(200);
    const docs = await fetch(`${url}/docs`);
    expect(docs.status).toBe(200);
    expect(await docs.text()).toContain(`${BASE}/docs/static/`);
    const spec = (await (await fetch(`${url}/docs/json`)).json()) as { servers?: { url: string }[] };
    expect(spec.servers).toEqual([{ url: BASE }]);
  });

  it('answers 404 in the contract’s shape outside the prefix', async () => {
    for (const path of ['/healthz', '/api/v1/auth/me', `${BASE}x/healthz`]) {
      const answer = await fetch(`${server.url}${path}`);
      expect(answer.status).toBe(404);
      expect(((await answer.json()) as { error: { code: string } }).error.code).toBe('NOT_FOUND');
    }
  });

  it('serves the dashboard with a <base> under the prefix, at every deep link', async () => {
    for (const path of ['', '/', `/runs/${world.runId}`, '/projects', '/login']) {
      const page = await fetch(`${url}${path}`);
      expect(page.status).toBe(200);
      expect(page.headers.get('content-type')).toContain('text/html');
      expect(await page.text()).toContain(`<base href="${BASE}/" />`);
    }
    expect((await fetch(`${url}/assets/app.js`)).status).toBe(200);
  });

  it('scopes the session cookie to the prefix', async () => {
    const answer = await fetch(`${url}/api/v1/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'admin', password: ADMIN_PASSWORD }),
    });
    expect(answer.status).toBe(200);
    expect(answer.headers.get('set-cookie')).toMatch(new RegExp(`Path=${BASE}(;|$)`));
  });

  it('answers conditional polls under the prefix', async () => {
    const first = await world.viewer.get(`/runs/${world.runId}/progress`);
    const again = await world.viewer.get(`/runs/${world.runId}/progress`, {
      'if-none-match': first.headers.get('etag') ?? '',
    });
    expect(again.status).toBe(304);
  });

  describe.each<ConnectionMethod>(['websocket', 'sse', 'polling'])('ProgressService over %s', (method) => {
    let service: ProgressService;
    afterEach(() => service.close());

    it('delivers every log once and ends on the terminal snapshot', async () => {
      const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
      const runId: string = created.body.run_id;
      service = new ProgressService({
        baseUrl: url,
        wsUrl: server.url,
        socketPath: `${BASE}/socket.io`,
        token: world.viewer.token,
        transports: [method],
      });
      const seen = new Collector();
      service.subscribeToRun(runId, seen.push);
      await seen.until((events) => events.length > 0);
      // The REST opening snapshot may come first; the method follows once it is connected.
      await eventually(() => service.getConnectionMethod() === method);
      await world.worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
      for (let i = 0; i < 10; i++)
        await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
      await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
      await seen.untilStatus('COMPLETED');
      expect(seen.logMessages).toEqual(Array.from({ length: 10 }, (_, i) => `line ${i}`));
      expect(seen.lastState?.status).toBe('COMPLETED');
    });
  });

  it('does not serve Socket.IO outside the prefix', async () => {
    const answer = await fetch(`${server.url}/socket.io/?EIO=4&transport=websocket`);
    expect(answer.status).toBe(404);
  });
});
