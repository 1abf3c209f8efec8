import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RunSnapshot } from '@runcast/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Api } from '../../packages/server/src/test-support/server.js';
import { type Cluster, startCluster, storedRow, until } from '../support/cluster.js';
import {
  emptyBare,
  type GitDaemon,
  makeBigRepo,
  processesMentioning,
  randomHex,
  startGitDaemon,
  stopAllGitDaemons,
} from '../support/git.js';
import { startSlowProxy } from '../support/proxies.js';
import { CHILD_ADMIN_PASSWORD } from '../support/server-process.js';

// Runs owned by one node at a time (issue 13, item 3): three nodes on PostgreSQL with a short
// lease execute git-mirror runs from a large repository served by `git daemon` over a slow link,
// and the test kills, freezes and restarts the node that owns a run.

const LEASE_MS = 2000;
/** A takeover happens within the lease, one claim poll (1 s) and this much slack. */
const TAKEOVER_SLACK_MS = 2500;

let cluster: Cluster;
let base: string;
let git: GitDaemon;
/** The source repository, behind a slow link: a run stays in EXPORT for tens of seconds. */
let slow: { port: number; close(): Promise<void> };
let admin: Api;
let projectId: string;

interface Owned {
  runId: string;
  owner: number;
}

interface LeaseRow {
  status: string;
  seq: string;
  owner: string | null;
  fence: string;
}

const stored = (runId: string) =>
  storedRow<LeaseRow>(cluster.databaseUrl, runId, 'status, seq, owner, fence');

/** An admin client of one node, for when the balancer may pick a frozen one. */
const adminOf = (index: number) => new Api(cluster.nodes[index]!.url, admin.token);

/** Git processes node `index` started for its runs (they outlive a killed node). */
const gitOf = (index: number) =>
  processesMentioning([`${cluster.dataDir(index)}/work/`]).filter((p) => !p.cmdline.includes('vitest'));

function killGitOf(index: number): void {
  for (const p of gitOf(index)) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
}

/** Creates a git-mirror run and waits until a node executes its EXPORT; answers which node. */
async function mirrorRun(): Promise<Owned> {
  const target = `t-${randomHex()}.git`;
  emptyBare(join(base, target));
  const created = await admin.post('/runs', {
    project_id: projectId,
    kind: 'git-mirror',
    config: {
      repositories: [{ source: `git://127.0.0.1:${slow.port}/big.git`, target: `${git.url}${target}` }],
    },
  });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  const runId: string = created.body.run_id;
  await until(
    async () => (await admin.get<RunSnapshot>(`/runs/${runId}`)).body.stage === 'EXPORT',
    `run ${runId} to reach EXPORT`,
    30_000,
  );
  const { owner } = await stored(runId);
  expect(owner).toMatch(/^node\d$/);
  return { runId, owner: Number(owner?.slice(4)) };
}

beforeAll(async () => {
  base = mkdtempSync(join(tmpdir(), 'runcast-ownership-git-'));
  makeBigRepo(join(base, 'big.git'), 20_000, 2000);
  git = await startGitDaemon(base);
  slow = await startSlowProxy(Number(new URL(git.url).port), 1024 * 1024);
  cluster = await startCluster('ownership', 3, { RUNCAST_RUN_LEASE_MS: String(LEASE_MS) });
  admin = await new Api(cluster.balancerUrl).login('admin', CHILD_ADMIN_PASSWORD);
  projectId = (await admin.post('/projects', { name: 'ownership' })).body.project_id;
}, 180_000);

afterAll(async () => {
  for (let i = 0; i < 3; i++) if (cluster?.nodes[i]) killGitOf(i);
  await cluster?.stop();
  await slow?.close();
  await stopAllGitDaemons();
  rmSync(base, { recursive: true, force: true });
});

describe('runs owned by one node at a time', () => {
  it('lets another node take a run over after kill -9 of its owner, within the lease and a bound', async () => {
    const { runId, owner } = await mirrorRun();
    const port = Number(new URL(cluster.nodes[owner]!.url).port);
    const killedAt = Date.now();
    await cluster.nodes[owner]!.kill();
    // A supervisor ending the service's cgroup would end its git children too.
    killGitOf(owner);
    await until(
      async () => (await stored(runId)).status === 'FAILED',
      'another node to end the run',
      LEASE_MS + TAKEOVER_SLACK_MS + 5000,
    );
    const elapsed = Date.now() - killedAt;
    expect(elapsed).toBeLessThan(LEASE_MS + TAKEOVER_SLACK_MS);
    const row = await stored(runId);
    expect(row.owner).not.toBe(`node${owner}`);
    expect(Number(row.fence)).toBe(2);
    const run = (await adminOf((owner + 1) % 3).get<RunSnapshot>(`/runs/${runId}`)).body;
    expect(run.error).toMatchObject({
      code: 'INTERRUPTED',
      message: expect.stringMatching(/its node stopped.*retry it/),
    });
    console.log(`ownership: run taken over ${elapsed} ms after kill -9 of its owner (lease ${LEASE_MS} ms)`);
    await cluster.startNode(owner, port);
  }, 90_000);

  it('refuses the writes of an owner frozen past its lease, which then stops working on the run', async () => {
    const { runId, owner } = await mirrorRun();
    const node = cluster.nodes[owner]!;
    const pid = node.child.pid!;
    process.kill(pid, 'SIGSTOP');
    let taken: LeaseRow;
    try {
      await until(
        async () => (await stored(runId)).status === 'FAILED',
        'another node to take the frozen node’s run over',
        LEASE_MS + TAKEOVER_SLACK_MS + 5000,
      );
      taken = await stored(runId);
      expect(taken.owner).not.toBe(`node${owner}`);
      expect(gitOf(owner).length, 'the frozen node’s git still runs').toBeGreaterThan(0);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    const lost = () =>
      node.stdout.filter((line) => line.includes('"code":"LEASE_LOST"') && line.includes(runId));
    await until(() => lost().length > 0, 'the resumed node to find its lease lost', 10_000);
    console.log(`ownership: the resumed owner stopped because ${JSON.parse(lost()[0]!).why}`);
    // It killed its git and wrote nothing more: the run stays as its new owner ended it.
    await until(() => gitOf(owner).length === 0, 'the resumed node to kill its git', 10_000);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(await stored(runId)).toEqual(taken);
    const run = (await adminOf(owner).get<RunSnapshot>(`/runs/${runId}`)).body;
    expect(run.error?.code).toBe('INTERRUPTED');
    expect(node.errorLines).toEqual([]);
  }, 90_000);

  it("does not fail another live node's running run when a node restarts", async () => {
    const { runId, owner } = await mirrorRun();
    const other = (owner + 1) % 3;
    const port = Number(new URL(cluster.nodes[other]!.url).port);
    await cluster.nodes[other]!.stop();
    await cluster.startNode(other, port);
    const third = (owner + 2) % 3;
    const thirdPort = Number(new URL(cluster.nodes[third]!.url).port);
    await cluster.nodes[third]!.kill();
    await cluster.startNode(third, thirdPort);
    const row = await stored(runId);
    expect(row).toMatchObject({ status: 'RUNNING', owner: `node${owner}`, fence: '1' });
    // Beyond a lease: its owner keeps renewing it.
    await new Promise((resolve) => setTimeout(resolve, LEASE_MS + 1500));
    expect(await stored(runId)).toMatchObject({ status: 'RUNNING', owner: `node${owner}`, fence: '1' });
    const canceled = await adminOf(other).post(`/runs/${runId}/cancel`);
    expect(canceled.status).toBe(200);
    await until(() => gitOf(owner).length === 0, 'the owner to kill its git on cancel', 10_000);
    expect(cluster.nodes[owner]!.errorLines).toEqual([]);
  }, 90_000);
});
