import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { BenchProcess, SERVER_CPU } from './bench-process.js';
import { MEMORY_PROBE_URL, SERVER_MAIN, scratchDir } from './paths.js';
import { collectProfiles, profileFlags } from './profiles.js';
import { BenchError, sleep } from './time.js';

const ADMIN_PASSWORD = 'bench-admin-password';

/** A free loopback port: listen on port 0, read the port, close. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      probe.close(() => resolve(port));
    });
  });
}

/** Our environment without Runcast settings, plus the bench's. */
function serverEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^(RUNCAST_|HOST$|PORT$|LOG_LEVEL$|NODE_OPTIONS$)/.test(key)) env[key] = value;
  }
  return {
    ...env,
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    RUNCAST_ADMIN_PASSWORD: ADMIN_PASSWORD,
    // The harness and every load process log in with the same address: no lockout mid-bench.
    RUNCAST_LOGIN_RATE_LIMIT: '100000',
    ...extra,
  };
}

/**
 * The production server (`node packages/server/dist/main.js serve`) in a fresh data dir, pinned
 * to the server CPU. A preloaded probe answers memory requests; nothing else is changed.
 */
export class RuncastServer {
  readonly url: string;
  token = '';
  /** Log lines at error level or above (pino level >= 50). */
  readonly errorLines: string[] = [];

  private constructor(
    readonly process: BenchProcess,
    readonly port: number,
    readonly dataDir: string,
  ) {
    this.url = `http://127.0.0.1:${port}`;
    process.onLine((line) => {
      if (!line.startsWith('{')) return;
      try {
        if (((JSON.parse(line) as { level?: number }).level ?? 0) >= 50)
          this.errorLines.push(line.slice(0, 2000));
      } catch {
        // not a log line
      }
    });
  }

  get pid(): number {
    return this.process.pid;
  }

  /**
   * Starts the server and logs in as admin: on `port` (or a free one), pinned to the server CPU
   * unless `cpu` is null (free to run on any).
   */
  static async start(
    env: Record<string, string> = {},
    options: { port?: number; cpu?: number | null } = {},
  ): Promise<RuncastServer> {
    const port = options.port ?? (await freePort());
    const dataDir = mkdtempSync(join(scratchDir(), 'server-'));
    const child = await BenchProcess.start({
      name: 'runcast server',
      nodeArgs: ['--expose-gc', ...profileFlags(), '--import', MEMORY_PROBE_URL],
      script: SERVER_MAIN,
      args: ['serve', '--port', String(port), '--data-dir', dataDir],
      env: serverEnv(env),
      cpu: options.cpu === null ? undefined : (options.cpu ?? SERVER_CPU),
      waitReady: false,
    });
    const server = new RuncastServer(child, port, dataDir);
    try {
      await server.waitHealthy(20_000);
      server.token = await server.login();
    } catch (err) {
      await server.stop();
      throw err;
    }
    return server;
  }

  private async waitHealthy(timeoutMs: number): Promise<void> {
    const started = Date.now();
    while (Date.now() - started < timeoutMs) {
      if (!this.process.isRunning) {
        throw new BenchError('SERVER_EXITED', `the Runcast server exited at start\n${this.process.tail(30)}`);
      }
      try {
        if ((await fetch(`${this.url}/healthz`)).ok) return;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new BenchError('TIMEOUT', `the Runcast server did not answer /healthz within ${timeoutMs} ms`);
  }

  async api<T>(method: string, path: string, body?: unknown): Promise<T> {
    const response = await fetch(`${this.url}/api/v1${path}`, {
      method,
      headers: {
        ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok)
      throw new BenchError('API', `${method} ${path}: ${response.status} ${text.slice(0, 300)}`);
    return (text ? JSON.parse(text) : undefined) as T;
  }

  private async login(): Promise<string> {
    const answer = await this.api<{ token: string }>('POST', '/auth/login', {
      username: 'admin',
      password: ADMIN_PASSWORD,
    });
    return answer.token;
  }

  /** A project with `count` external runs, created `parallel` at a time. */
  async createRuns(count: number, parallel = 16): Promise<string[]> {
    const project = await this.api<{ project_id: string }>('POST', '/projects', {
      name: `bench ${Date.now()}`,
    });
    const runIds: string[] = new Array(count);
    let next = 0;
    const worker = async () => {
      while (next < count) {
        const index = next++;
        const run = await this.api<{ run_id: string }>('POST', '/runs', {
          project_id: project.project_id,
          kind: 'external',
        });
        runIds[index] = run.run_id;
      }
    };
    await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
    return runIds;
  }

  /** Every `/metrics` series summed by metric name. */
  async metrics(): Promise<Record<string, number>> {
    const response = await fetch(`${this.url}/metrics`, {
      headers: { authorization: `Bearer ${this.token}` },
    });
    if (!response.ok) throw new BenchError('API', `GET /metrics: ${response.status}`);
    const sums: Record<string, number> = {};
    for (const line of (await response.text()).split('\n')) {
      if (line.startsWith('#') || line.trim() === '') continue;
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)/.exec(line);
      if (!match?.[1] || match[2] === undefined) continue;
      sums[match[1]] = (sums[match[1]] ?? 0) + Number(match[2]);
    }
    return sums;
  }

  /** Heap and RSS after a full collection, from the preloaded probe. */
  memory(): Promise<NodeJS.MemoryUsage> {
    return this.process.request<NodeJS.MemoryUsage>('memory', undefined, 30_000);
  }

  /** Graceful stop (SIGTERM), SIGKILL after 8 s; the data dir is removed. */
  async stop(): Promise<void> {
    await this.process.stop(8000);
    rmSync(this.dataDir, { recursive: true, force: true });
    collectProfiles();
  }
}
