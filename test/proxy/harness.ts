import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import { ProgressService, type ProgressServiceOptions } from '../../packages/client/src/index.js';
import type { ConnectionMethod } from '../../packages/client/src/types.js';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { Collector } from '../support/collector.js';
import {
  DEPLOY,
  fillTemplate,
  type ProxyProcess,
  selfSignedCertificate,
  startHaproxy,
  startNginx,
} from '../support/real-proxies.js';
import { freePort } from '../support/server-process.js';

/** A Runcast server (trusting proxies on loopback) and its World, for one describe block. */
export interface Backend {
  readonly server: TestServer;
  readonly world: World;
}

/**
 * Starts a Runcast server before the block's tests and closes it after them, failing on any
 * error it logged. `env` adds settings; RUNCAST_BASE_PATH is honoured by the World's API calls.
 */
export function useBackend(env: Record<string, string> = {}): Backend {
  const state: { server?: TestServer; world?: World } = {};
  beforeAll(async () => {
    state.server = await startServer({ RUNCAST_TRUST_PROXY: 'loopback', ...env });
    state.world = await makeWorld(`${state.server.url}${env.RUNCAST_BASE_PATH ?? ''}`);
  });
  afterAll(async () => {
    expect(state.server?.errorLogs).toEqual([]);
    await state.server?.close();
  });
  return {
    get server() {
      return state.server!;
    },
    get world() {
      return state.world!;
    },
  };
}

/** Proxies started by one test file in one temp dir, with one certificate, stopped after it. */
export class Proxies {
  private dir = '';
  private tls = { cert: '', key: '' };
  private readonly running: ProxyProcess[] = [];

  constructor() {
    beforeAll(() => {
      this.dir = mkdtempSync(join(tmpdir(), 'runcast-proxies-'));
      this.tls = selfSignedCertificate(this.dir);
    });
    afterAll(async () => {
      for (const proxy of this.running.splice(0)) await proxy.stop();
      rmSync(this.dir, { recursive: true, force: true });
    });
  }

  /**
   * deploy/nginx.conf, `edit`ed, in front of `server`; resolves with its plain-HTTP and HTTPS
   * URLs, the base path included.
   */
  async nginx(
    name: string,
    server: TestServer,
    options: { basePath?: string; edit?: (config: string) => string } = {},
  ): Promise<{ http: string; https: string }> {
    const basePath = options.basePath ?? '';
    const [httpPort, httpsPort] = [await freePort(), await freePort()];
    const config = fillTemplate(DEPLOY.nginx, {
      RUNCAST_UPSTREAM: new URL(server.url).host,
      SERVER_NAME: 'localhost',
      HTTP_PORT: `127.0.0.1:${httpPort}`,
      HTTPS_PORT: `127.0.0.1:${httpsPort}`,
      TLS_CERT: this.tls.cert,
      TLS_KEY: this.tls.key,
      BASE_PATH: basePath,
    });
    const edit = options.edit ?? ((text: string) => text);
    this.running.push(await startNginx(join(this.dir, name), edit(config), [httpPort, httpsPort]));
    return {
      http: `http://127.0.0.1:${httpPort}${basePath}`,
      https: `https://localhost:${httpsPort}${basePath}`,
    };
  }

  /** deploy/haproxy.cfg, `edit`ed, in front of `server`; resolves with its URL. */
  async haproxy(name: string, server: TestServer, edit = (config: string) => config): Promise<string> {
    const port = await freePort();
    const config = fillTemplate(DEPLOY.haproxy, {
      BIND: `127.0.0.1:${port}`,
      RUNCAST_UPSTREAM: new URL(server.url).host,
      BASE_PATH: '',
    });
    this.running.push(await startHaproxy(join(this.dir, name), edit(config), [port]));
    return `http://127.0.0.1:${port}`;
  }
}

export interface Followed {
  /** The method the service was on when the run ended. */
  method: ConnectionMethod | null;
  seen: Collector;
}

/**
 * Follows a fresh run through `options` (the proxy's URL) while its worker reports directly to
 * the server: `before` runs once the first snapshot arrived (an idle period, a cut…). Checks
 * that every log arrives exactly once, in order, and that the run ends on its terminal snapshot.
 */
export async function followRun(
  world: World,
  options: ProgressServiceOptions,
  before: (service: ProgressService) => Promise<void> = async () => {},
): Promise<Followed> {
  const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
  const runId: string = created.body.run_id;
  const service = new ProgressService({ token: world.viewer.token, ...options });
  try {
    const seen = new Collector();
    service.subscribeToRun(runId, seen.push);
    await seen.until((events) => events.some((event) => event.type === 'snapshot'));
    await before(service);
    await world.worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING', stage: 'EXPORT' });
    const expected: string[] = [];
    for (let i = 0; i < 25; i++) {
      expected.push(`line ${i}`);
      await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
    }
    await world.worker.patch(`/runs/${runId}/progress`, {
      status: 'COMPLETED',
      progress: { percentage: 100 },
    });
    await seen.untilStatus('COMPLETED');
    expect(seen.logMessages).toEqual(expected);
    expect(new Set(seen.logSeqs).size).toBe(seen.logSeqs.length);
    expect(seen.lastState).toMatchObject({ status: 'COMPLETED', seq: seen.logSeqs.at(-1)! + 1 });
    return { method: service.getConnectionMethod(), seen };
  } finally {
    service.close();
  }
}
