import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { MAIN, requireBuiltServer } from '../support/server-process.js';

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `runcast <args>` (the built bin) and collects its output; `whileRunning` runs meanwhile. */
function runcast(
  args: string[],
  env: Record<string, string>,
  whileRunning?: () => Promise<void>,
  viaTerminal = false,
): Promise<Ran> {
  const base = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env };
  // `script` gives the command a pseudo-terminal, as an interactive shell would.
  const command = viaTerminal ? 'script' : process.execPath;
  const argv = viaTerminal
    ? ['-q', '-e', '-c', [process.execPath, MAIN, ...args].map((a) => `'${a}'`).join(' '), '/dev/null']
    : [MAIN, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, {
      env: { ...base, COLUMNS: '100', LINES: '40' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString('utf8');
    });
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
    });
    child.on('error', reject);
    const exited = new Promise<number | null>((done) => child.on('close', (code) => done(code)));
    (whileRunning ? whileRunning() : Promise.resolve()).then(
      () => exited.then((code) => resolve({ code, stdout, stderr })),
      (err: unknown) => {
        child.kill('SIGKILL');
        reject(err);
      },
    );
  });
}

describe('the runcast CLI', () => {
  let server: TestServer;
  let world: World;
  let env: Record<string, string>;
  const dirs: string[] = [];
  beforeAll(async () => {
    requireBuiltServer();
    // The migrate test mirrors local repositories (file://).
    server = await startServer({ RUNCAST_GIT_ALLOW_LOCAL: '1' });
    world = await makeWorld(server.url);
    env = { RUNCAST_URL: server.url, RUNCAST_TOKEN: world.operator.token ?? '' };
  });
  afterAll(async () => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  async function produce(runId: string): Promise<void> {
    await world.worker.patch(`/runs/${runId}/progress`, {
      status: 'RUNNING',
      stage: 'EXPORT',
      progress: { percentage: 10, message: 'Receiving objects' },
    });
    for (let i = 0; i < 5; i++)
      await world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
    await world.worker.patch(`/runs/${runId}/progress`, {
      progress: { percentage: 60, message: 'Writing objects', done: 6, total: 10, unit: 'objects' },
    });
    await world.worker.patch(`/runs/${runId}/progress`, {
      status: 'COMPLETED',
      progress: { percentage: 100 },
    });
  }

  async function newRun(): Promise<string> {
    return (await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' })).body
      .run_id;
  }

  /** Waits until the CLI's subscription is live (the server counts a subscriber on the run). */
  async function subscribed(): Promise<void> {
    const deadline = Date.now() + 10_000;
    while (server.runcast.hub.stats().subscriptions === 0) {
      if (Date.now() > deadline) throw new Error('the CLI never subscribed');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  it('watch prints plain lines when stdout is not a terminal, and exits 0 on COMPLETED', async () => {
    const runId = await newRun();
    const ran = await runcast(['watch', runId], env, async () => {
      await subscribed();
      await produce(runId);
    });
    expect(ran.stderr).toBe('');
    expect(ran.code).toBe(0);
    expect(ran.stdout).toContain('RUNNING EXPORT 10% Receiving objects (websocket)');
    for (let i = 0; i < 5; i++) expect(ran.stdout).toMatch(new RegExp(`\\[info\\] line ${i}\\n`));
    expect(ran.stdout.trim().split('\n').at(-1)).toMatch(/^COMPLETED in \d+s$/);
    expect(ran.stdout).not.toContain('\x1b[');
  });

  it('watch opened on a finished run prints its whole log, then its end', async () => {
    const runId = await newRun();
    await produce(runId);
    const ran = await runcast(['watch', runId], env);
    expect(ran.stderr).toBe('');
    expect(ran.code).toBe(0);
    const lines = ran.stdout.trim().split('\n');
    for (let i = 0; i < 5; i++)
      expect(lines.filter((line) => line.endsWith(`[info] line ${i}`))).toHaveLength(1);
    expect(lines.at(-1)).toMatch(/^COMPLETED in \d+s$/);
  });

  it('watch draws a live view with a progress bar in a pseudo-terminal', async () => {
    const runId = await newRun();
    const ran = await runcast(
      ['watch', runId],
      env,
      async () => {
        await subscribed();
        await produce(runId);
      },
      true,
    );
    expect(ran.code).toBe(0);
    expect(ran.stdout).toContain('\x1b['); // redraws in place
    expect(ran.stdout).toMatch(/\[█+░*\]\s+100\.0%/);
    expect(ran.stdout).toContain('🔗 WebSocket');
    expect(ran.stdout).toContain('[info] line 4');
    expect(ran.stdout).toMatch(/COMPLETED in \d+s/);
  });

  it('migrate creates a git-mirror run and --watch follows it to the end', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'runcast-cli-'));
    dirs.push(dir);
    const git = (...args: string[]) =>
      execFileSync('git', args, {
        cwd: dir,
        env: {
          ...process.env,
          GIT_AUTHOR_NAME: 't',
          GIT_AUTHOR_EMAIL: 't@e',
          GIT_COMMITTER_NAME: 't',
          GIT_COMMITTER_EMAIL: 't@e',
        },
      });
    git('init', '-q', '-b', 'master', 'work');
    execFileSync(
      'sh',
      ['-c', 'echo hello > work/a.txt && git -C work add a.txt && git -C work commit -q -m first'],
      {
        cwd: dir,
        env: {
          ...process.env,
          GIT_AUTHOR_NAME: 't',
          GIT_AUTHOR_EMAIL: 't@e',
          GIT_COMMITTER_NAME: 't',
          GIT_COMMITTER_EMAIL: 't@e',
        },
      },
    );
    git('clone', '-q', '--bare', 'work', 'source.git');
    git('init', '-q', '--bare', 'target.git');
    const ran = await runcast(
      [
        'migrate',
        `file://${dir}/source.git`,
        `file://${dir}/target.git`,
        '--project',
        world.projectId,
        '--rename',
        'refs/heads/master=refs/heads/main',
        '--watch',
      ],
      env,
    );
    expect(ran.stderr).toBe('');
    expect(ran.code).toBe(0);
    const runId = ran.stdout.split('\n')[0] ?? '';
    expect(runId).toMatch(/^run_/);
    expect(ran.stdout).toMatch(/COMPLETED in \d+s/);
    expect(execFileSync('git', ['ls-remote', `${dir}/target.git`]).toString()).toContain('refs/heads/main');
  });

  it('answers bad usage with 2, a refused call with 4 and an absent server with 5, on one line', async () => {
    const usage = await runcast(['migrate', 'only-a-source'], env);
    expect(usage.code).toBe(2);
    expect(usage.stderr.split('\n')[0]).toBe('runcast: migrate takes source and target in pairs');
    const refused = await runcast(['watch', world.otherRunId], env);
    expect(refused.stderr).toContain('RUN_NOT_FOUND');
    expect(refused.code).toBe(4);
    expect(refused.stderr).toContain('RUN_NOT_FOUND');
    const badToken = await runcast(['token', 'create', '--project', world.projectId], {
      ...env,
      RUNCAST_TOKEN: 'nonsense',
    });
    expect(badToken.code).toBe(4);
    expect(badToken.stderr).toContain('UNAUTHORIZED');
    const away = await runcast(['user', 'add', 'x', '--role', 'viewer'], {
      ...env,
      RUNCAST_URL: 'http://127.0.0.1:9',
    });
    expect(away.code).toBe(5);
    expect(away.stderr).toMatch(/^runcast: cannot reach http:\/\/127\.0\.0\.1:9/);
  });

  it('adds users and creates API tokens', async () => {
    const admin = {
      ...env,
      RUNCAST_TOKEN: world.admin.token ?? '',
      RUNCAST_NEW_PASSWORD: 'cli-user-password',
    };
    const added = await runcast(['user', 'add', 'cli-user', '--role', 'viewer'], admin);
    expect(added.code).toBe(0);
    expect(added.stdout).toMatch(/^usr_\S+ cli-user \(viewer\)\n$/);
    const login = await world.anonymous.post('/auth/login', {
      username: 'cli-user',
      password: 'cli-user-password',
    });
    expect(login.status).toBe(200);
    const token = await runcast(['token', 'create', '--project', world.projectId, '--name', 'nightly'], env);
    expect(token.code).toBe(0);
    const me = await world.anonymous.as(token.stdout.trim()).get('/auth/me');
    expect(me.body).toMatchObject({ kind: 'token', token: { project_id: world.projectId, name: 'nightly' } });
  });
});
