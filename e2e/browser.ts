import { existsSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { type Browser, chromium } from 'playwright-core';
import { expect } from 'vitest';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../packages/server/src/test-support/server.js';

/** Where screenshots go: test artifacts, never committed. */
export const ARTIFACTS = fileURLToPath(new URL('../test-results/', import.meta.url));

const CHROMIUM = process.env.RUNCAST_CHROMIUM ?? '/usr/bin/chromium';

/** Debian's Chromium, headless, with the flags this machine's closed network needs. */
export async function launchBrowser(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install the Debian package chromium`);
  const dist = fileURLToPath(new URL('../packages/web/dist/index.html', import.meta.url));
  if (!existsSync(dist)) throw new Error('the dashboard is not built: run `npm run build`');
  mkdirSync(ARTIFACTS, { recursive: true });
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** A server (with `env`), its users and project, and Chromium: what a browser suite starts with. */
export interface BrowserWorld {
  server: TestServer;
  world: World;
  browser: Browser;
  /** Closes Chromium and the server; the server must have logged no error. */
  close(): Promise<void>;
}

export async function startBrowserWorld(env: Record<string, string> = {}): Promise<BrowserWorld> {
  const server = await startServer(env);
  const world = await makeWorld(server.url);
  const browser = await launchBrowser();
  return {
    server,
    world,
    browser,
    async close() {
      await browser.close();
      expect(server.errorLogs).toEqual([]);
      await server.close();
    },
  };
}
