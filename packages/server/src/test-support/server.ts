import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { type BuildOptions, buildApp, type Runcast } from '../app.js';
import { type Config, loadConfig } from '../config.js';

export const ADMIN_PASSWORD = 'admin-password-for-tests';

/** A real server on an ephemeral loopback port with a real SQLite file in a temp dir. */
export interface TestServer {
  url: string;
  runcast: Runcast;
  config: Config;
  /** Error-level lines the server logged; a test fails on any it did not expect. */
  errorLogs: string[];
  close(): Promise<void>;
}

/** Starts a server; `env` overrides settings the way the environment would. */
export async function startServer(
  env: Record<string, string> = {},
  options: BuildOptions = {},
): Promise<TestServer> {
  const dataDir = mkdtempSync(join(tmpdir(), 'runcast-test-'));
  const config = loadConfig({
    RUNCAST_DATA_DIR: dataDir,
    RUNCAST_ADMIN_PASSWORD: ADMIN_PASSWORD,
    PORT: '0',
    LOG_LEVEL: 'warn',
    RUNCAST_LOGIN_RATE_LIMIT: '1000',
    ...env,
  });
  const errorLogs: string[] = [];
  const logStream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line && (JSON.parse(line) as { level: number }).level >= 50) errorLogs.push(line);
      }
      done();
    },
  });
  const runcast = await buildApp(config, { announce: () => {}, logStream, ...options });
  await runcast.app.listen({ host: '127.0.0.1', port: 0 });
  const address = runcast.app.server.address();
  if (address === null || typeof address === 'string') throw new Error('server has no TCP address');
  return {
    url: `http://127.0.0.1:${address.port}`,
    runcast,
    config,
    errorLogs,
    async close() {
      await runcast.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** What a request answered: status, parsed JSON body (or text), headers. */
export interface Answer<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

/** A small JSON client for the API, authenticated by bearer token when one is given. */
export class Api {
  constructor(
    readonly url: string,
    readonly token?: string,
  ) {}

  as(token: string | undefined): Api {
    return new Api(this.url, token);
  }

  async request<T = any>(
    method: string,
    path: string,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<Answer<T>> {
    const init: RequestInit = { method, headers: { ...headers } };
    if (this.token) (init.headers as Record<string, string>).authorization = `Bearer ${this.token}`;
    if (body !== undefined) {
      (init.headers as Record<string, string>)['content-type'] ??= 'application/json';
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
    }
    const res = await fetch(`${this.url}/api/v1${path}`, init);
    const text = await res.text();
    let parsed: unknown = text;
    if ((res.headers.get('content-type') ?? '').includes('json') && text) parsed = JSON.parse(text);
    return { status: res.status, body: parsed as T, headers: res.headers };
  }

  get<T = any>(path: string, headers?: Record<string, string>) {
    return this.request<T>('GET', path, undefined, headers);
  }
  post<T = any>(path: string, body?: unknown, headers?: Record<string, string>) {
    return this.request<T>('POST', path, body, headers);
  }
  patch<T = any>(path: string, body?: unknown, headers?: Record<string, string>) {
    return this.request<T>('PATCH', path, body, headers);
  }
  delete<T = any>(path: string) {
    return this.request<T>('DELETE', path);
  }

  /** Logs in and returns an Api carrying the new token. */
  async login(username: string, password: string): Promise<Api> {
    const answer = await this.as(undefined).post('/auth/login', { username, password });
    if (answer.status !== 200)
      throw new Error(`login of ${username} failed: ${answer.status} ${JSON.stringify(answer.body)}`);
    return this.as(answer.body.token);
  }
}

/** A world to test access rules in: admin, project operator, project viewer, outsider, worker token. */
export interface World {
  admin: Api;
  operator: Api;
  viewer: Api;
  outsider: Api;
  worker: Api;
  anonymous: Api;
  projectId: string;
  otherProjectId: string;
  runId: string;
  otherRunId: string;
  userIds: { operator: string; viewer: string; outsider: string };
  tokenId: string;
}

/** Builds the World on a running server. */
export async function makeWorld(url: string): Promise<World> {
  const anonymous = new Api(url);
  const admin = await anonymous.login('admin', ADMIN_PASSWORD);
  const userIds = { operator: '', viewer: '', outsider: '' };
  const apis: Record<string, Api> = {};
  for (const name of ['operator', 'viewer', 'outsider'] as const) {
    const created = await admin.post('/users', {
      username: name,
      password: `${name}-password`,
      role: name === 'viewer' ? 'viewer' : 'operator',
    });
    if (created.status !== 201) throw new Error(`creating ${name} failed: ${JSON.stringify(created.body)}`);
    userIds[name] = created.body.user_id;
    apis[name] = await anonymous.login(name, `${name}-password`);
  }
  const project = await apis.operator!.post('/projects', { name: 'main project' });
  const other = await apis.outsider!.post('/projects', { name: 'other project' });
  await apis.operator!.post(`/projects/${project.body.project_id}/members`, {
    user_id: userIds.viewer,
    role: 'viewer',
  });
  const token = await apis.operator!.post('/tokens', { project_id: project.body.project_id, name: 'worker' });
  const run = await apis.operator!.post('/runs', { project_id: project.body.project_id, kind: 'external' });
  const otherRun = await apis.outsider!.post('/runs', {
    project_id: other.body.project_id,
    kind: 'external',
  });
  return {
    admin,
    operator: apis.operator!,
    viewer: apis.viewer!,
    outsider: apis.outsider!,
    worker: anonymous.as(token.body.token),
    anonymous,
    projectId: project.body.project_id,
    otherProjectId: other.body.project_id,
    runId: run.body.run_id,
    otherRunId: otherRun.body.run_id,
    userIds,
    tokenId: token.body.token_id,
  };
}
