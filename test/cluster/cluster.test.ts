import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProgressService, type ProgressServiceOptions } from '../../packages/client/src/index.js';
import type { ConnectionMethod } from '../../packages/client/src/types.js';
import { Api } from '../../packages/server/src/test-support/server.js';
import { type Cluster, startCluster, storedRow, until } from '../support/cluster.js';
import { Collector } from '../support/collector.js';
import type { PostgresServer } from '../support/postgres.js';
import { CHILD_ADMIN_PASSWORD, type ServerProcess } from '../support/server-process.js';

// Three Runcast nodes on one PostgreSQL, behind HAProxy round-robin with no sticky sessions
// (issue 13). Every scenario is checked the same way: per run and client, seqs strictly
// increasing, every log exactly once, and the final state equal to what PostgreSQL holds.

const METHODS: ConnectionMethod[] = ['websocket', 'sse', 'polling'];

let cluster: Cluster;
let databaseUrl: string;
let postgres: PostgresServer;
let nodes: ServerProcess[];
let startNode: Cluster['startNode'];
let balancerUrl: string;
let admin: Api;
let projectId: string;
let worker: Api;

/** The run as PostgreSQL holds it: status and seq, read straight from the database. */
async function stored(runId: string): Promise<{ status: string; seq: number }> {
  const row = await storedRow<{ status: string; seq: string }>(databaseUrl, runId, 'status, seq');
  return { status: row.status, seq: Number(row.seq) };
}

/**
 * The one check of every scenario: seqs growing, every log once, the final state as stored.
 * Strictly growing between events; a state re-sent by a resume may share the seq of the log it
 * follows (its snapshot is "the run as of seq S", S being that log), never go back.
 */
async function expectComplete(seen: Collector, runId: string, logs: string[]): Promise<void> {
  const shown = () =>
    JSON.stringify(seen.events.map((e) => (e.type === 'error' ? e.error.code : [e.seq, e.type])));
  let last = -1;
  let lastWasLog = false;
  for (const event of seen.events) {
    if (event.type === 'error') continue;
    const stateAfterItsLog = event.type !== 'log' && lastWasLog && event.seq === last;
    if (!stateAfterItsLog) expect(event.seq, shown()).toBeGreaterThan(last);
    last = event.seq;
    lastWasLog = event.type === 'log';
  }
  expect(seen.logMessages).toEqual(logs);
  const truth = await stored(runId);
  expect(seen.lastState).toMatchObject({ status: truth.status, seq: truth.seq });
}

/**
 * A ProgressService per option set, each following `runId`; resolves once every one has its
 * opening snapshot. `close` ends them all.
 */
async function watching(runId: string, options: ProgressServiceOptions[]) {
  const services = options.map((option) => new ProgressService(option));
  const seen = services.map(() => new Collector());
  for (const [i, service] of services.entries()) service.subscribeToRun(runId, seen[i]!.push);
  const close = () => {
    for (const service of services) service.close();
  };
  try {
    for (const collector of seen)
      await collector.until((events) => events.some((e) => e.type === 'snapshot'));
  } catch (err) {
    close();
    throw err;
  }
  return { seen, close };
}

async function newRun(): Promise<string> {
  const created = await admin.post('/runs', { project_id: projectId, kind: 'external' });
  expect(created.status).toBe(201);
  return created.body.run_id;
}

beforeAll(async () => {
  cluster = await startCluster('cluster');
  ({ databaseUrl, postgres, nodes, startNode, balancerUrl } = cluster);
  admin = await new Api(balancerUrl).login('admin', CHILD_ADMIN_PASSWORD);
  projectId = (await admin.post('/projects', { name: 'cluster' })).body.project_id;
  worker = new Api(
    balancerUrl,
    (await admin.post('/tokens', { project_id: projectId, name: 'w' })).body.token,
  );
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
});

describe('three nodes on PostgreSQL', () => {
  it('created one admin and one schema whatever the order the nodes started in', async () => {
    const users = await admin.get('/users');
    expect(users.body.users.filter((u: { username: string }) => u.username === 'admin')).toHaveLength(1);
  });

  it.each(METHODS)('delivers a producer on node A to %s subscribers on nodes B and C', async (method) => {
    const runId = await newRun();
    const producer = new Api(nodes[0]!.url, worker.token);
    const { seen, close } = await watching(
      runId,
      [1, 2].map((i) => ({ baseUrl: nodes[i]!.url, token: admin.token, transports: [method] })),
    );
    try {
      await producer.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
      const logs = Array.from({ length: 40 }, (_, i) => `line ${i}`);
      for (const [i, message] of logs.entries()) {
        await producer.post(`/runs/${runId}/logs`, { level: 'info', message });
        if (i % 10 === 0) await producer.patch(`/runs/${runId}/progress`, { progress: { percentage: i } });
      }
      await producer.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
      for (const collector of seen) {
        await collector.untilStatus('COMPLETED');
        await expectComplete(collector, runId, logs);
      }
    } finally {
      close();
    }
  });

  it('serves polls and SSE resumes on whichever node the balancer picks', async () => {
    const runId = await newRun();
    await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
    let since = 0;
    const messages: string[] = [];
    for (let i = 0; i < 12; i++) {
      await worker.post(`/runs/${runId}/logs`, { level: 'info', message: `poll ${i}` });
      // Round-robin: consecutive polls land on different nodes; each answers from PostgreSQL.
      const answer = await admin.get(`/runs/${runId}/progress?since=${since}`);
      expect(answer.status).toBe(200);
      for (const event of answer.body.events) messages.push(event.log.message);
      since = answer.body.seq;
    }
    expect(messages).toEqual(Array.from({ length: 12 }, (_, i) => `poll ${i}`));
    // An ETag from one node is current on the others: no node answers a stale 304.
    await worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'after' });
    for (const node of nodes) {
      const fresh = await new Api(node.url, admin.token).get(`/runs/${runId}/progress`, {
        'if-none-match': `"${since}"`,
      });
      expect(fresh.status).toBe(200);
    }
  });

  it('ends access on every node when a token is revoked on one', async () => {
    const created = await new Api(nodes[0]!.url, admin.token).post('/tokens', {
      project_id: projectId,
      name: 'r',
    });
    const runId = await newRun();
    const { seen, close } = await watching(
      runId,
      [1, 2].map((i) => ({ baseUrl: nodes[i]!.url, token: created.body.token, transports: ['websocket'] })),
    );
    try {
      // Every node has the token's principal cached by now.
      for (const node of nodes)
        expect((await new Api(node.url, created.body.token).get('/auth/me')).status).toBe(200);
      expect(
        (await new Api(nodes[0]!.url, admin.token).delete(`/tokens/${created.body.token_id}`)).status,
      ).toBe(204);
      for (const collector of seen) {
        await collector.until((events) => events.some((e) => e.type === 'error'));
        expect(collector.events.find((e) => e.type === 'error')).toMatchObject({
          error: { code: 'UNAUTHORIZED' },
        });
      }
      for (const node of nodes) {
        await until(
          async () => (await new Api(node.url, created.body.token).get('/auth/me')).status === 401,
          `node ${node.url} to refuse the revoked token`,
        );
      }
    } finally {
      close();
    }
  });

  it('resumes delivery after every listener session is terminated and PostgreSQL restarts', async () => {
    const runId = await newRun();
    const { seen, close } = await watching(
      runId,
      METHODS.map((method) => ({ baseUrl: balancerUrl, token: admin.token, transports: [method] })),
    );
    try {
      await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
      const logs: string[] = [];
      const produce = async (count: number) => {
        for (let i = 0; i < count; i++) {
          const message = `line ${logs.length}`;
          const answer = await worker.post(`/runs/${runId}/logs`, { level: 'info', message });
          if (answer.status === 201) logs.push(message);
        }
      };
      await produce(10);
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      // Every node's listener (and sender) session: their notifications are lost meanwhile.
      await client.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND (query ILIKE 'LISTEN%' OR query ILIKE '%pg_notify%')",
      );
      await client.end();
      await produce(10);
      await postgres.restart();
      await until(
        async () =>
          (await worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${logs.length}` }))
            .status === 201,
        'writes after the restart',
      ).then(() => logs.push(`line ${logs.length}`));
      await produce(10);
      await worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
      for (const collector of seen) {
        await collector.untilStatus('COMPLETED');
        await expectComplete(collector, runId, logs);
      }
    } finally {
      close();
    }
  }, 60_000);

  it('loses nothing over kill -9 cycles of the nodes serving the subscribers', async () => {
    const runId = await newRun();
    const { seen, close } = await watching(
      runId,
      METHODS.map((method) => ({ baseUrl: balancerUrl, token: admin.token, transports: [method] })),
    );
    const cycles = Number(process.env.RUNCAST_CLUSTER_KILL_CYCLES ?? 20);
    try {
      await worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' });
      const logs: string[] = [];
      // The producer writes to whichever node is up; a write refused by a dying node is retried
      // with its Idempotency-Key, so it counts once.
      const write = async (message: string) => {
        const key = `k-${message}`;
        for (;;) {
          const answer = await worker
            .post(`/runs/${runId}/logs`, { level: 'info', message }, { 'idempotency-key': key })
            .catch(() => undefined);
          if (answer?.status === 201) return;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      };
      for (let cycle = 0; cycle < cycles; cycle++) {
        const victim = cycle % 3;
        await nodes[victim]!.kill();
        for (let i = 0; i < 3; i++) {
          const message = `cycle ${cycle} line ${i}`;
          await write(message);
          logs.push(message);
        }
        await startNode(victim, Number(new URL(nodes[victim]!.url).port));
      }
      await worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
      for (const collector of seen) {
        await collector.untilStatus('COMPLETED');
        await expectComplete(collector, runId, logs);
      }
      console.log(
        `cluster: ${cycles} kill -9 cycles, ${logs.length} logs, every one delivered once on each transport`,
      );
    } finally {
      close();
    }
  }, 240_000);

  // Last: it leaves the balancer's address locked out of logins for a minute.
  it('counts failed logins on every node, not per node, behind round-robin', async () => {
    const guesser = new Api(balancerUrl);
    const limit = 10; // RUNCAST_LOGIN_RATE_LIMIT's default
    for (let i = 0; i < limit; i++) {
      // Round-robin: these fall on the three nodes in turn; each node counts them all.
      expect((await guesser.post('/auth/login', { username: 'admin', password: 'wrong' })).status).toBe(401);
    }
    for (const node of nodes) {
      const refused = await new Api(node.url).post('/auth/login', { username: 'admin', password: 'wrong' });
      expect(refused.status).toBe(429);
    }
  });
});
