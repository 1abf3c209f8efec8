import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { World } from '../packages/server/src/test-support/server.js';
import { type BrowserWorld, startBrowserWorld } from './browser.js';

// Chromium's own decoders on the dashboard's live connection, nothing in between (no routing of
// the WebSocket or the stream): the WebSocket's per-message deflate, whose frames the server
// compresses once for every socket after the run's frame before, and the gzipped SSE stream,
// whose pieces it chains the same way. A frame Chromium could not inflate would fail the
// connection, and the dashboard would leave the method or miss a tick.

let started: BrowserWorld;
let server: BrowserWorld['server'];
let world: World;
let browser: Browser;

beforeAll(async () => {
  started = await startBrowserWorld({ RUNCAST_WS_COMPRESSION: 'on' });
  ({ server, world, browser } = started);
});
afterAll(async () => {
  await started?.close();
});

/** The dashboard of a new run, logged in, and what its page's connections answered and carried. */
async function openRun(blockWebSocket: boolean) {
  const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
  const runId: string = created.body.run_id;
  await world.worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING', progress: { percentage: 0 } });
  const context = await browser.newContext();
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send('Network.enable');
  const handshakes: Record<string, string>[] = [];
  cdp.on('Network.webSocketHandshakeResponseReceived', ({ response }) => {
    handshakes.push(
      Object.fromEntries(Object.entries(response.headers).map(([k, v]) => [k.toLowerCase(), v])),
    );
  });
  const streams: Record<string, string>[] = [];
  cdp.on('Network.responseReceived', ({ response }) => {
    if (response.mimeType === 'text/event-stream') {
      streams.push(
        Object.fromEntries(Object.entries(response.headers).map(([k, v]) => [k.toLowerCase(), v])),
      );
    }
  });
  let closedSockets = 0;
  page.on('websocket', (socket) => socket.on('close', () => closedSockets++));
  if (blockWebSocket) {
    await page.routeWebSocket(/\/socket\.io\//, (socket) => socket.close({ code: 1008, reason: 'blocked' }));
  }
  await page.goto(`${server.url}/runs/${runId}`);
  await page.getByLabel('Username').fill('viewer');
  await page.getByLabel('Password').fill('viewer-password');
  await page.getByRole('button', { name: 'Log in' }).click();
  return { runId, page, context, handshakes, streams, closedSockets: () => closedSockets };
}

/** Progress ticks, each shown by the page before the next is sent. */
async function tick(page: Page, runId: string, count: number): Promise<void> {
  for (let i = 1; i <= count; i++) {
    const answer = await world.worker.patch(`/runs/${runId}/progress`, {
      progress: {
        percentage: i,
        message: `Receiving objects ${i * 137}/10000`,
        done: i * 137,
        total: 10_000,
      },
    });
    expect(answer.status).toBe(200);
    await page
      .getByTestId('message')
      .filter({ hasText: `Receiving objects ${i * 137}/10000` })
      .waitFor();
  }
}

describe('compressed live connections in Chromium', () => {
  it('inflates the shared per-message deflate frames of every update', async () => {
    const { runId, page, context, handshakes, closedSockets } = await openRun(false);
    try {
      await page.locator('.indicator[data-method="websocket"]').waitFor({ timeout: 30_000 });
      await tick(page, runId, 30);
      expect(handshakes.some((h) => /permessage-deflate/.test(h['sec-websocket-extensions'] ?? ''))).toBe(
        true,
      );
      // Still the same socket on WebSocket: no frame failed it.
      expect(closedSockets()).toBe(0);
      expect(await page.locator('.indicator').getAttribute('data-method')).toBe('websocket');
    } finally {
      await context.close();
    }
  });

  it('inflates the chained gzip pieces of a stream, once the WebSocket is refused', {
    timeout: 90_000,
  }, async () => {
    const { runId, page, context, streams } = await openRun(true);
    try {
      await page.locator('.indicator[data-method="sse"]').waitFor({ timeout: 60_000 });
      await tick(page, runId, 30);
      expect(streams.some((h) => h['content-encoding'] === 'gzip')).toBe(true);
      expect(await page.locator('.indicator').getAttribute('data-method')).toBe('sse');
    } finally {
      await context.close();
    }
  });
});
