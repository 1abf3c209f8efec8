import { join } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_PASSWORD, type Api, type World } from '../packages/server/src/test-support/server.js';
import { ARTIFACTS, type BrowserWorld, startBrowserWorld } from './browser.js';

let started: BrowserWorld;
let server: BrowserWorld['server'];
let world: World;
let browser: Browser;
const contexts: BrowserContext[] = [];

beforeAll(async () => {
  started = await startBrowserWorld();
  ({ server, world, browser } = started);
});
afterEach(async () => {
  for (const context of contexts.splice(0)) await context.close();
});
afterAll(async () => {
  await started?.close();
});

interface Blocks {
  websocket: boolean;
  sse: boolean;
}

/** A logged-in page; WebSockets and the SSE route pass or are refused as `blocks` says. */
async function openPage(
  username: string,
  password: string,
  path: string,
  blocks: Blocks = { websocket: false, sse: false },
): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  contexts.push(context);
  const page = await context.newPage();
  await page.routeWebSocket(/\/socket\.io\//, (ws) => {
    if (blocks.websocket) {
      ws.close({ code: 1008, reason: 'blocked by the test' });
      return;
    }
    ws.connectToServer();
  });
  await page.route(/\/api\/v1\/(runs\/[^/]+\/)?stream/, async (route) => {
    if (blocks.sse) await route.abort('connectionrefused');
    else await route.continue();
  });
  await page.goto(`${server.url}${path}`);
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  return page;
}

async function newRun(): Promise<string> {
  const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
  return created.body.run_id;
}

const indicator = (page: Page) => page.locator('.indicator');

async function expectMethod(page: Page, method: string, timeoutMs = 30_000): Promise<void> {
  await page.locator(`.indicator[data-method="${method}"]`).waitFor({ timeout: timeoutMs });
}

async function report(worker: Api, runId: string, percentage: number, message: string): Promise<void> {
  const answer = await worker.patch(`/runs/${runId}/progress`, {
    status: 'RUNNING',
    stage: 'DISCOVERY',
    progress: { percentage, message },
  });
  expect(answer.status).toBe(200);
}

describe('the run dashboard in Chromium', () => {
  it('logs in, creates a project and a run, and shows live updates over WebSocket', async () => {
    const page = await openPage('operator', 'operator-password', '/');
    await page.getByLabel('Project name').fill('Browser project');
    await page.getByRole('button', { name: 'Create project' }).click();
    await page.getByRole('link', { name: 'Browser project' }).click();
    await page.getByRole('link', { name: 'New run' }).click();
    await page.getByLabel('External worker').check();
    await page.getByRole('button', { name: 'Create run' }).click();
    await page.getByRole('button', { name: 'Create an API token' }).click();
    await page.getByTestId('snippet').filter({ hasText: "RUNCAST_TOKEN='rc_" }).waitFor();
    const snippet = await page.getByTestId('snippet').textContent();
    const token = /RUNCAST_TOKEN='(rc_[^']+)'/.exec(snippet ?? '')?.[1];
    expect(token).toBeDefined();
    const runId = /runs\/(run_[0-9A-Z]+)\/progress/.exec(snippet ?? '')?.[1] ?? '';
    await page.getByRole('link', { name: 'Open the run dashboard' }).click();
    await expectMethod(page, 'websocket');
    expect(await indicator(page).textContent()).toContain('WebSocket');
    const worker = world.anonymous.as(token);
    await report(worker, runId, 42.5, 'Receiving objects');
    await worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'hello from the worker' });
    await page.getByTestId('percentage').filter({ hasText: '42.5%' }).waitFor();
    await page.getByTestId('message').filter({ hasText: 'Receiving objects' }).waitFor();
    await page.getByTestId('log').getByText('hello from the worker').waitFor();
    await page.screenshot({ path: join(ARTIFACTS, 'indicator-websocket.png'), animations: 'disabled' });

    // A fuller picture for the README: stages, counters, rate, ETA and a few log lines.
    for (const stage of ['EXPORT', 'TRANSFORM', 'PLAN']) {
      await worker.post(`/runs/${runId}/logs`, { level: 'info', message: `${stage} started`, stage });
      await worker.patch(`/runs/${runId}/progress`, { stage });
    }
    await worker.post(`/runs/${runId}/logs`, {
      entries: [
        { level: 'warn', message: 'refs/merge-requests/* dropped: GitLab-only refs', stage: 'TRANSFORM' },
        { level: 'info', message: 'group/api: 42 refs to create, 3 to update', stage: 'PLAN' },
        { level: 'info', message: 'Writing objects: 67% (8375/12500)', stage: 'APPLY' },
      ],
    });
    await worker.patch(`/runs/${runId}/progress`, {
      stage: 'APPLY',
      current_stage: 'APPLY group/api (2/5)',
      progress: {
        percentage: 67,
        message: 'Writing objects',
        done: 8375,
        total: 12500,
        unit: 'objects',
        rate_per_s: 812.4,
        eta_s: 5,
      },
      stats: { repositories: 5, repositories_done: 1, refs: 120, objects: 8375, bytes: 123456789, errors: 0 },
    });
    await page.getByTestId('percentage').filter({ hasText: '67.0%' }).waitFor();
    await page.screenshot({ path: join(ARTIFACTS, 'run-dashboard-1280.png'), animations: 'disabled' });
    await page.setViewportSize({ width: 390, height: 844 });
    await page.screenshot({
      path: join(ARTIFACTS, 'run-dashboard-390.png'),
      fullPage: true,
      animations: 'disabled',
    });
  });

  it('falls back to SSE when the WebSocket is blocked, to polling when SSE is too, and upgrades back', async () => {
    const runId = await newRun();
    const blocks = { websocket: true, sse: false };
    const page = await openPage('viewer', 'viewer-password', `/runs/${runId}`, blocks);
    await expectMethod(page, 'sse');
    await report(world.worker, runId, 10, 'over sse');
    await page.getByTestId('message').filter({ hasText: 'over sse' }).waitFor();
    expect(await indicator(page).textContent()).toContain('SSE');
    await page.screenshot({ path: join(ARTIFACTS, 'indicator-sse.png'), animations: 'disabled' });

    await page.context().close();

    // A new viewer behind a network that blocks both the WebSocket and the SSE route.
    blocks.sse = true;
    const polled = await openPage('viewer', 'viewer-password', `/runs/${runId}`, blocks);
    await expectMethod(polled, 'polling', 60_000);
    await report(world.worker, runId, 20, 'over polling');
    await polled.getByTestId('message').filter({ hasText: 'over polling' }).waitFor();
    expect(await indicator(polled).textContent()).toContain('Polling');
    await polled.screenshot({ path: join(ARTIFACTS, 'indicator-polling.png'), animations: 'disabled' });

    // The network lets WebSockets through again: the background probe switches up.
    blocks.websocket = false;
    blocks.sse = false;
    await expectMethod(polled, 'websocket', 60_000);
    await report(world.worker, runId, 30, 'back on websocket');
    await polled.getByTestId('message').filter({ hasText: 'back on websocket' }).waitFor();
    await polled.screenshot({ path: join(ARTIFACTS, 'indicator-upgraded.png'), animations: 'disabled' });
  }, 180_000);

  it('keeps every log line exactly once, in order, across a network drop', async () => {
    const runId = await newRun();
    await report(world.worker, runId, 0, 'starting');
    const page = await openPage('viewer', 'viewer-password', `/runs/${runId}`);
    await expectMethod(page, 'websocket');
    await page.context().setOffline(true);
    // The server cannot be reached at all: offline on the same method, not a fallback.
    await page.locator('.indicator[data-state="offline"][data-method="none"]').waitFor({ timeout: 30_000 });
    await page.screenshot({ path: join(ARTIFACTS, 'indicator-reconnecting.png'), animations: 'disabled' });
    for (let i = 0; i < 100; i += 10) {
      const entries = Array.from({ length: 10 }, (_, j) => ({ level: 'info', message: `line ${i + j}` }));
      await world.worker.post(`/runs/${runId}/logs`, { entries });
    }
    await page.context().setOffline(false);
    await world.worker.patch(`/runs/${runId}/progress`, {
      status: 'COMPLETED',
      progress: { percentage: 100 },
    });
    await page.getByTestId('status').filter({ hasText: 'COMPLETED' }).waitFor({ timeout: 30_000 });
    const lines = await page.locator('[data-testid="log"] .line .text').allTextContents();
    expect(lines).toEqual(Array.from({ length: 100 }, (_, i) => `line ${i}`));
  });

  it('cancels from the page for every viewer; a viewer has no Cancel and the API refuses it', async () => {
    const runId = await newRun();
    await report(world.worker, runId, 5, 'working');
    const operatorPage = await openPage('operator', 'operator-password', `/runs/${runId}`);
    const viewerPage = await openPage('viewer', 'viewer-password', `/runs/${runId}`);
    await viewerPage.getByTestId('status').filter({ hasText: 'RUNNING' }).waitFor();
    expect(await viewerPage.getByRole('button', { name: 'Cancel' }).count()).toBe(0);
    const refused = await world.viewer.post(`/runs/${runId}/cancel`);
    expect(refused.status).toBe(403);
    await operatorPage.getByRole('button', { name: 'Cancel' }).click();
    for (const page of [operatorPage, viewerPage]) {
      await page.getByTestId('status').filter({ hasText: 'CANCELED' }).waitFor();
    }
    expect((await world.viewer.get(`/runs/${runId}`)).body.status).toBe('CANCELED');
  });

  it('opened late on a FAILED run, shows every line of its log', async () => {
    const runId = await newRun();
    await report(world.worker, runId, 30, 'working');
    for (let i = 1; i <= 4; i++)
      await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `step ${i}` });
    await world.worker.post(`/runs/${runId}/logs`, { level: 'error', message: 'step 5 failed: disk full' });
    await world.worker.patch(`/runs/${runId}/progress`, { status: 'FAILED' });
    const page = await openPage('viewer', 'viewer-password', `/runs/${runId}`);
    await page.getByTestId('status').filter({ hasText: 'FAILED' }).waitFor();
    const log = page.getByTestId('log');
    await log.getByText('step 5 failed: disk full').waitFor();
    expect(await log.locator('.line').allTextContents()).toHaveLength(5);
    for (let i = 1; i <= 4; i++) expect(await log.getByText(`step ${i}`, { exact: true }).count()).toBe(1);
  });

  it('sends the reader to the login page when the session ends', async () => {
    const runId = await newRun();
    await report(world.worker, runId, 10, 'working');
    const page = await openPage('viewer', 'viewer-password', `/runs/${runId}`);
    await page.getByTestId('status').filter({ hasText: 'RUNNING' }).waitFor();
    // The session ends on the server (as from another tab): the live subscription ends with it.
    const ended = await page.evaluate(
      async () => (await fetch('/api/v1/auth/logout', { method: 'POST' })).status,
    );
    expect(ended).toBeLessThan(300);
    await page.getByLabel('Password').waitFor({ timeout: 15_000 });
    expect(new URL(page.url()).pathname).toBe(`/runs/${runId}`);
  });

  it('opens deep links after logging in', async () => {
    const runId = await newRun();
    const page = await openPage('admin', ADMIN_PASSWORD, `/runs/${runId}`);
    await page.getByTestId('status').filter({ hasText: 'CREATED' }).waitFor();
    expect(new URL(page.url()).pathname).toBe(`/runs/${runId}`);
    const projectPage = await openPage('viewer', 'viewer-password', `/projects/${world.projectId}`);
    await projectPage.getByRole('heading', { name: 'main project' }).waitFor();
    await projectPage.locator(`tr[data-run="${runId}"]`).waitFor();
  });
});
