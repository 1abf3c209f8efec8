import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ADMIN_PASSWORD,
  Api,
  startServer,
  type TestServer,
} from '../../packages/server/src/test-support/server.js';
import { requireBuiltServer } from '../support/server-process.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SHIM = join(ROOT, 'packages/server/bin/runcast.js');

/**
 * The `npx runcast …` commands of the README's sh blocks, as written: continuation lines joined,
 * trailing comments dropped.
 */
function readmeCommands(): string[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const commands: string[] = [];
  for (const block of readme.matchAll(/```sh\n([\s\S]*?)```/g)) {
    const lines = (block[1] ?? '').replace(/\\\n\s*/g, '').split('\n');
    for (const line of lines) {
      if (line.startsWith('npx runcast ')) commands.push(line.replace(/\s+#.*$/, '').trim());
    }
  }
  return commands;
}

/** Runs `command` in bash from the repository's root; the in-process server keeps answering. */
function bash(
  command: string,
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-c', command], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
    });
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      stderr += chunk;
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** A bare repository with one commit on master, and an empty one to mirror it to. */
function gitRepositories(dir: string): { source: string; target: string } {
  const env = {
    ...process.env,
    GIT_AUTHOR_NAME: 't',
    GIT_AUTHOR_EMAIL: 't@e',
    GIT_COMMITTER_NAME: 't',
    GIT_COMMITTER_EMAIL: 't@e',
  };
  const git = (...args: string[]) => execFileSync('git', args, { cwd: dir, env, stdio: 'ignore' });
  git('init', '-q', '-b', 'master', 'work');
  git('-C', 'work', 'commit', '-q', '--allow-empty', '-m', 'first');
  git('clone', '-q', '--bare', 'work', 'source.git');
  git('init', '-q', '--bare', 'target.git');
  return { source: `file://${dir}/source.git`, target: `file://${dir}/target.git` };
}

// After the README's install (`npm ci`), the README's CLI commands run as written from the
// repository's root, with only its placeholders filled in: `npx runcast` must find the bin npm
// linked at install time, before anything was built.
describe("the README's CLI commands", () => {
  let server: TestServer;
  let dir: string;
  let env: Record<string, string>;
  let projectId: string;

  beforeAll(async () => {
    requireBuiltServer();
    if (!existsSync(join(ROOT, 'node_modules/.bin/runcast'))) {
      throw new Error('node_modules/.bin/runcast is missing: npm links it at install, run `npm ci`');
    }
    dir = mkdtempSync(join(tmpdir(), 'runcast-readme-'));
    server = await startServer({ RUNCAST_GIT_ALLOW_LOCAL: '1' });
    const admin = await new Api(server.url).login('admin', ADMIN_PASSWORD);
    // One project: `runcast migrate` without --project picks it.
    projectId = (await admin.post('/projects', { name: 'readme' })).body.project_id;
    env = {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      RUNCAST_URL: server.url,
      RUNCAST_TOKEN: admin.token ?? '',
    };
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('are the ones this test knows how to fill in', () => {
    expect(readmeCommands().map((command) => command.split(' ').slice(2, 4).join(' '))).toEqual([
      'migrate https://gitlab.example/group/api.git',
      'watch run_01J…',
      'watch run_01J…',
      'user add',
      'token create',
    ]);
  });

  it('run as written', async () => {
    const { source, target } = gitRepositories(dir);
    let runId = '';
    const fill = (command: string) =>
      command
        .replace('https://gitlab.example/group/api.git', source)
        .replace('https://github.example/org/api.git', target)
        .replaceAll('run_01J…', runId)
        .replaceAll('prj_…', projectId);
    for (const command of readmeCommands()) {
      const ran = await bash(fill(command), env);
      expect({ command, code: ran.code, stderr: ran.stderr }).toEqual({ command, code: 0, stderr: '' });
      if (command.includes(' migrate ')) {
        runId = ran.stdout.split('\n')[0] ?? '';
        expect(runId).toMatch(/^run_/);
        expect(ran.stdout).toMatch(/COMPLETED in \d+s/);
      }
      if (command.includes(' watch ')) expect(ran.stdout).toContain('COMPLETED');
    }
    expect(execFileSync('git', ['ls-remote', join(dir, 'target.git')]).toString()).toContain(
      'refs/heads/main',
    );
  }, 120_000);

  it('say what to do when the server was not built yet', () => {
    // The committed bin, somewhere without a build next to it.
    const copy = join(dir, 'unbuilt', 'bin');
    mkdirSync(copy, { recursive: true });
    copyFileSync(SHIM, join(copy, 'runcast.js'));
    copyFileSync(join(ROOT, 'packages/server/package.json'), join(dir, 'unbuilt', 'package.json'));
    const ran = spawnSync(process.execPath, [join(copy, 'runcast.js'), 'watch', 'run_x'], {
      encoding: 'utf8',
    });
    expect(ran.status).toBe(1);
    expect(ran.stderr).toContain('npm run build');
  });
});
