import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  ADMIN_PASSWORD,
  Api,
  startServer,
  type TestServer,
} from '../../packages/server/src/test-support/server.js';
import { Cleanups } from '../support/cleanups.js';
import { emptyBare, fileUrl, lsRemote, makeSourceRepo, randomHex } from '../support/git.js';
import { ended, waitForRun } from '../support/runs.js';

// git-mirror runs name repositories an operator typed in: git must not send the source's token
// to another host, take credentials or options from an address, or read the server's own disk
// unless RUNCAST_GIT_ALLOW_LOCAL says so.

const cleanups = new Cleanups();

afterEach(() => cleanups.run());

interface Served {
  server: TestServer;
  admin: Api;
  projectId: string;
}

async function serve(env: Record<string, string> = {}): Promise<Served> {
  const server = await startServer(env);
  const admin = await new Api(server.url).login('admin', ADMIN_PASSWORD);
  const project = await admin.post('/projects', { name: 'addresses' });
  expect(project.status).toBe(201);
  return { server, admin, projectId: project.body.project_id };
}

async function stopServer(served: Served): Promise<void> {
  await served.server.close();
  expect(served.server.errorLogs).toEqual([]);
}

function postRun(served: Served, config: Record<string, unknown>) {
  return served.admin.post('/runs', { project_id: served.projectId, kind: 'git-mirror', config });
}

/** What one HTTP request to a test origin carried. */
interface Seen {
  method: string;
  url: string;
  authorization: string | undefined;
}

/** An HTTP server on a loopback port of its own (another port is another origin). */
async function listen(
  handle: (request: IncomingMessage) => { status: number; headers?: Record<string, string>; body?: string },
): Promise<{ url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server: Server = createServer((request, response) => {
    seen.push({
      method: request.method ?? '',
      url: request.url ?? '',
      authorization: request.headers.authorization,
    });
    request.resume();
    const answer = handle(request);
    response.writeHead(answer.status, answer.headers).end(answer.body ?? '');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('test origin has no TCP address');
  return { url: `http://127.0.0.1:${address.port}`, seen };
}

/** One pkt-line of git's wire protocol. */
const pktLine = (line: string) => `${(line.length + 4).toString(16).padStart(4, '0')}${line}`;

describe('the source token and redirects', () => {
  it('sends the token to the source origin only: a 302 to another origin gets no Authorization', async () => {
    const token = `SECRET-${randomHex(12)}`;
    // The other origin speaks enough smart HTTP (protocol v2) for git to go on after the
    // redirect: it answers info/refs with a capability advertisement and ls-refs with no refs.
    const other = await listen((request) =>
      request.method === 'GET'
        ? {
            status: 200,
            headers: { 'content-type': 'application/x-git-upload-pack-advertisement' },
            body: `${pktLine('version 2\n')}${pktLine('ls-refs\n')}0000`,
          }
        : { status: 200, headers: { 'content-type': 'application/x-git-upload-pack-result' }, body: '0000' },
    );
    const origin = await listen((request) => ({
      status: 302,
      headers: { location: `${other.url}${(request.url ?? '/').replace('/repo.git/', '/moved.git/')}` },
    }));
    const served = await serve();
    cleanups.push(() => stopServer(served));

    const created = await postRun(served, {
      repositories: [{ source: `${origin.url}/repo.git`, target: `${origin.url}/target.git` }],
      source_token: token,
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const end = await waitForRun(served.admin, created.body.run_id, ended);

    const basic = `Basic ${Buffer.from(`x-access-token:${token}`).toString('base64')}`;
    expect(origin.seen[0]).toMatchObject({ method: 'GET', authorization: basic });
    expect(other.seen.filter((request) => request.authorization !== undefined)).toEqual([]);
    // git stops at the redirect instead of following it.
    expect(other.seen).toEqual([]);
    expect(end.status).toBe('FAILED');
    expect(end.stage).toBe('DISCOVERY');
    expect(end.error?.message).toContain('302');
    expect(JSON.stringify(end)).not.toContain(token);
  }, 60_000);
});

describe('repository addresses at run creation', () => {
  let served: Served;
  const secret = `SECRET-${randomHex(12)}`;

  beforeAll(async () => {
    served = await serve();
  });

  afterAll(async () => {
    await stopServer(served);
  });

  it.each([
    [
      'source',
      `http://user:${secret}@127.0.0.1/repo.git`,
      'must not carry credentials; give the token as source_token',
    ],
    ['source', `https://${secret}@gitlab.example/repo.git`, 'must not carry credentials'],
    ['target', `ssh://git:${secret}@gitlab.example/repo.git`, 'give the token as target_token'],
    ['target', `git:${secret}@gitlab.example:org/repo.git`, 'must not carry credentials'],
    ['source', '--upload-pack=touch /tmp/runcast-pwned', "must not start with '-'"],
    ['target', '-oProxyCommand=touch /tmp/runcast-pwned', "must not start with '-'"],
    ['source', 'ext::sh -c touch% /tmp/runcast-pwned', 'remote helper'],
    ['source', '/var/lib/runcast', 'is a local path'],
    ['target', 'file:///var/lib/runcast', 'uses file://'],
  ])('refuses a %s of %j with 400 INVALID_INPUT', async (end, address, problem) => {
    const repository = {
      source: 'https://gitlab.example/repo.git',
      target: 'https://github.example/repo.git',
    };
    const answer = await postRun(served, { repositories: [repository, { ...repository, [end]: address }] });
    expect(answer.status).toBe(400);
    expect(answer.body).toEqual({
      error: { code: 'INVALID_INPUT', message: expect.stringContaining(problem) },
    });
    expect(answer.body.error.message).toMatch(new RegExp(`^config\\.repositories\\[1\\]\\.${end} `));
    expect(answer.body.error.message).not.toContain(secret);
  });

  it('stores nothing of a refused address: no run, and the secret in no file of the data dir', async () => {
    const answer = await postRun(served, {
      repositories: [
        { source: `https://user:${secret}@gitlab.example/x.git`, target: 'https://h.example/x.git' },
      ],
    });
    expect(answer.status).toBe(400);
    const runs = await served.admin.get(`/runs?project_id=${served.projectId}`);
    expect(runs.body.runs).toEqual([]);
    const dataDir = served.server.config.dataDir;
    for (const name of readdirSync(dataDir).filter((entry) => entry.startsWith('runcast.db'))) {
      expect(readFileSync(join(dataDir, name)).includes(secret), name).toBe(false);
    }
  });
});

describe('local repositories', () => {
  it('are mirrored with RUNCAST_GIT_ALLOW_LOCAL=1, by path and by file:// URL', async () => {
    const base = cleanups.tempDir('runcast-addresses-local-');
    const source = makeSourceRepo(join(base, 'source.git'), { branches: ['develop'], mergeRequests: 0 });
    const byPath = emptyBare(join(base, 'by-path.git'));
    const byUrl = emptyBare(join(base, 'by-url.git'));
    const served = await serve({ RUNCAST_GIT_ALLOW_LOCAL: '1' });
    cleanups.push(() => stopServer(served));

    const created = await postRun(served, {
      repositories: [
        { source: source.dir, target: byPath },
        { source: source.url, target: fileUrl(byUrl) },
      ],
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const end = await waitForRun(served.admin, created.body.run_id, ended);
    expect(end.status, JSON.stringify(end.error)).toBe('COMPLETED');
    for (const target of [byPath, byUrl]) {
      expect(lsRemote(fileUrl(target)).get('refs/heads/develop')).toBe(source.refs.get('refs/heads/develop'));
    }
  }, 60_000);
});
