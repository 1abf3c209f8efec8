import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchBrowser } from '../../e2e/browser.js';
import { ADMIN_PASSWORD, type World } from '../../packages/server/src/test-support/server.js';
import { Proxies, useBackend } from './harness.js';

// The dashboard in Chromium through deploy/nginx.conf terminating TLS (a self-signed certificate
// for localhost): the login passes the origin check on the forwarded scheme, host and port, the
// session cookie is Secure, and the run page goes live over WebSocket — at the root and under
// /runcast/.

const proxies = new Proxies();
let browser: Browser;
const contexts: BrowserContext[] = [];

beforeAll(async () => {
  browser = await launchBrowser();
});
afterAll(async () => {
  for (const context of contexts.splice(0)) await context.close();
  await browser?.close();
});

async function logIn(url: string, path: string): Promise<{ page: Page; context: BrowserContext }> {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  contexts.push(context);
  const page = await context.newPage();
  await page.goto(`${url}${path}`);
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill(ADMIN_PASSWORD);
  await page.getByRole('button', { name: 'Log in' }).click();
  return { page, context };
}

/** Opens the run page, reports a run to its end, and checks the page followed it over WebSocket. */
async function watchRun(world: World, url: string): Promise<void> {
  const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
  const runId: string = created.body.run_id;
  const { page, context } = await logIn(url, `/runs/${runId}`);
  await page.locator('.indicator[data-method="websocket"]').waitFor({ timeout: 30_000 });
  const cookies = await context.cookies();
  expect(cookies.find((cookie) => cookie.name === 'runcast_session')?.secure).toBe(true);
  await world.worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
  for (let i = 0; i < 5; i++) {
    await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `through nginx ${i}` });
  }
  await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
  await page.getByTestId('status').filter({ hasText: 'COMPLETED' }).waitFor();
  for (let i = 0; i < 5; i++) {
    await expect(
      page.getByTestId('log').getByText(`through nginx ${i}`, { exact: true }).count(),
    ).resolves.toBe(1);
  }
}

describe('TLS terminated by nginx, at the root', () => {
  const backend = useBackend();

  it('logs in from the dashboard and follows a run over WebSocket', async () => {
    const { https } = await proxies.nginx('root', backend.server);
    await watchRun(backend.world, https);
  });

  it('logs in with only `Host $host` (no port) and X-Forwarded-Port', async () => {
    const { https } = await proxies.nginx('host-without-port', backend.server, {
      edit: (config) => config.replace(/^\s*proxy_set_header X-Forwarded-Host .*\n/m, ''),
    });
    const { page } = await logIn(https, '/');
    await page.getByRole('button', { name: 'Log out' }).waitFor();
  });
});

describe('TLS terminated by nginx, under /runcast/', () => {
  const backend = useBackend({ RUNCAST_BASE_PATH: '/runcast' });

  it('serves the dashboard and its WebSocket under the prefix', async () => {
    const { https } = await proxies.nginx('prefix', backend.server, { basePath: '/runcast' });
    await watchRun(backend.world, https);
  });
});
