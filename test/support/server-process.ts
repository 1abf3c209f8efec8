import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The built server's entry point; the test command builds it before the suites run. */
export const MAIN = fileURLToPath(new URL('../../packages/server/dist/main.js', import.meta.url));
export const CHILD_ADMIN_PASSWORD = 'child-admin-password';

/** Fails with a clear message when the server has not been built. */
export function requireBuiltServer(): void {
  if (!existsSync(MAIN))
    throw new Error(`${MAIN} is missing: build the server first with \`npx tsc -b packages/server\``);
}

/** A free loopback port: listen on port 0, read the port, close. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      if (address === null || typeof address === 'string') {
        probe.close();
        reject(new Error('probe socket has no TCP address'));
        return;
      }
      probe.close((err) => (err ? reject(err) : resolve(address.port)));
    });
  });
}

/** The environment of a child: ours without Runcast settings, plus the ones this test needs. */
function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^(RUNCAST_|HOST$|PORT$|LOG_LEVEL$)/.test(key)) env[key] = value;
  }
  return {
    ...env,
    RUNCAST_ADMIN_PASSWORD: CHILD_ADMIN_PASSWORD,
    HOST: '127.0.0.1',
    LOG_LEVEL: 'info',
    ...extra,
  };
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** `node dist/main.js serve` as a child process; ready once it logs "listening". */
export class ServerProcess {
  /** Every child started, so that a suite can kill them all when it ends. */
  static readonly all: ServerProcess[] = [];
  readonly stdout: string[] = [];
  /** Log lines at level error or above (pino level >= 50). */
  readonly errorLines: string[] = [];
  stderr = '';
  readonly exited: Promise<Exit>;
  private constructor(
    readonly child: ChildProcess,
    readonly url: string,
  ) {
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
    });
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  static async start(
    dataDir: string,
    port: number,
    env: Record<string, string> = {},
  ): Promise<ServerProcess> {
    requireBuiltServer();
    const child = spawn(process.execPath, [MAIN, 'serve', '--port', String(port), '--data-dir', dataDir], {
      env: childEnv(env),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const server = new ServerProcess(child, `http://127.0.0.1:${port}`);
    ServerProcess.all.push(server);
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      server.stderr += chunk;
    });
    const listening = new Promise<void>((resolve, reject) => {
      // stdout is read for the whole life of the child, so a full pipe never blocks the server.
      createInterface({ input: child.stdout! }).on('line', (line) => {
        server.stdout.push(line);
        let parsed: { level?: number; msg?: string } | undefined;
        try {
          parsed = JSON.parse(line) as { level?: number; msg?: string };
        } catch {
          return; // a plain line, such as the bootstrap-admin notice
        }
        if ((parsed.level ?? 0) >= 50) server.errorLines.push(line);
        if (parsed.msg === 'listening') resolve();
      });
      child.once('error', reject);
      server.exited.then(
        ({ code, signal }) =>
          reject(
            new Error(
              `server exited before listening (code ${code}, signal ${signal})\nstderr:\n${server.stderr}\nstdout:\n${server.stdout.join('\n')}`,
            ),
          ),
        reject,
      );
    });
    await listening;
    return server;
  }

  /** Sends SIGTERM (graceful shutdown) and waits for the exit. */
  async stop(): Promise<Exit> {
    if (this.running) this.child.kill('SIGTERM');
    return this.exited;
  }

  /** SIGKILL (no graceful shutdown) and wait for the process to be gone. */
  async kill(): Promise<Exit> {
    if (this.running) this.child.kill('SIGKILL');
    return this.exited;
  }
}

/** Kills every child still running. */
export async function killAllServers(): Promise<void> {
  for (const child of ServerProcess.all.splice(0)) await child.kill();
}
