import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ADMIN_PASSWORD,
  type Answer,
  Api,
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';

// Well-formed ids that name nothing: a foreign id must answer exactly like these.
const MISSING = {
  projectId: 'prj_00000000000000000000000000',
  runId: 'run_00000000000000000000000000',
  tokenId: 'tok_00000000000000000000000000',
  userId: 'usr_00000000000000000000000000',
};

/** The ids an endpoint's path and body are built from. */
type Ids = typeof MISSING;

/** Who sends a request. `reader` is an operator-role user who is only a viewer member of the project. */
type Persona = 'anonymous' | 'forged' | 'outsider' | 'viewer' | 'reader' | 'operator' | 'admin' | 'worker';

interface Outcome {
  status: number;
  /** The error code, for a 4xx. */
  code?: string;
  /** Extra checks on a successful answer. */
  check?: (body: any, ids: Ids) => void;
}

interface Endpoint {
  name: string;
  /** Fresh fixtures for one call (a fresh run to cancel, a fresh token to revoke, ...). */
  prepare?: (ctx: Context) => Promise<Partial<Ids>>;
  call: (api: Api, ids: Ids) => Promise<Answer>;
  /** What each persona gets; anonymous (401) and a forged token (401) are implied for every endpoint. */
  expect: Partial<Record<Persona, Outcome>>;
  /** What the operator gets when every id is well-formed but unknown (like an outsider on real ids). */
  missing?: Outcome;
  /** The call would change ids.runId: after a refusal the run must be untouched. */
  changesRun?: boolean;
}

interface Context {
  world: World;
  reader: Api;
  ids: Ids;
}

const ok = (status: number, check?: Outcome['check']): Outcome => ({ status, ...(check ? { check } : {}) });
const refused = (status: number, code: string): Outcome => ({ status, code });
const UNAUTHORIZED = refused(401, 'UNAUTHORIZED');
const FORBIDDEN = refused(403, 'FORBIDDEN');
const NO_RUN = refused(404, 'RUN_NOT_FOUND');
const NO_PROJECT = refused(404, 'PROJECT_NOT_FOUND');
const NO_TOKEN = refused(404, 'TOKEN_NOT_FOUND');

let counter = 0;
const unique = (prefix: string): string => `${prefix}-${process.pid}-${++counter}`;

/** A fresh run in the main project, created by the operator. */
async function freshRun({ world }: Context): Promise<Partial<Ids>> {
  const run = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
  expect(run.status).toBe(201);
  return { runId: run.body.run_id };
}

/** A fresh user (no membership), created by the admin. */
async function freshUser(world: World): Promise<string> {
  const user = await world.admin.post('/users', {
    username: unique('user'),
    password: 'password-123',
    role: 'operator',
  });
  expect(user.status).toBe(201);
  return user.body.user_id;
}

const ids = (list: { [key: string]: unknown }[], key: string): unknown[] => list.map((item) => item[key]);

const ENDPOINTS: Endpoint[] = [
  {
    name: 'GET /auth/me',
    call: (api) => api.get('/auth/me'),
    expect: {
      viewer: ok(200, (body) =>
        expect(body).toMatchObject({ kind: 'user', user: { username: 'viewer' }, token: null }),
      ),
      outsider: ok(200, (body) =>
        expect(body).toMatchObject({ kind: 'user', user: { username: 'outsider' } }),
      ),
      worker: ok(200, (body, { projectId }) =>
        expect(body).toMatchObject({ kind: 'token', user: null, token: { project_id: projectId } }),
      ),
    },
  },
  {
    name: 'POST /users',
    call: (api) => api.post('/users', { username: unique('new'), password: 'password-123', role: 'viewer' }),
    expect: {
      admin: ok(201, (body) =>
        expect(body).toMatchObject({ user_id: expect.stringMatching(/^usr_/), role: 'viewer' }),
      ),
      operator: FORBIDDEN,
      viewer: FORBIDDEN,
      outsider: FORBIDDEN,
      worker: FORBIDDEN,
    },
  },
  {
    name: 'GET /users',
    call: (api) => api.get('/users'),
    expect: {
      admin: ok(200, (body) =>
        expect(ids(body.users, 'username')).toEqual(expect.arrayContaining(['admin', 'viewer'])),
      ),
      operator: FORBIDDEN,
      viewer: FORBIDDEN,
      worker: FORBIDDEN,
    },
  },
  {
    name: 'POST /tokens',
    call: (api, { projectId }) => api.post('/tokens', { project_id: projectId, name: unique('token') }),
    expect: {
      operator: ok(201, (body, { projectId }) =>
        expect(body).toMatchObject({
          token_id: expect.stringMatching(/^tok_/),
          project_id: projectId,
          token: expect.any(String),
        }),
      ),
      admin: ok(201),
      outsider: NO_PROJECT,
      viewer: FORBIDDEN,
      reader: FORBIDDEN,
      worker: FORBIDDEN,
    },
    missing: NO_PROJECT,
  },
  {
    name: 'GET /tokens',
    call: (api) => api.get('/tokens'),
    expect: {
      operator: ok(200, (body, { tokenId }) => expect(ids(body.tokens, 'token_id')).toContain(tokenId)),
      admin: ok(200, (body, { tokenId }) => expect(ids(body.tokens, 'token_id')).toContain(tokenId)),
      outsider: ok(200, (body, { tokenId }) => expect(ids(body.tokens, 'token_id')).not.toContain(tokenId)),
      viewer: ok(200, (body, { tokenId }) => expect(ids(body.tokens, 'token_id')).not.toContain(tokenId)),
    },
  },
  {
    name: 'DELETE /tokens/{token_id}',
    prepare: async ({ world }) => {
      const token = await world.operator.post('/tokens', {
        project_id: world.projectId,
        name: unique('doomed'),
      });
      expect(token.status).toBe(201);
      return { tokenId: token.body.token_id };
    },
    call: (api, { tokenId }) => api.delete(`/tokens/${tokenId}`),
    expect: {
      operator: ok(204),
      admin: ok(204),
      outsider: NO_TOKEN,
      viewer: NO_TOKEN,
      reader: NO_TOKEN,
      worker: NO_TOKEN,
    },
    missing: NO_TOKEN,
  },
  {
    name: 'POST /projects',
    call: (api) => api.post('/projects', { name: unique('project') }),
    expect: {
      operator: ok(201, (body) =>
        expect(body).toMatchObject({ project_id: expect.stringMatching(/^prj_/), role: 'operator' }),
      ),
      outsider: ok(201),
      viewer: FORBIDDEN,
      worker: FORBIDDEN,
    },
  },
  {
    name: 'GET /projects',
    call: (api) => api.get('/projects'),
    expect: {
      viewer: ok(200, (body, { projectId }) =>
        expect(body.projects).toContainEqual(
          expect.objectContaining({ project_id: projectId, role: 'viewer' }),
        ),
      ),
      operator: ok(200, (body, { projectId }) =>
        expect(body.projects).toContainEqual(
          expect.objectContaining({ project_id: projectId, role: 'operator' }),
        ),
      ),
      outsider: ok(200, (body, { projectId }) =>
        expect(ids(body.projects, 'project_id')).not.toContain(projectId),
      ),
      worker: ok(200, (body, { projectId }) => expect(ids(body.projects, 'project_id')).toEqual([projectId])),
    },
  },
  {
    name: 'GET /projects/{project_id}',
    call: (api, { projectId }) => api.get(`/projects/${projectId}`),
    expect: {
      viewer: ok(200, (body, { projectId }) =>
        expect(body).toMatchObject({ project_id: projectId, role: 'viewer' }),
      ),
      reader: ok(200, (body) => expect(body.role).toBe('viewer')),
      operator: ok(200, (body) => expect(body.role).toBe('operator')),
      admin: ok(200),
      worker: ok(200),
      outsider: NO_PROJECT,
    },
    missing: NO_PROJECT,
  },
  {
    name: 'GET /projects/{project_id}/members',
    call: (api, { projectId }) => api.get(`/projects/${projectId}/members`),
    expect: {
      viewer: ok(200, (body) =>
        expect(ids(body.members, 'username')).toEqual(expect.arrayContaining(['operator', 'viewer'])),
      ),
      operator: ok(200),
      outsider: NO_PROJECT,
    },
    missing: NO_PROJECT,
  },
  {
    name: 'POST /projects/{project_id}/members',
    prepare: async ({ world }) => ({ userId: await freshUser(world) }),
    call: (api, { projectId, userId }) =>
      api.post(`/projects/${projectId}/members`, { user_id: userId, role: 'viewer' }),
    expect: {
      operator: ok(201, (body, { projectId, userId }) =>
        expect(body).toMatchObject({ project_id: projectId, user_id: userId, role: 'viewer' }),
      ),
      admin: ok(201),
      outsider: NO_PROJECT,
      viewer: FORBIDDEN,
      reader: FORBIDDEN,
      worker: FORBIDDEN,
    },
    missing: NO_PROJECT,
  },
  {
    name: 'DELETE /projects/{project_id}/members/{user_id}',
    prepare: async ({ world }) => {
      const userId = await freshUser(world);
      const added = await world.operator.post(`/projects/${world.projectId}/members`, {
        user_id: userId,
        role: 'viewer',
      });
      expect(added.status).toBe(201);
      return { userId };
    },
    call: (api, { projectId, userId }) => api.delete(`/projects/${projectId}/members/${userId}`),
    expect: {
      operator: ok(204),
      admin: ok(204),
      outsider: NO_PROJECT,
      viewer: FORBIDDEN,
      reader: FORBIDDEN,
      worker: FORBIDDEN,
    },
    missing: NO_PROJECT,
  },
  {
    name: 'POST /runs',
    call: (api, { projectId }) => api.post('/runs', { project_id: projectId, kind: 'external' }),
    expect: {
      operator: ok(201, (body, { projectId }) =>
        expect(body).toMatchObject({
          run_id: expect.stringMatching(/^run_/),
          project_id: projectId,
          status: 'CREATED',
          seq: 0,
        }),
      ),
      admin: ok(201),
      outsider: NO_PROJECT,
      viewer: FORBIDDEN,
      reader: FORBIDDEN,
    },
    missing: NO_PROJECT,
  },
  {
    name: 'GET /runs',
    call: (api) => api.get('/runs'),
    expect: {
      viewer: ok(200, (body, { runId }) => expect(ids(body.runs, 'run_id')).toContain(runId)),
      worker: ok(200, (body, { runId }) => expect(ids(body.runs, 'run_id')).toContain(runId)),
      outsider: ok(200, (body, { runId }) => expect(ids(body.runs, 'run_id')).not.toContain(runId)),
    },
  },
  {
    name: 'GET /runs?project_id={project_id}',
    call: (api, { projectId }) => api.get(`/runs?project_id=${projectId}`),
    expect: {
      viewer: ok(200, (body, { runId }) => expect(ids(body.runs, 'run_id')).toContain(runId)),
      worker: ok(200),
      outsider: NO_PROJECT,
    },
    missing: NO_PROJECT,
  },
  {
    name: 'GET /runs/{run_id}',
    call: (api, { runId }) => api.get(`/runs/${runId}`),
    expect: {
      viewer: ok(200, (body, { runId }) => expect(body.run_id).toBe(runId)),
      reader: ok(200),
      worker: ok(200),
      admin: ok(200),
      outsider: NO_RUN,
    },
    missing: NO_RUN,
  },
  {
    name: 'POST /runs/{run_id}/cancel',
    prepare: freshRun,
    call: (api, { runId }) => api.post(`/runs/${runId}/cancel`),
    expect: {
      operator: ok(200, (body, { runId }) =>
        expect(body).toMatchObject({ run_id: runId, status: 'CANCELED' }),
      ),
      admin: ok(200),
      worker: ok(200),
      outsider: NO_RUN,
      viewer: FORBIDDEN,
      reader: FORBIDDEN,
    },
    missing: NO_RUN,
    changesRun: true,
  },
  {
    name: 'POST /runs/{run_id}/retry',
    prepare: async (ctx) => {
      const { runId } = await freshRun(ctx);
      expect((await ctx.world.operator.post(`/runs/${runId}/cancel`)).status).toBe(200);
      return { runId: runId! };
    },
    call: (api, { runId }) => api.post(`/runs/${runId}/retry`),
    expect: {
      operator: ok(201, (body, { runId }) => {
        expect(body).toMatchObject({ run_id: expect.stringMatching(/^run_/), status: 'CREATED' });
        expect(body.run_id).not.toBe(runId);
      }),
      admin: ok(201),
      outsider: NO_RUN,
      viewer: FORBIDDEN,
      reader: FORBIDDEN,
    },
    missing: NO_RUN,
  },
  {
    name: 'GET /runs/{run_id}/progress',
    call: (api, { runId }) => api.get(`/runs/${runId}/progress`),
    expect: {
      viewer: ok(200, (body, { runId }) => expect(body.run_id).toBe(runId)),
      reader: ok(200),
      worker: ok(200),
      outsider: NO_RUN,
    },
    missing: NO_RUN,
  },
  {
    name: 'PATCH /runs/{run_id}/progress',
    prepare: freshRun,
    call: (api, { runId }) => api.patch(`/runs/${runId}/progress`, { status: 'RUNNING', stage: 'EXPORT' }),
    expect: {
      operator: ok(200, (body) => expect(body).toMatchObject({ status: 'RUNNING', stage: 'EXPORT', seq: 1 })),
      admin: ok(200),
      worker: ok(200),
      outsider: NO_RUN,
      viewer: FORBIDDEN,
      reader: FORBIDDEN,
    },
    missing: NO_RUN,
    changesRun: true,
  },
  {
    name: 'POST /runs/{run_id}/logs',
    prepare: freshRun,
    call: (api, { runId }) => api.post(`/runs/${runId}/logs`, { level: 'info', message: 'hello' }),
    expect: {
      operator: ok(201, (body, { runId }) =>
        expect(body).toEqual({ run_id: runId, first_seq: 1, last_seq: 1 }),
      ),
      admin: ok(201),
      worker: ok(201),
      outsider: NO_RUN,
      viewer: FORBIDDEN,
      reader: FORBIDDEN,
    },
    missing: NO_RUN,
    changesRun: true,
  },
  {
    name: 'GET /runs/{run_id}/events',
    call: (api, { runId }) => api.get(`/runs/${runId}/events`),
    expect: {
      viewer: ok(200, (body, { runId }) =>
        expect(body).toMatchObject({ run_id: runId, events: expect.any(Array) }),
      ),
      reader: ok(200),
      worker: ok(200),
      outsider: NO_RUN,
    },
    missing: NO_RUN,
  },
];

interface Case {
  endpoint: string;
  who: string;
  persona: Persona;
  useMissingIds: boolean;
  outcome: Outcome;
}

const CASES: Case[] = ENDPOINTS.flatMap((endpoint) => {
  const expected: [Persona, Outcome][] = [
    ['anonymous', UNAUTHORIZED],
    ['forged', UNAUTHORIZED],
    ...(Object.entries(endpoint.expect) as [Persona, Outcome][]),
  ];
  const cases: Case[] = expected.map(([persona, outcome]) => ({
    endpoint: endpoint.name,
    who: persona,
    persona,
    useMissingIds: false,
    outcome,
  }));
  if (endpoint.missing) {
    cases.push({
      endpoint: endpoint.name,
      who: 'operator on unknown ids',
      persona: 'operator',
      useMissingIds: true,
      outcome: endpoint.missing,
    });
  }
  return cases;
});

/** The contract's error body, and nothing else. */
function expectErrorBody(answer: Answer, status: number, code: string): void {
  expect({ status: answer.status, body: answer.body }).toEqual({
    status,
    body: { error: { code, message: expect.any(String) } },
  });
  expect(answer.headers.get('content-type')).toMatch(/^application\/json/);
}

const RUN_ENDPOINTS = ENDPOINTS.filter((endpoint) => endpoint.name.includes('{run_id}'));

describe('access control on a real server', () => {
  let server: TestServer;
  let world: World;
  let reader: Api;

  beforeAll(async () => {
    server = await startServer();
    world = await makeWorld(server.url);
    const created = await world.admin.post('/users', {
      username: 'reader',
      password: 'reader-password',
      role: 'operator',
    });
    expect(created.status).toBe(201);
    const added = await world.operator.post(`/projects/${world.projectId}/members`, {
      user_id: created.body.user_id,
      role: 'viewer',
    });
    expect(added.status).toBe(201);
    reader = await world.anonymous.login('reader', 'reader-password');
  });

  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  const context = (): Context => ({
    world,
    reader,
    ids: {
      projectId: world.projectId,
      runId: world.runId,
      tokenId: world.tokenId,
      userId: world.userIds.viewer,
    },
  });

  const apiOf = (persona: Persona): Api => {
    switch (persona) {
      case 'forged':
        return world.anonymous.as('forged.not-a-real-token');
      case 'reader':
        return reader;
      default:
        return world[persona];
    }
  };

  describe('every endpoint under /api/v1', () => {
    it.each(CASES)('$endpoint as $who answers $outcome.status $outcome.code', async (c) => {
      const endpoint = ENDPOINTS.find((e) => e.name === c.endpoint)!;
      const ctx = context();
      const fixture = { ...ctx.ids, ...(endpoint.prepare ? await endpoint.prepare(ctx) : {}) };
      const target = c.useMissingIds ? MISSING : fixture;
      const before = endpoint.changesRun ? await world.admin.get(`/runs/${fixture.runId}`) : undefined;

      const answer = await endpoint.call(apiOf(c.persona), target);

      if (c.outcome.code !== undefined) {
        expectErrorBody(answer, c.outcome.status, c.outcome.code);
        if (before) {
          const after = await world.admin.get(`/runs/${fixture.runId}`);
          expect(after.body).toEqual(before.body);
        }
      } else {
        expect(answer.status, JSON.stringify(answer.body)).toBe(c.outcome.status);
        c.outcome.check?.(answer.body, target);
      }
    });
  });

  describe('a run of another project', () => {
    it.each(RUN_ENDPOINTS.map((e) => e.name))(
      '%s: a foreign run id answers like an unknown one',
      async (name) => {
        const endpoint = RUN_ENDPOINTS.find((e) => e.name === name)!;
        const base = context().ids;
        const foreign = await endpoint.call(world.operator, { ...base, runId: world.otherRunId });
        const unknown = await endpoint.call(world.operator, { ...base, runId: MISSING.runId });
        const strip = (answer: Answer, runId: string) => ({
          status: answer.status,
          body: JSON.parse(JSON.stringify(answer.body).replaceAll(runId, '<run_id>')),
        });
        expect(strip(foreign, world.otherRunId)).toEqual(strip(unknown, MISSING.runId));
        expectErrorBody(foreign, 404, 'RUN_NOT_FOUND');
      },
    );

    it('is left untouched by the refused writes', async () => {
      const before = await world.outsider.get(`/runs/${world.otherRunId}`);
      expect(before.status).toBe(200);
      await world.operator.patch(`/runs/${world.otherRunId}/progress`, { status: 'RUNNING' });
      await world.operator.post(`/runs/${world.otherRunId}/logs`, { level: 'info', message: 'x' });
      await world.operator.post(`/runs/${world.otherRunId}/cancel`);
      await world.worker.patch(`/runs/${world.otherRunId}/progress`, { status: 'RUNNING' });
      const after = await world.outsider.get(`/runs/${world.otherRunId}`);
      expect(after.body).toEqual(before.body);
      expect(after.body).toMatchObject({ status: 'CREATED', seq: 0 });
    });
  });

  describe('a worker API token', () => {
    it('reports progress and logs on its own project’s runs', async () => {
      const run = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
      const patched = await world.worker.patch(`/runs/${run.body.run_id}/progress`, {
        status: 'RUNNING',
        progress: { percentage: 10 },
      });
      expect(patched.status).toBe(200);
      expect(patched.body).toMatchObject({ status: 'RUNNING', seq: 1, progress: { percentage: 10 } });
      const logged = await world.worker.post(`/runs/${run.body.run_id}/logs`, {
        entries: [
          { level: 'info', message: 'one' },
          { level: 'warn', message: 'two' },
        ],
      });
      expect(logged.status).toBe(201);
      expect(logged.body).toEqual({ run_id: run.body.run_id, first_seq: 2, last_seq: 3 });
      const seen = await world.viewer.get(`/runs/${run.body.run_id}/events`);
      expect(seen.body.events.map((e: any) => e.log?.message).filter(Boolean)).toEqual(['one', 'two']);
    });

    it('gets 404 on the other project’s run, which stays unchanged', async () => {
      const before = await world.outsider.get(`/runs/${world.otherRunId}`);
      const patched = await world.worker.patch(`/runs/${world.otherRunId}/progress`, { status: 'RUNNING' });
      expectErrorBody(patched, 404, 'RUN_NOT_FOUND');
      const logged = await world.worker.post(`/runs/${world.otherRunId}/logs`, {
        level: 'info',
        message: 'x',
      });
      expectErrorBody(logged, 404, 'RUN_NOT_FOUND');
      const read = await world.worker.get(`/runs/${world.otherRunId}/progress`);
      expectErrorBody(read, 404, 'RUN_NOT_FOUND');
      const after = await world.outsider.get(`/runs/${world.otherRunId}`);
      expect(after.body).toEqual(before.body);
    });

    it('cannot create users or tokens', async () => {
      const user = await world.worker.post('/users', {
        username: unique('w'),
        password: 'password-123',
        role: 'admin',
      });
      expectErrorBody(user, 403, 'FORBIDDEN');
      const token = await world.worker.post('/tokens', { project_id: world.projectId, name: 'child' });
      expectErrorBody(token, 403, 'FORBIDDEN');
      const users = await world.admin.get('/users');
      expect(ids(users.body.users, 'username').filter((name) => String(name).startsWith('w-'))).toEqual([]);
    });

    it('is refused with 401 once revoked', async () => {
      const created = await world.operator.post('/tokens', {
        project_id: world.projectId,
        name: 'short-lived',
      });
      expect(created.status).toBe(201);
      const worker = world.anonymous.as(created.body.token);
      expect((await worker.patch(`/runs/${world.runId}/progress`, { stage: 'EXPORT' })).status).toBe(200);

      expect((await world.operator.delete(`/tokens/${created.body.token_id}`)).status).toBe(204);

      expectErrorBody(await worker.get('/auth/me'), 401, 'UNAUTHORIZED');
      expectErrorBody(
        await worker.patch(`/runs/${world.runId}/progress`, { stage: 'PLAN' }),
        401,
        'UNAUTHORIZED',
      );
      expectErrorBody(
        await worker.post(`/runs/${world.runId}/logs`, { level: 'info', message: 'x' }),
        401,
        'UNAUTHORIZED',
      );
      const listed = await world.operator.get('/tokens');
      expect(listed.body.tokens).toContainEqual(
        expect.objectContaining({ token_id: created.body.token_id, revoked_at: expect.any(String) }),
      );
    });
  });

  describe('error bodies', () => {
    it('are exactly {error: {code, message}} for every kind of refusal', async () => {
      const run = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
      const runId = run.body.run_id;
      expectErrorBody(await world.anonymous.get(`/runs/${runId}`), 401, 'UNAUTHORIZED');
      expectErrorBody(await world.viewer.post(`/runs/${runId}/cancel`), 403, 'FORBIDDEN');
      expectErrorBody(await world.outsider.get(`/runs/${runId}`), 404, 'RUN_NOT_FOUND');
      expectErrorBody(
        await world.operator.patch(`/runs/${runId}/progress`, { colour: 'red' }),
        400,
        'INVALID_INPUT',
      );
      expectErrorBody(
        await world.operator.patch(`/runs/${runId}/progress`, '{"status":'),
        400,
        'INVALID_JSON',
      );
      expect((await world.operator.post(`/runs/${runId}/cancel`)).status).toBe(200);
      expectErrorBody(await world.operator.post(`/runs/${runId}/cancel`), 409, 'RUN_TERMINAL');
      expectErrorBody(await world.operator.get('/no-such-thing'), 404, 'NOT_FOUND');
    });
  });

  describe('without credentials', () => {
    // 401 comes first: an anonymous caller learns nothing about what input a route would take.
    it.each([
      ['POST', '/runs', { bogus: 1 }],
      ['PATCH', `/runs/${MISSING.runId}/progress`, { status: 'NOPE' }],
      ['GET', '/runs/not-a-run-id', undefined],
    ])('%s %s with invalid input is refused with 401', async (method, path, body) => {
      expectErrorBody(await world.anonymous.request(method, path, body), 401, 'UNAUTHORIZED');
    });
  });

  describe('credentials in the URL', () => {
    it.each([
      ['/auth/me?token={user}'],
      ['/auth/me?access_token={user}'],
      ['/runs/{run}?token={user}'],
      ['/runs/{run}?access_token={user}'],
      ['/runs?access_token={user}'],
      ['/runs/{run}/progress?token={user}'],
      ['/runs/{run}/progress?access_token={worker}'],
      ['/runs/{run}/events?token={worker}'],
    ])('GET %s is refused with 401', async (template) => {
      const path = template
        .replace('{run}', world.runId)
        .replace('{user}', encodeURIComponent(world.viewer.token!))
        .replace('{worker}', encodeURIComponent(world.worker.token!));
      expectErrorBody(await world.anonymous.get(path), 401, 'UNAUTHORIZED');
    });

    it('PATCH with ?token= is refused with 401 and changes nothing', async () => {
      const before = await world.admin.get(`/runs/${world.runId}`);
      const answer = await world.anonymous.patch(
        `/runs/${world.runId}/progress?token=${encodeURIComponent(world.worker.token!)}`,
        { current_stage: 'from the URL' },
      );
      expectErrorBody(answer, 401, 'UNAUTHORIZED');
      expect((await world.admin.get(`/runs/${world.runId}`)).body).toEqual(before.body);
    });
  });

  describe('cookie authentication', () => {
    let cookie: string;

    beforeAll(async () => {
      const res = await fetch(`${server.url}/api/v1/auth/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ username: 'operator', password: 'operator-password' }),
      });
      expect(res.status).toBe(200);
      const session = res.headers.getSetCookie().find((line) => line.startsWith('runcast_session='));
      expect(session).toBeDefined();
      expect(session).toMatch(/;\s*HttpOnly/i);
      expect(session).toMatch(/;\s*SameSite=Strict/i);
      cookie = session!.split(';')[0]!;
    });

    it('authenticates a GET', async () => {
      const me = await world.anonymous.get('/auth/me', { cookie });
      expect(me.status).toBe(200);
      expect(me.body).toMatchObject({ kind: 'user', user: { username: 'operator' } });
      const run = await world.anonymous.get(`/runs/${world.runId}`, { cookie });
      expect(run.status).toBe(200);
    });

    it('refuses a state change from a foreign Origin with 403 ORIGIN_MISMATCH, leaving the run unchanged', async () => {
      const { runId } = (await freshRun(context())) as Ids;
      const before = await world.operator.get(`/runs/${runId}`);
      const answer = await world.anonymous.patch(
        `/runs/${runId}/progress`,
        { status: 'RUNNING' },
        { cookie, origin: 'http://evil.example' },
      );
      expectErrorBody(answer, 403, 'ORIGIN_MISMATCH');
      const logs = await world.anonymous.post(
        `/runs/${runId}/logs`,
        { level: 'info', message: 'x' },
        { cookie, origin: 'http://evil.example' },
      );
      expectErrorBody(logs, 403, 'ORIGIN_MISMATCH');
      const after = await world.operator.get(`/runs/${runId}`);
      expect(after.body).toEqual(before.body);
      expect(after.body).toMatchObject({ status: 'CREATED', seq: 0 });
    });

    it('refuses a state change without an Origin', async () => {
      const { runId } = (await freshRun(context())) as Ids;
      const answer = await world.anonymous.patch(
        `/runs/${runId}/progress`,
        { status: 'RUNNING' },
        { cookie },
      );
      expectErrorBody(answer, 403, 'ORIGIN_MISMATCH');
      expect((await world.operator.get(`/runs/${runId}`)).body).toMatchObject({ status: 'CREATED', seq: 0 });
    });

    it('accepts a state change from the server’s own Origin', async () => {
      const { runId } = (await freshRun(context())) as Ids;
      const answer = await world.anonymous.patch(
        `/runs/${runId}/progress`,
        { status: 'RUNNING' },
        { cookie, origin: server.url },
      );
      expect(answer.status).toBe(200);
      expect(answer.body).toMatchObject({ run_id: runId, status: 'RUNNING', seq: 1 });
    });

    it('refuses a login posted from a foreign Origin', async () => {
      const answer = await world.anonymous.post(
        '/auth/login',
        { username: 'operator', password: 'operator-password' },
        { origin: 'http://evil.example' },
      );
      expectErrorBody(answer, 403, 'ORIGIN_MISMATCH');
    });
  });

  describe('changes to access take effect on the next request', () => {
    it('a member removed from the project no longer sees its runs', async () => {
      const userId = await freshUser(world);
      const member = await world.anonymous.login(await usernameOf(userId), 'password-123');
      const added = await world.operator.post(`/projects/${world.projectId}/members`, {
        user_id: userId,
        role: 'viewer',
      });
      expect(added.status).toBe(201);
      expect((await member.get(`/runs/${world.runId}/progress`)).status).toBe(200);

      expect((await world.operator.delete(`/projects/${world.projectId}/members/${userId}`)).status).toBe(
        204,
      );

      expectErrorBody(await member.get(`/runs/${world.runId}/progress`), 404, 'RUN_NOT_FOUND');
      expectErrorBody(await member.get(`/projects/${world.projectId}`), 404, 'PROJECT_NOT_FOUND');
      expectErrorBody(await member.get(`/runs?project_id=${world.projectId}`), 404, 'PROJECT_NOT_FOUND');
    });

    it('a member made a viewer can no longer write, and made an operator again can', async () => {
      const userId = await freshUser(world);
      const member = await world.anonymous.login(await usernameOf(userId), 'password-123');
      const setRole = async (role: string) =>
        expect(
          (await world.operator.post(`/projects/${world.projectId}/members`, { user_id: userId, role }))
            .status,
        ).toBe(201);
      await setRole('operator');
      const run = await member.post('/runs', { project_id: world.projectId, kind: 'external' });
      expect(run.status).toBe(201);
      const runId = run.body.run_id;
      expect((await member.patch(`/runs/${runId}/progress`, { status: 'RUNNING' })).status).toBe(200);

      await setRole('viewer');
      expectErrorBody(await member.patch(`/runs/${runId}/progress`, { stage: 'PLAN' }), 403, 'FORBIDDEN');
      expect((await member.get(`/runs/${runId}/progress`)).body).toMatchObject({ seq: 1, stage: null });

      await setRole('operator');
      expect((await member.patch(`/runs/${runId}/progress`, { stage: 'PLAN' })).body).toMatchObject({
        seq: 2,
        stage: 'PLAN',
      });
    });

    it('a changed password ends the sessions that were in use', async () => {
      const userId = await freshUser(world);
      const username = await usernameOf(userId);
      const first = await world.anonymous.login(username, 'password-123');
      const second = await world.anonymous.login(username, 'password-123');
      expect((await first.get('/auth/me')).status).toBe(200);
      expect((await second.get('/auth/me')).status).toBe(200);

      const changed = await first.post('/auth/password', {
        current_password: 'password-123',
        new_password: 'password-456',
      });
      expect(changed.status).toBe(204);

      expectErrorBody(await first.get('/auth/me'), 401, 'UNAUTHORIZED');
      expectErrorBody(await second.get(`/runs/${world.runId}`), 401, 'UNAUTHORIZED');
      expect((await (await world.anonymous.login(username, 'password-456')).get('/auth/me')).status).toBe(
        200,
      );
    });

    async function usernameOf(userId: string): Promise<string> {
      const users = await world.admin.get('/users');
      const user = users.body.users.find((u: { user_id: string }) => u.user_id === userId);
      return user.username;
    }
  });

  describe('logout', () => {
    it('ends the session: the same bearer token is then refused with 401', async () => {
      const session = await world.anonymous.login('viewer', 'viewer-password');
      expect((await session.get('/auth/me')).status).toBe(200);
      const out = await session.post('/auth/logout');
      expect(out.status).toBe(204);
      expectErrorBody(await session.get('/auth/me'), 401, 'UNAUTHORIZED');
      expectErrorBody(await session.get(`/runs/${world.runId}`), 401, 'UNAUTHORIZED');
      // Other sessions of the same user live on.
      expect((await world.viewer.get('/auth/me')).status).toBe(200);
    });
  });

  describe('login failures', () => {
    it('answer a wrong password and an unknown user alike', async () => {
      const wrongPassword = await world.anonymous.post('/auth/login', {
        username: 'admin',
        password: 'not-the-password',
      });
      const unknownUser = await world.anonymous.post('/auth/login', {
        username: 'nobody-here',
        password: 'whatever-1',
      });
      expectErrorBody(wrongPassword, 401, 'UNAUTHORIZED');
      expect(unknownUser.status).toBe(wrongPassword.status);
      expect(unknownUser.body).toEqual(wrongPassword.body);
      expect(wrongPassword.headers.get('set-cookie')).toBeNull();
    });
  });
});

describe('login rate limit', () => {
  let server: TestServer;
  let anonymous: Api;

  beforeAll(async () => {
    server = await startServer({ RUNCAST_LOGIN_RATE_LIMIT: '3' });
    anonymous = new Api(server.url);
  });

  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  it('answers the 4th attempt within a minute with 429 and retry-after', async () => {
    for (let attempt = 1; attempt <= 3; attempt++) {
      const answer = await anonymous.post('/auth/login', { username: 'admin', password: `wrong-${attempt}` });
      expectErrorBody(answer, 401, 'UNAUTHORIZED');
    }
    // Even the right password is refused now.
    const limited = await anonymous.post('/auth/login', { username: 'admin', password: ADMIN_PASSWORD });
    expectErrorBody(limited, 429, 'RATE_LIMITED');
    const retryAfter = Number(limited.headers.get('retry-after'));
    expect(Number.isInteger(retryAfter)).toBe(true);
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(limited.headers.get('set-cookie')).toBeNull();
  });
});
