import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Answer,
  type Api,
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';

// What a polling client sees: ETag / If-None-Match, `?since=` with the missed log events,
// `?wait=` long-polls, the events pages, and the run list.

const PENDING = Symbol('pending');

/**
 * Whether `request` is still unanswered once a short timer has fired. It says nothing about how
 * long the server takes; it only lets a test check that a long-poll has not answered yet.
 */
async function stillPending<T>(request: Promise<T>): Promise<boolean> {
  const tick = new Promise<typeof PENDING>((resolve) => setTimeout(() => resolve(PENDING), 250));
  return (await Promise.race([request, tick])) === PENDING;
}

async function newRun(api: Api, projectId: string): Promise<string> {
  const created = await api.post('/runs', { project_id: projectId, kind: 'external' });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  return created.body.run_id;
}

async function patch(api: Api, runId: string, body: unknown): Promise<Answer> {
  const answer = await api.patch(`/runs/${runId}/progress`, body);
  expect(answer.status, JSON.stringify(answer.body)).toBe(200);
  return answer;
}

/** Posts `count` log lines one request each; answers their seqs. */
async function postLogs(api: Api, runId: string, count: number, prefix = 'line'): Promise<number[]> {
  const seqs: number[] = [];
  for (let i = 1; i <= count; i++) {
    const answer = await api.post(`/runs/${runId}/logs`, { level: 'info', message: `${prefix} ${i}` });
    expect(answer.status, JSON.stringify(answer.body)).toBe(201);
    expect(answer.body.first_seq).toBe(answer.body.last_seq);
    seqs.push(answer.body.first_seq);
  }
  return seqs;
}

const messages = (events: { log: { message: string } }[]) => events.map((event) => event.log.message);
const seqsOf = (events: { seq: number }[]) => events.map((event) => event.seq);

describe('progress polling', () => {
  let server: TestServer;
  let world: World;
  beforeAll(async () => {
    server = await startServer();
    world = await makeWorld(server.url);
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  describe('ETag and If-None-Match', () => {
    it('tags the snapshot with "<seq>" and the tag follows every change', async () => {
      const runId = await newRun(world.operator, world.projectId);
      const fresh = await world.viewer.get(`/runs/${runId}/progress`);
      expect(fresh.status).toBe(200);
      expect(fresh.body).toMatchObject({ run_id: runId, status: 'CREATED', seq: 0 });
      expect(fresh.headers.get('etag')).toBe('"0"');

      const patched = await patch(world.worker, runId, { status: 'RUNNING', progress: { percentage: 10 } });
      expect(patched.headers.get('etag')).toBe('"1"');
      const after = await world.viewer.get(`/runs/${runId}/progress`);
      expect(after.headers.get('etag')).toBe('"1"');
      expect(after.body).toMatchObject({ status: 'RUNNING', progress: { percentage: 10 }, seq: 1 });

      await postLogs(world.worker, runId, 2);
      const logged = await world.viewer.get(`/runs/${runId}/progress`);
      expect(logged.headers.get('etag')).toBe('"3"');
      expect(logged.body.seq).toBe(3);
      expect((await world.viewer.get(`/runs/${runId}`)).headers.get('etag')).toBe('"3"');
    });

    it('answers 304 with an empty body to If-None-Match naming the current seq', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING', stage: 'EXPORT' });
      for (const tag of ['"1"', 'W/"1"']) {
        const answer = await world.viewer.get(`/runs/${runId}/progress`, { 'if-none-match': tag });
        expect(answer.status).toBe(304);
        expect(answer.body).toBe('');
        expect(answer.headers.get('etag')).toBe('"1"');
      }
    });

    it('answers 200 with the whole snapshot to If-None-Match naming an older or foreign seq', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING' });
      await patch(world.worker, runId, {
        stage: 'APPLY',
        progress: { percentage: 55, message: 'Writing objects' },
      });
      for (const tag of ['"1"', '"0"', '"99"', '*', 'garbage']) {
        const answer = await world.viewer.get(`/runs/${runId}/progress`, { 'if-none-match': tag });
        expect(answer.status, tag).toBe(200);
        expect(answer.headers.get('etag')).toBe('"2"');
        expect(answer.body).toMatchObject({
          run_id: runId,
          status: 'RUNNING',
          stage: 'APPLY',
          progress: { percentage: 55, message: 'Writing objects' },
          seq: 2,
        });
        expect(answer.body).not.toHaveProperty('events');
      }
    });

    it('does not answer 304 to someone who may not see the run', async () => {
      const answer = await world.outsider.get(`/runs/${world.runId}/progress`, { 'if-none-match': '"0"' });
      expect(answer.status).toBe(404);
      expect(answer.body.error.code).toBe('RUN_NOT_FOUND');
      expect(answer.headers.get('etag')).toBeNull();
    });
  });

  describe('a poll answered from memory', () => {
    /** Polls answered 304 before routing, as the server counts them. */
    async function fromMemory(): Promise<number> {
      const res = await fetch(`${server.url}/metrics`, {
        headers: { authorization: `Bearer ${world.admin.token}` },
      });
      const match = /^runcast_polls_not_modified_from_memory_total (\d+)$/m.exec(await res.text());
      if (!match) throw new Error('the metric is missing');
      return Number(match[1]);
    }

    const poll = (api: Api, runId: string, seq: number) =>
      api.get(`/runs/${runId}/progress`, { 'if-none-match': `"${seq}"` });

    it('answers a repeated poll with the 304 the route gives, headers included', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING' });
      // `?wait=0` always goes through the route.
      const routed = await world.viewer.get(`/runs/${runId}/progress?wait=0`, { 'if-none-match': '"1"' });
      expect(routed.status).toBe(304);
      await poll(world.viewer, runId, 1);
      const before = await fromMemory();
      for (let i = 0; i < 3; i++) {
        const answer = await poll(world.viewer, runId, 1);
        expect(answer.status).toBe(304);
        expect(answer.body).toBe('');
        for (const header of ['etag', 'cache-control']) {
          expect(answer.headers.get(header), header).toBe(routed.headers.get(header));
        }
      }
      expect(await fromMemory()).toBe(before + 3);
    });

    it('answers a worker token and a session cookie from memory too', async () => {
      const runId = await newRun(world.operator, world.projectId);
      const login = await world.anonymous.post('/auth/login', {
        username: 'viewer',
        password: 'viewer-password',
      });
      const cookie = (login.headers.get('set-cookie') ?? '').split(';')[0] ?? '';
      expect(cookie).toMatch(/^runcast_session=/);
      const byCookie = () =>
        world.anonymous.get(`/runs/${runId}/progress`, { 'if-none-match': '"0"', cookie });
      await poll(world.worker, runId, 0);
      await byCookie();
      const before = await fromMemory();
      expect((await poll(world.worker, runId, 0)).status).toBe(304);
      expect((await byCookie()).status).toBe(304);
      expect(await fromMemory()).toBe(before + 2);
    });

    it('gives the new snapshot as soon as the run changes', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await poll(world.viewer, runId, 0);
      expect((await poll(world.viewer, runId, 0)).status).toBe(304);
      await patch(world.worker, runId, { status: 'RUNNING', progress: { percentage: 5 } });
      const changed = await poll(world.viewer, runId, 0);
      expect(changed.status).toBe(200);
      expect(changed.body).toMatchObject({ seq: 1, status: 'RUNNING', progress: { percentage: 5 } });
      expect(changed.headers.get('etag')).toBe('"1"');
    });

    it('stops answering once the caller may no longer see the run', async () => {
      const runId = await newRun(world.operator, world.projectId);
      const created = await world.admin.post('/users', {
        username: `poller-${process.pid}`,
        password: 'poller-password',
        role: 'operator',
      });
      expect(created.status).toBe(201);
      const userId = created.body.user_id;
      const member = (role: string) =>
        world.operator.post(`/projects/${world.projectId}/members`, { user_id: userId, role });
      expect((await member('viewer')).status).toBe(201);
      const poller = await world.anonymous.login(`poller-${process.pid}`, 'poller-password');
      const token = await world.operator.post('/tokens', { project_id: world.projectId, name: 'poller' });
      const worker = world.anonymous.as(token.body.token);
      const warm = async (api: Api) => {
        await poll(api, runId, 0);
        const before = await fromMemory();
        expect((await poll(api, runId, 0)).status).toBe(304);
        expect(await fromMemory()).toBe(before + 1);
      };

      await warm(poller);
      expect((await world.operator.delete(`/projects/${world.projectId}/members/${userId}`)).status).toBe(
        204,
      );
      expect((await poll(poller, runId, 0)).status).toBe(404);
      expect((await member('viewer')).status).toBe(201);
      await warm(poller);
      expect((await poller.post('/auth/logout')).status).toBe(204);
      expect((await poll(poller, runId, 0)).status).toBe(401);

      await warm(worker);
      expect((await world.operator.delete(`/tokens/${token.body.token_id}`)).status).toBe(204);
      expect((await poll(worker, runId, 0)).status).toBe(401);
    });
  });

  describe('?since=', () => {
    it('returns the log events after since, oldest first, and no update events', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING' }); // 1
      await postLogs(world.worker, runId, 3, 'first'); // 2, 3, 4
      await patch(world.worker, runId, { progress: { percentage: 50 } }); // 5
      const batch = await world.worker.post(`/runs/${runId}/logs`, {
        entries: [
          { level: 'warn', message: 'second 1', stage: 'APPLY' },
          { level: 'error', message: 'second 2', data: { ref: 'refs/heads/main' } },
        ],
      }); // 6, 7
      expect(batch.body).toEqual({ run_id: runId, first_seq: 6, last_seq: 7 });

      const all = await world.viewer.get(`/runs/${runId}/progress?since=0`);
      expect(all.status).toBe(200);
      expect(all.body).toMatchObject({ seq: 7, progress: { percentage: 50 }, events_truncated: false });
      expect(all.body).not.toHaveProperty('events_more');
      expect(seqsOf(all.body.events)).toEqual([2, 3, 4, 6, 7]);
      expect(messages(all.body.events)).toEqual(['first 1', 'first 2', 'first 3', 'second 1', 'second 2']);
      expect(all.body.events[3]).toMatchObject({
        run_id: runId,
        seq: 6,
        type: 'log',
        at: expect.any(String),
        log: { level: 'warn', message: 'second 1', stage: 'APPLY' },
      });
      expect(all.body.events[4].log).toEqual({
        level: 'error',
        message: 'second 2',
        data: { ref: 'refs/heads/main' },
      });

      const later = await world.viewer.get(`/runs/${runId}/progress?since=3`);
      expect(seqsOf(later.body.events)).toEqual([4, 6, 7]);
      expect(later.body.events_truncated).toBe(false);

      const current = await world.viewer.get(`/runs/${runId}/progress?since=7`);
      expect(current.status).toBe(200);
      expect(current.body).toMatchObject({ seq: 7, events: [], events_truncated: false });
    });

    it('leaves events out when since is not given', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await postLogs(world.worker, runId, 2);
      const answer = await world.viewer.get(`/runs/${runId}/progress`);
      expect(answer.body.seq).toBe(2);
      expect(answer.body).not.toHaveProperty('events');
      expect(answer.body).not.toHaveProperty('events_truncated');
    });
  });

  describe('long-poll with ?wait=', () => {
    it('answers a pending ?since=<seq>&wait=10 as soon as a PATCH commits, with the new seq', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING' });
      const poll = world.viewer.get(`/runs/${runId}/progress?since=1&wait=10`);
      expect(await stillPending(poll)).toBe(true);

      await patch(world.worker, runId, { stage: 'VERIFY', progress: { percentage: 90 } });
      const answer = await poll;
      expect(answer.status).toBe(200);
      expect(answer.headers.get('etag')).toBe('"2"');
      expect(answer.body).toMatchObject({
        seq: 2,
        stage: 'VERIFY',
        progress: { percentage: 90 },
        events: [],
        events_truncated: false,
      });
    });

    it('answers a pending long-poll with the log line that woke it', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING' });
      const poll = world.viewer.get(`/runs/${runId}/progress?since=1&wait=10`);
      expect(await stillPending(poll)).toBe(true);

      await postLogs(world.worker, runId, 1, 'wake');
      const answer = await poll;
      expect(answer.status).toBe(200);
      expect(answer.body.seq).toBe(2);
      expect(messages(answer.body.events)).toEqual(['wake 1']);
      expect(answer.body.events_truncated).toBe(false);
    });

    it('answers at once when the run is already past since', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING' });
      await postLogs(world.worker, runId, 2);
      const answer = await world.viewer.get(`/runs/${runId}/progress?since=1&wait=30`);
      expect(answer.status).toBe(200);
      expect(answer.body.seq).toBe(3);
      expect(seqsOf(answer.body.events)).toEqual([2, 3]);
    }, 10_000);

    it('answers ?since=<seq>&wait=1 with 304 at the deadline when nothing happens', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING' });
      // Another run changing must not wake it.
      const otherRunId = await newRun(world.operator, world.projectId);
      const poll = world.viewer.get(`/runs/${runId}/progress?since=1&wait=1`);
      await patch(world.worker, otherRunId, { status: 'RUNNING' });
      const answer = await poll;
      expect(answer.status).toBe(304);
      expect(answer.body).toBe('');
      expect(answer.headers.get('etag')).toBe('"1"');
      expect((await world.viewer.get(`/runs/${runId}/progress`)).body.seq).toBe(1);
    });

    it('takes If-None-Match as the cursor: a pending If-None-Match long-poll answers on commit', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING' });
      const poll = world.viewer.get(`/runs/${runId}/progress?wait=10`, { 'if-none-match': '"1"' });
      expect(await stillPending(poll)).toBe(true);

      await patch(world.worker, runId, { progress: { percentage: 33 } });
      const answer = await poll;
      expect(answer.status).toBe(200);
      expect(answer.headers.get('etag')).toBe('"2"');
      expect(answer.body).toMatchObject({ seq: 2, progress: { percentage: 33 } });
    });

    it('answers an If-None-Match long-poll with 304 at the deadline when nothing happens', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING' });
      const answer = await world.viewer.get(`/runs/${runId}/progress?wait=1`, { 'if-none-match': '"1"' });
      expect(answer.status).toBe(304);
      expect(answer.body).toBe('');
      expect(answer.headers.get('etag')).toBe('"1"');
    });

    it('wakes every long-poll waiting on the run with one commit', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING' });
      const polls = [
        world.viewer.get(`/runs/${runId}/progress?since=1&wait=10`),
        world.operator.get(`/runs/${runId}/progress?since=1&wait=10`),
        world.worker.get(`/runs/${runId}/progress?wait=10`, { 'if-none-match': '"1"' }),
      ];
      expect(await stillPending(Promise.race(polls))).toBe(true);

      await patch(world.worker, runId, { status: 'COMPLETED' });
      for (const answer of await Promise.all(polls)) {
        expect(answer.status).toBe(200);
        expect(answer.body).toMatchObject({ seq: 2, status: 'COMPLETED' });
      }
    });

    it('answers a long-poll on a terminal run at its final seq with 304 at once (since)', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await patch(world.worker, runId, { status: 'RUNNING' });
      await patch(world.worker, runId, { status: 'COMPLETED' });
      const answer = await world.viewer.get(`/runs/${runId}/progress?since=2&wait=30`);
      expect(answer.status).toBe(304);
      expect(answer.body).toBe('');
      expect(answer.headers.get('etag')).toBe('"2"');
    }, 10_000);

    it('answers a long-poll on a terminal run at its final seq with 304 at once (If-None-Match)', async () => {
      const runId = await newRun(world.operator, world.projectId);
      await world.operator.post(`/runs/${runId}/cancel`);
      const answer = await world.viewer.get(`/runs/${runId}/progress?wait=30`, { 'if-none-match': '"1"' });
      expect(answer.status).toBe(304);
      expect(answer.body).toBe('');
      expect(answer.headers.get('etag')).toBe('"1"');
    }, 10_000);

    it('survives a client that gives up on a pending long-poll', async () => {
      const runId = await newRun(world.operator, world.projectId);
      const controller = new AbortController();
      const poll = fetch(`${server.url}/api/v1/runs/${runId}/progress?since=0&wait=10`, {
        headers: { authorization: `Bearer ${world.viewer.token}` },
        signal: controller.signal,
      });
      expect(await stillPending(poll)).toBe(true);
      controller.abort();
      await expect(poll).rejects.toThrow();

      await patch(world.worker, runId, { status: 'RUNNING' });
      const answer = await world.viewer.get(`/runs/${runId}/progress?since=0&wait=10`);
      expect(answer.status).toBe(200);
      expect(answer.body.seq).toBe(1);
    });
  });

  describe('GET /runs', () => {
    it('lists runs newest first, filters by status and walks every page once with next_cursor', async () => {
      const project = await world.operator.post('/projects', { name: 'list project' });
      const projectId: string = project.body.project_id;
      const created: string[] = [];
      for (let i = 0; i < 7; i++) created.push(await newRun(world.operator, projectId));
      const statusOf: Record<string, string> = {};
      for (const [i, runId] of created.entries()) {
        if (i % 3 === 0) {
          await patch(world.operator, runId, { status: 'RUNNING' });
          statusOf[runId] = 'RUNNING';
        } else if (i % 3 === 1) {
          await world.operator.post(`/runs/${runId}/cancel`);
          statusOf[runId] = 'CANCELED';
        } else {
          statusOf[runId] = 'CREATED';
        }
      }
      const newestFirst = [...created].reverse();

      async function walk(query: string): Promise<{ ids: string[]; pages: number }> {
        const ids: string[] = [];
        let cursor: string | null = null;
        let pages = 0;
        do {
          const page: Answer = await world.operator.get(
            `/runs?project_id=${projectId}&limit=3${query}${cursor ? `&cursor=${cursor}` : ''}`,
          );
          expect(page.status, JSON.stringify(page.body)).toBe(200);
          expect(page.body.runs.length).toBeLessThanOrEqual(3);
          ids.push(...page.body.runs.map((run: { run_id: string }) => run.run_id));
          cursor = page.body.next_cursor;
          pages++;
          expect(pages).toBeLessThanOrEqual(10);
        } while (cursor !== null);
        return { ids, pages };
      }

      const all = await walk('');
      expect(all.ids).toEqual(newestFirst);
      expect(all.pages).toBe(3);

      const running = await walk('&status=RUNNING');
      expect(running.ids).toEqual(newestFirst.filter((id) => statusOf[id] === 'RUNNING'));
      expect(running.ids).toHaveLength(3);
      expect(running.pages).toBe(1);

      const notRunning = await walk('&status=CANCELED,CREATED');
      expect(notRunning.ids).toEqual(newestFirst.filter((id) => statusOf[id] !== 'RUNNING'));
      expect(notRunning.pages).toBe(2);

      const first = await world.operator.get(`/runs?project_id=${projectId}&status=RUNNING`);
      for (const run of first.body.runs)
        expect(run).toMatchObject({ project_id: projectId, status: 'RUNNING' });
      expect(first.body.next_cursor).toBeNull();

      const none = await world.operator.get(`/runs?project_id=${projectId}&status=COMPLETED`);
      expect(none.body).toEqual({ runs: [], next_cursor: null });
    });
  });
});

describe('progress polling with a short event retention', () => {
  let server: TestServer;
  let world: World;
  beforeAll(async () => {
    server = await startServer({ RUNCAST_EVENT_RETENTION: '5' });
    world = await makeWorld(server.url);
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  it('says events_truncated when the retained history no longer reaches back to since', async () => {
    const runId = await newRun(world.operator, world.projectId);
    const seqs = await postLogs(world.worker, runId, 20);
    expect(seqs).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));

    const fromStart = await world.viewer.get(`/runs/${runId}/progress?since=0`);
    expect(fromStart.status).toBe(200);
    expect(fromStart.body.seq).toBe(20);
    expect(fromStart.body.events_truncated).toBe(true);
    expect(seqsOf(fromStart.body.events)).toEqual([16, 17, 18, 19, 20]);
    expect(messages(fromStart.body.events)).toEqual(['line 16', 'line 17', 'line 18', 'line 19', 'line 20']);

    const inside = await world.viewer.get(`/runs/${runId}/progress?since=14`);
    expect(inside.body.events_truncated).toBe(true);

    // The retained edge: every log after seq 15 is still there.
    const edge = await world.viewer.get(`/runs/${runId}/progress?since=15`);
    expect(edge.body.events_truncated).toBe(false);
    expect(seqsOf(edge.body.events)).toEqual([16, 17, 18, 19, 20]);

    const recent = await world.viewer.get(`/runs/${runId}/progress?since=18`);
    expect(recent.body.events_truncated).toBe(false);
    expect(seqsOf(recent.body.events)).toEqual([19, 20]);

    const events = await world.viewer.get(`/runs/${runId}/events?since=0`);
    expect(events.body).toMatchObject({ run_id: runId, events_truncated: true, seq: 20, next_since: 20 });
    expect(seqsOf(events.body.events)).toEqual([16, 17, 18, 19, 20]);
  });

  it('keeps the truncation edge right when updates are mixed with logs', async () => {
    const runId = await newRun(world.operator, world.projectId);
    await patch(world.worker, runId, { status: 'RUNNING' }); // 1
    await postLogs(world.worker, runId, 4, 'a'); // 2..5
    await patch(world.worker, runId, { progress: { percentage: 50 } }); // 6
    await postLogs(world.worker, runId, 4, 'b'); // 7..10: a 1, a 2, a 3 fall out
    const answer = await world.viewer.get(`/runs/${runId}/progress?since=0`);
    expect(answer.body.events_truncated).toBe(true);
    expect(seqsOf(answer.body.events)).toEqual([5, 7, 8, 9, 10]);
    const edge = await world.viewer.get(`/runs/${runId}/progress?since=4`);
    expect(edge.body.events_truncated).toBe(false);
    expect(seqsOf(edge.body.events)).toEqual([5, 7, 8, 9, 10]);
  });
});

describe('progress polling with a small events page', () => {
  let server: TestServer;
  let world: World;
  beforeAll(async () => {
    server = await startServer({ RUNCAST_EVENTS_PAGE_LIMIT: '4' });
    world = await makeWorld(server.url);
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  it('says events_more when more log events are waiting than one answer carries', async () => {
    const runId = await newRun(world.operator, world.projectId);
    await postLogs(world.worker, runId, 10);
    const first = await world.viewer.get(`/runs/${runId}/progress?since=0`);
    expect(first.body).toMatchObject({ seq: 10, events_truncated: false, events_more: true });
    expect(seqsOf(first.body.events)).toEqual([1, 2, 3, 4]);

    const last = await world.viewer.get(`/runs/${runId}/progress?since=6`);
    expect(seqsOf(last.body.events)).toEqual([7, 8, 9, 10]);
    expect(last.body).not.toHaveProperty('events_more');
  });

  it('walks every log event once through GET /events with next_since', async () => {
    const runId = await newRun(world.operator, world.projectId);
    await patch(world.worker, runId, { status: 'RUNNING' }); // 1
    await postLogs(world.worker, runId, 5, 'a'); // 2..6
    await patch(world.worker, runId, { progress: { percentage: 40 } }); // 7
    await postLogs(world.worker, runId, 6, 'b'); // 8..13
    await patch(world.worker, runId, { progress: { percentage: 80 } }); // 14

    const seen: { seq: number; log: { message: string } }[] = [];
    let since = 0;
    let pages = 0;
    for (;;) {
      const page = await world.viewer.get(`/runs/${runId}/events?since=${since}`);
      expect(page.status, JSON.stringify(page.body)).toBe(200);
      expect(page.body).toMatchObject({ run_id: runId, seq: 14, events_truncated: false });
      expect(page.body.events.length).toBeLessThanOrEqual(4);
      expect(page.body.next_since).toBeGreaterThanOrEqual(since);
      seen.push(...page.body.events);
      pages++;
      expect(pages).toBeLessThanOrEqual(10);
      if (page.body.events.length === 0) break;
      since = page.body.next_since;
    }
    expect(since).toBe(14);
    expect(seqsOf(seen)).toEqual([2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13]);
    expect(messages(seen)).toEqual([
      ...Array.from({ length: 5 }, (_, i) => `a ${i + 1}`),
      ...Array.from({ length: 6 }, (_, i) => `b ${i + 1}`),
    ]);
    // Three full or partial pages, then the empty one that says "nothing more".
    expect(pages).toBe(4);

    const small = await world.viewer.get(`/runs/${runId}/events?since=0&limit=2`);
    expect(seqsOf(small.body.events)).toEqual([2, 3]);
    expect(small.body.next_since).toBe(3);
    const capped = await world.viewer.get(`/runs/${runId}/events?since=0&limit=100`);
    expect(seqsOf(capped.body.events)).toEqual([2, 3, 4, 5]);
    expect(capped.body.next_since).toBe(5);
  });
});
