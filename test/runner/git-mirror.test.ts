import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { RunSnapshot } from '@runcast/protocol';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ProgressService } from '../../packages/client/src/index.js';
import type { ProgressEvent } from '../../packages/client/src/types.js';
import type { GitMirrorHooks } from '../../packages/server/src/runner/executors/git-mirror.js';
import {
  ADMIN_PASSWORD,
  Api,
  startServer,
  type TestServer,
} from '../../packages/server/src/test-support/server.js';
import { within } from '../support/async.js';
import { Collector } from '../support/collector.js';
import {
  addCommit,
  emptyBare,
  fileUrl,
  type GitDaemon,
  gitProcesses,
  lsRemote,
  makeBigRepo,
  makeSourceRepo,
  processesMentioning,
  randomHex,
  rewriteBranch,
  type SourceRepo,
  startGitDaemon,
  stopAllGitDaemons,
} from '../support/git.js';
import { ended, waitForRun } from '../support/runs.js';
import {
  CHILD_ADMIN_PASSWORD,
  freePort,
  killAllServers,
  requireBuiltServer,
  ServerProcess,
} from '../support/server-process.js';

// End to end tests of the git-mirror executor (issue 6, DESIGN §5): a real server, real git,
// real `git daemon` on loopback and `file://` remotes, observed through the API and a
// ProgressService subscriber.

const STAGES = ['DISCOVERY', 'EXPORT', 'TRANSFORM', 'PLAN', 'APPLY', 'VERIFY'];

/** Work to undo after each test, last registered first. */
const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  const errors: unknown[] = [];
  for (const cleanup of cleanups.splice(0).reverse()) {
    try {
      await cleanup();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length > 0) throw errors[0];
});

afterAll(async () => {
  await stopAllGitDaemons();
  await killAllServers();
});

function tempDir(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `runcast-git-${name}-`));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function daemon(baseDir: string): Promise<GitDaemon> {
  const started = await startGitDaemon(baseDir);
  cleanups.push(() => started.stop());
  return started;
}

interface Served {
  server: TestServer;
  admin: Api;
  projectId: string;
  /** Every line the server logged, at every level. */
  logLines: string[];
  /** Every update the server committed, by run (from its bus). */
  committed: Map<string, ProgressEvent[]>;
  /**
   * Occupies the runner (with `concurrency: 1`): a small run that waits before VERIFY until the
   * returned function is called, so that the next run stays QUEUED while a subscriber attaches.
   */
  hold(): Promise<() => Promise<void>>;
}

interface Gate {
  entered: () => void;
  released: Promise<void>;
  release: () => void;
}

/**
 * A server of its own with an admin and a project; every log line kept (LOG_LEVEL trace), the
 * error ones also in `server.errorLogs`, which must be empty when the test ends.
 */
async function serve(options: { hooks?: GitMirrorHooks; concurrency?: number } = {}): Promise<Served> {
  const logLines: string[] = [];
  const early: string[] = [];
  let errorSink = early;
  const logStream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        logLines.push(line);
        if ((JSON.parse(line) as { level: number }).level >= 50) errorSink.push(line);
      }
      done();
    },
  });
  const gates = new Map<string, Gate>();
  const hooks: GitMirrorHooks = {
    async beforeVerify(repository) {
      const gate = gates.get(repository.target);
      if (gate) {
        gate.entered();
        await gate.released;
      }
      await options.hooks?.beforeVerify?.(repository);
    },
  };
  // The fixtures are local bare repositories (file://) and git daemon on loopback.
  const env: Record<string, string> = { LOG_LEVEL: 'trace', RUNCAST_GIT_ALLOW_LOCAL: '1' };
  if (options.concurrency) env.RUNCAST_RUNNER_CONCURRENCY = String(options.concurrency);
  const server = await startServer(env, { logStream, gitMirrorHooks: hooks });
  server.errorLogs.push(...early);
  errorSink = server.errorLogs;
  const committed = new Map<string, ProgressEvent[]>();
  server.runcast.bus.subscribe('run-events', ({ events }) => {
    for (const event of events) {
      if (event.type !== 'update') continue;
      const list = committed.get(event.run_id) ?? [];
      list.push(event);
      committed.set(event.run_id, list);
    }
  });
  cleanups.push(async () => {
    await server.close();
    expect(server.errorLogs).toEqual([]);
  });
  // Before the server closes (cleanups run last first): no run may stay held.
  cleanups.push(() => {
    for (const gate of gates.values()) gate.release();
  });
  const admin = await new Api(server.url).login('admin', ADMIN_PASSWORD);
  const project = await admin.post('/projects', { name: 'git mirror' });
  expect(project.status).toBe(201);
  const served: Served = {
    server,
    admin,
    projectId: project.body.project_id,
    logLines,
    committed,
    async hold() {
      const dir = tempDir('hold');
      const source = makeSourceRepo(join(dir, 'hold.git'), { branches: [], mergeRequests: 0, commits: 1 });
      const target = fileUrl(emptyBare(join(dir, 'hold-target.git')));
      let entered: () => void = () => {};
      const reached = new Promise<void>((resolve) => {
        entered = resolve;
      });
      let release: () => void = () => {};
      const released = new Promise<void>((resolve) => {
        release = resolve;
      });
      gates.set(target, { entered, released, release });
      const run = await createRun(served, { repositories: [{ source: source.url, target }] });
      await within(reached, 30_000, 'the holding run to reach VERIFY');
      return async () => {
        release();
        const end = await waitForRun(admin, run.run_id, ended);
        expect(end.status, JSON.stringify(end.error)).toBe('COMPLETED');
      };
    },
  };
  return served;
}

/**
 * Creates a run while the runner is held, subscribes while it is QUEUED, then lets it go: the
 * subscriber is there from the run's first stage on.
 */
async function createWatchedRun(
  served: Served,
  config: Record<string, unknown>,
): Promise<{ run: RunSnapshot; seen: Collector }> {
  const release = await served.hold();
  const run = await createRun(served, config);
  const seen = subscribe(served, run.run_id);
  await within(
    seen.until(() => seen.lastState?.status === 'QUEUED'),
    10_000,
    'the subscriber to see the run QUEUED',
  );
  await release();
  return { run, seen };
}

/** A ProgressService subscriber on the run, closed after the test. */
function subscribe(served: Served, runId: string): Collector {
  const service = new ProgressService({ baseUrl: served.server.url, token: served.admin.token });
  cleanups.push(() => service.close());
  const seen = new Collector();
  service.subscribeToRun(runId, seen.push);
  return seen;
}

async function createRun(served: Served, config: Record<string, unknown>): Promise<RunSnapshot> {
  const created = await served.admin.post('/runs', {
    project_id: served.projectId,
    kind: 'git-mirror',
    config,
  });
  expect(created.status, JSON.stringify(created.body)).toBe(201);
  return created.body as RunSnapshot;
}

/** Until the subscriber saw the run end (COMPLETED, FAILED or CANCELED). */
function untilEnded(seen: Collector): Promise<void> {
  return seen.until(() => {
    const state = seen.lastState;
    return state !== undefined && ended(state);
  });
}

/** Every log message of the run (GET /events). */
async function runLogs(api: Api, runId: string): Promise<string[]> {
  const answer = await api.get(`/runs/${runId}/events?since=0`);
  expect(answer.status).toBe(200);
  return (answer.body.events as { type: string; log?: { message: string } }[]).flatMap((e) =>
    e.type === 'log' && e.log ? [e.log.message] : [],
  );
}

/** The stages the subscriber saw, each once per stretch, in order. */
function stagesSeen(events: ProgressEvent[]): string[] {
  const stages: string[] = [];
  for (const event of events) {
    if (event.type === 'log' || event.type === 'error') continue;
    const stage = event.snapshot.stage;
    if (stage && stages.at(-1) !== stage) stages.push(stage);
  }
  return stages;
}

function percentagesSeen(events: ProgressEvent[]): number[] {
  return events.flatMap((event) =>
    event.type === 'log' || event.type === 'error' || typeof event.snapshot.progress?.percentage !== 'number'
      ? []
      : [event.snapshot.progress.percentage],
  );
}

/** What the target should hold: the source's refs without host-only and excluded ones, renamed. */
function expectedRefs(
  source: SourceRepo,
  options: { exclude?: RegExp; rename?: Record<string, string> } = {},
): Map<string, string> {
  const expected = new Map<string, string>();
  for (const [ref, sha] of source.refs) {
    if (source.hostOnly.includes(ref) || options.exclude?.test(ref)) continue;
    expected.set(options.rename?.[ref] ?? ref, sha);
  }
  return expected;
}

function withoutHead(refs: Map<string, string>): Map<string, string> {
  return new Map([...refs].filter(([ref]) => ref !== 'HEAD'));
}

function sorted(refs: Map<string, string>): [string, string][] {
  return [...refs].sort(([a], [b]) => a.localeCompare(b));
}

/** Asserts the subscriber saw the six stages in order, a percentage never going down, COMPLETED at 100. */
async function expectCompleteStory(served: Served, runId: string, seen: Collector): Promise<void> {
  // Every state the server committed, as its bus carried them (the events API keeps logs only).
  const committed = stagesSeen(served.committed.get(runId) ?? []);
  expect(stagesSeen(seen.events), `stages committed by the server: ${committed.join(', ')}`).toEqual(STAGES);
  const percentages = percentagesSeen(seen.events);
  expect(percentages.length).toBeGreaterThan(0);
  for (let i = 1; i < percentages.length; i++) {
    expect(percentages[i], `percentage went down: ${percentages.join(', ')}`).toBeGreaterThanOrEqual(
      percentages[i - 1] as number,
    );
  }
  expect(seen.lastState?.status).toBe('COMPLETED');
  expect(seen.lastState?.progress?.percentage).toBe(100);
}

/** Git processes working for the run: the source URL or the work dir in their command line, environment or cwd. */
function runGitProcesses(sourceUrl: string, workRoot: string) {
  return processesMentioning([sourceUrl, `${workRoot}/`]).filter((p) => !p.cmdline.includes('vitest'));
}

/** Every regular file under `dir`, as bytes (files removed while reading are skipped). */
function readTree(dir: string): { path: string; bytes: Buffer }[] {
  const out: { path: string; bytes: Buffer }[] = [];
  const walk = (current: string) => {
    let entries: string[];
    try {
      entries = readdirSync(current);
    } catch {
      return;
    }
    for (const entry of entries) {
      const path = join(current, entry);
      try {
        const stat = statSync(path);
        if (stat.isDirectory()) walk(path);
        else if (stat.isFile()) out.push({ path, bytes: readFileSync(path) });
      } catch {
        // Removed meanwhile (a git temp file, the work dir at the end of the run).
      }
    }
  };
  walk(dir);
  return out;
}

describe('git-mirror end to end', () => {
  it('migrates branches, tags and drops merge-request refs through git daemon, with renames and excludes', async () => {
    const base = tempDir('daemon');
    const source = makeSourceRepo(join(base, 'source.git'), {
      branches: ['develop', 'feature/login', 'feature/search', 'release/1.0'],
      tags: { annotated: ['v1.0.0', 'v1.1.0'], lightweight: ['nightly'] },
      mergeRequests: 2,
      commits: 6,
    });
    emptyBare(join(base, 'target.git'));
    const git = await daemon(base);
    const served = await serve({ concurrency: 1 });
    const sourceUrl = `${git.url}source.git`;
    const targetUrl = `${git.url}target.git`;
    expect(withoutHead(lsRemote(sourceUrl))).toEqual(source.refs);
    expect(lsRemote(targetUrl).size).toBe(0);

    const { run, seen } = await createWatchedRun(served, {
      repositories: [{ source: sourceUrl, target: targetUrl }],
      rename_refs: { 'refs/heads/master': 'refs/heads/main' },
      exclude_refs: ['refs/heads/feature/*'],
    });
    await within(untilEnded(seen), 60_000, 'the run to end');
    expect(seen.lastState?.status, JSON.stringify(seen.lastState?.error)).toBe('COMPLETED');

    const target = withoutHead(lsRemote(targetUrl));
    const expected = expectedRefs(source, {
      exclude: /^refs\/heads\/feature\//,
      rename: { 'refs/heads/master': 'refs/heads/main' },
    });
    expect(sorted(target)).toEqual(sorted(expected));
    expect(target.get('refs/heads/main')).toBe(source.refs.get('refs/heads/master'));
    expect(target.has('refs/heads/master')).toBe(false);
    for (const branch of ['develop', 'release/1.0']) expect(target.has(`refs/heads/${branch}`)).toBe(true);
    for (const tag of ['v1.0.0', 'v1.1.0', 'nightly']) {
      expect(target.get(`refs/tags/${tag}`)).toBe(source.refs.get(`refs/tags/${tag}`));
    }
    expect([...target.keys()].filter((ref) => ref.startsWith('refs/heads/feature/'))).toEqual([]);
    expect(
      [...target.keys()].filter((ref) =>
        /^refs\/(merge-requests|pipelines|keep-around|environments)\//.test(ref),
      ),
    ).toEqual([]);

    await expectCompleteStory(served, run.run_id, seen);
    const final = (await served.admin.get<RunSnapshot>(`/runs/${run.run_id}`)).body;
    expect(final.status).toBe('COMPLETED');
    expect(final.stats).toMatchObject({
      repositories: 1,
      repositories_done: 1,
      errors: 0,
      refs: expected.size,
    });
    // The work directory of the run is gone.
    expect(existsSync(join(served.server.config.dataDir, 'work', run.run_id))).toBe(false);
  }, 90_000);

  it('migrates two repositories over file:// in one run', async () => {
    const base = tempDir('file');
    const one = makeSourceRepo(join(base, 'one.git'), { branches: ['develop'], mergeRequests: 1 });
    const two = makeSourceRepo(join(base, 'two.git'), {
      branches: ['hotfix/a', 'hotfix/b'],
      tags: { annotated: ['r1'], lightweight: ['r1-light'] },
      mergeRequests: 3,
    });
    emptyBare(join(base, 'one-target.git'));
    emptyBare(join(base, 'two-target.git'));
    const served = await serve({ concurrency: 1 });
    const { run, seen } = await createWatchedRun(served, {
      repositories: [
        { source: one.url, target: fileUrl(join(base, 'one-target.git')) },
        { source: two.url, target: fileUrl(join(base, 'two-target.git')) },
      ],
      rename_refs: { 'refs/heads/master': 'refs/heads/main' },
    });
    await within(untilEnded(seen), 60_000, 'the run to end');
    expect(seen.lastState?.status, JSON.stringify(seen.lastState?.error)).toBe('COMPLETED');

    const rename = { 'refs/heads/master': 'refs/heads/main' };
    expect(sorted(withoutHead(lsRemote(fileUrl(join(base, 'one-target.git')))))).toEqual(
      sorted(expectedRefs(one, { rename })),
    );
    expect(sorted(withoutHead(lsRemote(fileUrl(join(base, 'two-target.git')))))).toEqual(
      sorted(expectedRefs(two, { rename })),
    );
    await expectCompleteStory(served, run.run_id, seen);
    const final = (await served.admin.get<RunSnapshot>(`/runs/${run.run_id}`)).body;
    expect(final.stats).toMatchObject({ repositories: 2, repositories_done: 2, errors: 0 });
  }, 90_000);

  it('plans an up-to-date target as unchanged, refuses a non-fast-forward unless forced', async () => {
    const base = tempDir('rerun');
    const source = makeSourceRepo(join(base, 'source.git'), { branches: ['develop', 'stable'] });
    const targetDir = emptyBare(join(base, 'target.git'));
    const served = await serve();
    const config = { repositories: [{ source: source.url, target: fileUrl(targetDir) }] };

    const first = await createRun(served, config);
    expect((await waitForRun(served.admin, first.run_id, ended)).status).toBe('COMPLETED');
    const afterFirst = withoutHead(lsRemote(fileUrl(targetDir)));
    expect(sorted(afterFirst)).toEqual(sorted(expectedRefs(source)));

    // Again: nothing to do.
    const second = await createRun(served, config);
    const secondEnd = await waitForRun(served.admin, second.run_id, ended);
    expect(secondEnd.status, JSON.stringify(secondEnd.error)).toBe('COMPLETED');
    const refCount = expectedRefs(source).size;
    const logs = await runLogs(served.admin, second.run_id);
    expect(logs).toContain(`source: plan 0 to create, 0 to update, ${refCount} unchanged`);
    expect(logs).toContain('source: target already up to date');
    expect(withoutHead(lsRemote(fileUrl(targetDir)))).toEqual(afterFirst);

    // The source's develop is rewritten (a force-push there): the target would lose commits.
    const rewritten = rewriteBranch(source.dir, 'refs/heads/develop', 'rewritten history');
    const refused = await createRun(served, config);
    const refusedEnd = await waitForRun(served.admin, refused.run_id, ended);
    expect(refusedEnd.status).toBe('FAILED');
    expect(refusedEnd.error?.code).toBe('NON_FAST_FORWARD');
    expect(refusedEnd.error?.message).toContain('refs/heads/develop');
    expect(refusedEnd.error?.details).toEqual({ refs: ['refs/heads/develop'] });
    expect(refusedEnd.stage).toBe('PLAN');
    // Nothing was pushed.
    expect(withoutHead(lsRemote(fileUrl(targetDir)))).toEqual(afterFirst);

    // With force, the rewrite goes through.
    const forced = await createRun(served, { ...config, force: true });
    const forcedEnd = await waitForRun(served.admin, forced.run_id, ended);
    expect(forcedEnd.status, JSON.stringify(forcedEnd.error)).toBe('COMPLETED');
    const afterForce = withoutHead(lsRemote(fileUrl(targetDir)));
    expect(afterForce.get('refs/heads/develop')).toBe(rewritten);
    expect(sorted(afterForce)).toEqual(
      sorted(expectedRefs({ ...source, refs: withoutHead(lsRemote(source.url)) })),
    );
  }, 90_000);

  it('fails VERIFY when the target changed between APPLY and VERIFY, listing the ref', async () => {
    const base = tempDir('verify');
    const source = makeSourceRepo(join(base, 'source.git'), { branches: ['develop', 'release/2.0'] });
    const targetDir = emptyBare(join(base, 'target.git'));
    const targetUrl = fileUrl(targetDir);
    let intruder: string | undefined;
    const served = await serve({
      hooks: {
        async beforeVerify(repository) {
          // Someone pushes to the target while the migration is between APPLY and VERIFY.
          if (repository.target === targetUrl)
            intruder = addCommit(targetDir, 'refs/heads/develop', 'intruder');
        },
      },
    });
    const run = await createRun(served, { repositories: [{ source: source.url, target: targetUrl }] });
    const end = await waitForRun(served.admin, run.run_id, ended);
    expect(intruder).toBeDefined();
    expect(end.status).toBe('FAILED');
    expect(end.stage).toBe('VERIFY');
    expect(end.error?.code).toBe('VERIFY_MISMATCH');
    expect(end.error?.message).toContain('refs/heads/develop');
    expect(end.error?.details).toEqual({
      mismatches: [
        { ref: 'refs/heads/develop', expected: source.refs.get('refs/heads/develop'), actual: intruder },
      ],
    });
    // Only develop differs: every other ref arrived as planned.
    const target = withoutHead(lsRemote(targetUrl));
    expect(target.get('refs/heads/develop')).toBe(intruder);
    target.delete('refs/heads/develop');
    const expected = expectedRefs(source);
    expected.delete('refs/heads/develop');
    expect(sorted(target)).toEqual(sorted(expected));
  }, 60_000);

  it('cancels during EXPORT of a large repository: git is killed and the run ends CANCELED', async () => {
    const base = tempDir('cancel');
    const big = makeBigRepo(join(base, 'big.git'), 60_000, 2000);
    expect(big.objects).toBeGreaterThanOrEqual(60_000);
    emptyBare(join(base, 'target.git'));
    const git = await daemon(base);
    const served = await serve();
    const sourceUrl = `${git.url}big.git`;
    const workRoot = join(served.server.config.dataDir, 'work');

    const run = await createRun(served, {
      repositories: [{ source: sourceUrl, target: `${git.url}target.git` }],
    });
    const seen = subscribe(served, run.run_id);
    await within(
      seen.until(() => seen.lastState?.stage === 'EXPORT'),
      30_000,
      'the run to reach EXPORT',
    );
    // The clone is going: a git process works for the run right now.
    expect(runGitProcesses(sourceUrl, workRoot).length).toBeGreaterThan(0);
    const canceled = await served.admin.post(`/runs/${run.run_id}/cancel`);
    expect(canceled.status, JSON.stringify(canceled.body)).toBe(200);

    const end = await waitForRun(served.admin, run.run_id, ended, 30_000);
    expect(end.status).toBe('CANCELED');
    expect(end.stage).toBe('EXPORT');
    // No git child left behind (bounded wait: the kill is asynchronous).
    const deadline = Date.now() + 10_000;
    let left = runGitProcesses(sourceUrl, workRoot);
    while (left.length > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      left = runGitProcesses(sourceUrl, workRoot);
    }
    expect(left.map((p) => `${p.pid} ${p.cmdline}`)).toEqual([]);
    // The runner let go of the run and removed its work directory.
    await within(
      (async () => {
        while (served.server.runcast.runner.active > 0)
          await new Promise((resolve) => setTimeout(resolve, 10));
      })(),
      10_000,
      'the runner to finish the canceled run',
    );
    expect(existsSync(join(workRoot, run.run_id))).toBe(false);
    // Nothing reached the target.
    expect(lsRemote(`${git.url}target.git`).size).toBe(0);
  }, 120_000);

  it('keeps tokens out of API answers, events, logs, files in clear and git command lines', async () => {
    const sourceToken = `SECRET-SOURCE-${randomHex(12)}`;
    const targetToken = `SECRET-TARGET-${randomHex(12)}`;
    const tokens = [sourceToken, targetToken];
    const leaks = (text: string | Buffer) =>
      tokens.filter((token) => (typeof text === 'string' ? text.includes(token) : text.includes(token)));

    const base = tempDir('secrets');
    makeBigRepo(join(base, 'mid.git'), 20_000, 500);
    const extra = makeSourceRepo(join(base, 'extra.git'), { branches: ['develop'] });
    emptyBare(join(base, 'mid-target.git'));
    const extraTarget = emptyBare(join(base, 'extra-target.git'));
    const git = await daemon(base);
    let dataDirDuringRun: { path: string; bytes: Buffer }[] = [];
    let dataDir = '';
    const served = await serve({
      hooks: {
        async beforeVerify() {
          // While the run is going, with the mirrors in the work directory.
          if (dataDirDuringRun.length === 0) dataDirDuringRun = readTree(dataDir);
        },
      },
    });
    dataDir = served.server.config.dataDir;
    const sourceUrl = `${git.url}mid.git`;

    // Watch every process while the run goes.
    const gitCommandLines = new Set<string>();
    const processLeaks = new Set<string>();
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        for (const p of gitProcesses()) gitCommandLines.add(p.cmdline);
        for (const p of processesMentioning(tokens)) {
          if (leaks(p.cmdline).length > 0) processLeaks.add(`${p.pid} ${p.cmdline}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();

    const config = {
      repositories: [
        { source: sourceUrl, target: `${git.url}mid-target.git` },
        // The per-repository keys override the run-wide ones.
        {
          source: extra.url,
          target: fileUrl(extraTarget),
          source_token: sourceToken,
          target_token: targetToken,
        },
      ],
      source_token: sourceToken,
      target_token: targetToken,
    };
    const created = await served.admin.post('/runs', {
      project_id: served.projectId,
      kind: 'git-mirror',
      config,
    });
    expect(created.status).toBe(201);
    expect(leaks(JSON.stringify(created.body))).toEqual([]);
    const runId: string = created.body.run_id;
    const seen = subscribe(served, runId);
    const end = await waitForRun(served.admin, runId, ended);
    watching = false;
    await watcher;
    expect(end.status, JSON.stringify(end.error)).toBe('COMPLETED');
    await within(seen.untilStatus('COMPLETED'), 10_000, 'the subscriber to see COMPLETED');

    // The watcher saw the git children of the run, and no token on any command line.
    const commandLines = [...gitCommandLines];
    expect(commandLines.some((line) => line.includes('clone') && line.includes(sourceUrl))).toBe(true);
    expect(commandLines.some((line) => line.includes('push'))).toBe(true);
    expect([...processLeaks]).toEqual([]);
    expect(commandLines.filter((line) => leaks(line).length > 0)).toEqual([]);

    // API answers.
    const answers = [
      await served.admin.get('/runs'),
      await served.admin.get(`/runs?project_id=${served.projectId}`),
      await served.admin.get(`/runs/${runId}`),
      await served.admin.get(`/runs/${runId}/progress?since=0`),
      await served.admin.get(`/runs/${runId}/events?since=0`),
    ];
    for (const answer of answers) {
      expect(answer.status).toBe(200);
      expect(leaks(JSON.stringify(answer.body))).toEqual([]);
    }
    expect((answers[4]?.body.events as unknown[] | undefined)?.length).toBeGreaterThan(5);
    // Events the subscriber saw, run logs, server log lines.
    expect(seen.events.length).toBeGreaterThan(3);
    expect(leaks(JSON.stringify(seen.events))).toEqual([]);
    expect(leaks((await runLogs(served.admin, runId)).join('\n'))).toEqual([]);
    expect(served.logLines.length).toBeGreaterThan(0);
    expect(served.logLines.filter((line) => leaks(line).length > 0)).toEqual([]);

    // Files under the data dir, during the run (mirrors present) and after it (db, WAL, key).
    expect(dataDirDuringRun.some((file) => file.path.includes(`${join(dataDir, 'work')}/`))).toBe(true);
    const after = readTree(dataDir);
    expect(after.some((file) => file.path.endsWith('runcast.db'))).toBe(true);
    for (const file of [...dataDirDuringRun, ...after]) {
      expect(leaks(file.bytes), file.path).toEqual([]);
    }
    // The config is stored, sealed.
    const record = await served.server.runcast.store.getRun(runId);
    const stored = record?.config as Record<string, unknown> & { repositories: Record<string, unknown>[] };
    expect(stored.source_token).toMatch(/^sealed:v1:/);
    expect(stored.target_token).toMatch(/^sealed:v1:/);
    expect(stored.repositories[1]?.source_token).toMatch(/^sealed:v1:/);
    expect(stored.repositories[1]?.target_token).toMatch(/^sealed:v1:/);
    expect(leaks(JSON.stringify(stored))).toEqual([]);
    const dbBytes = after.filter((file) => /runcast\.db(-wal)?$/.test(file.path));
    expect(dbBytes.some((file) => file.bytes.includes('sealed:v1:'))).toBe(true);
  }, 90_000);
});

describe('git-mirror across a server crash', () => {
  afterEach(async () => {
    await killAllServers();
  });

  it('marks a run found RUNNING at start-up FAILED/INTERRUPTED, and its retry completes', async () => {
    requireBuiltServer();
    const base = tempDir('crash');
    makeBigRepo(join(base, 'big.git'), 60_000, 2000);
    emptyBare(join(base, 'target.git'));
    const git = await daemon(base);
    const dataDir = join(tempDir('crash-data'), 'data');
    mkdirSync(dataDir);
    const workRoot = join(dataDir, 'work');
    const sourceUrl = `${git.url}big.git`;
    const targetUrl = `${git.url}target.git`;
    // Git children of a killed server outlive it (they run in process groups of their own):
    // the test kills them, as a supervisor ending the service's cgroup would.
    const killOrphans = () => {
      for (const p of runGitProcesses(sourceUrl, workRoot)) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // Gone already.
        }
      }
    };
    cleanups.push(killOrphans);

    const first = await ServerProcess.start(dataDir, await freePort());
    const admin = await new Api(first.url).login('admin', CHILD_ADMIN_PASSWORD);
    const project = await admin.post('/projects', { name: 'crash' });
    const created = await admin.post('/runs', {
      project_id: project.body.project_id,
      kind: 'git-mirror',
      config: { repositories: [{ source: sourceUrl, target: targetUrl }] },
    });
    expect(created.status).toBe(201);
    const runId: string = created.body.run_id;
    const running = await waitForRun(admin, runId, (run) => run.stage === 'EXPORT', 30_000);
    expect(running.status).toBe('RUNNING');
    expect(first.errorLines).toEqual([]);
    await first.kill();

    killOrphans();
    const deadline = Date.now() + 10_000;
    while (runGitProcesses(sourceUrl, workRoot).length > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    expect(runGitProcesses(sourceUrl, workRoot)).toEqual([]);

    const second = await ServerProcess.start(dataDir, await freePort());
    const again = await new Api(second.url).login('admin', CHILD_ADMIN_PASSWORD);
    const interrupted = (await again.get<RunSnapshot>(`/runs/${runId}`)).body;
    expect(interrupted.status).toBe('FAILED');
    expect(interrupted.error?.code).toBe('INTERRUPTED');

    const retried = await again.post(`/runs/${runId}/retry`);
    expect(retried.status, JSON.stringify(retried.body)).toBe(201);
    expect(retried.body.retry_of).toBe(runId);
    expect(retried.body.run_id).not.toBe(runId);
    const end = await waitForRun(again, retried.body.run_id, ended, 90_000);
    expect(end.status, JSON.stringify(end.error)).toBe('COMPLETED');
    expect(lsRemote(targetUrl).get('refs/heads/master')).toBe(lsRemote(sourceUrl).get('refs/heads/master'));
    expect(second.errorLines).toEqual([]);
    await second.stop();
    // "Work directories are cleaned up": the one the crashed server left is gone too.
    expect(existsSync(join(workRoot, runId)), `${join(workRoot, runId)} left behind`).toBe(false);
  }, 180_000);
});

describe('git-mirror timings', () => {
  it('records the time of a 50,000-object migration through git daemon, with and without a viewer', async () => {
    const base = tempDir('timing');
    const big = makeBigRepo(join(base, 'big.git'), 50_000);
    const git = await daemon(base);
    const served = await serve();
    const sourceUrl = `${git.url}big.git`;

    const migrate = async (viewer: boolean, round: number) => {
      const target = `target-${viewer ? 'viewer' : 'alone'}-${round}.git`;
      emptyBare(join(base, target));
      let resolveEnd: (run: RunSnapshot) => void = () => {};
      const finished = new Promise<RunSnapshot>((resolve) => {
        resolveEnd = resolve;
      });
      let runId = '';
      // In process, without HTTP: the end of the run as the server commits it.
      const unsubscribe = served.server.runcast.bus.subscribe('run-events', ({ events }) => {
        for (const event of events) {
          if (event.run_id === runId && event.type === 'update' && ended(event.snapshot))
            resolveEnd(event.snapshot);
        }
      });
      try {
        const startedMs = performance.now();
        const run = await createRun(served, {
          repositories: [{ source: sourceUrl, target: `${git.url}${target}` }],
        });
        runId = run.run_id;
        let seen: Collector | undefined;
        if (viewer) seen = subscribe(served, runId);
        const current = (await served.admin.get<RunSnapshot>(`/runs/${runId}`)).body;
        const end = ended(current) ? current : await within(finished, 120_000, 'the run to end');
        const seconds = (performance.now() - startedMs) / 1000;
        expect(end.status, JSON.stringify(end.error)).toBe('COMPLETED');
        if (seen) await within(seen.untilStatus('COMPLETED'), 10_000, 'the viewer to see COMPLETED');
        return { seconds, updates: seen?.events.length ?? 0, objects: end.stats?.objects ?? 0 };
      } finally {
        unsubscribe();
      }
    };

    const alone: number[] = [];
    const watched: number[] = [];
    let updates = 0;
    let reported = 0;
    for (let round = 0; round < 2; round++) {
      alone.push((await migrate(false, round)).seconds);
      const withViewer = await migrate(true, round);
      watched.push(withViewer.seconds);
      updates = withViewer.updates;
      reported = withViewer.objects;
    }
    const best = (values: number[]) => Math.min(...values);
    const rate = (seconds: number) => Math.round(big.objects / seconds);
    console.log(
      `git-mirror ${big.objects} objects through git daemon: ${best(alone).toFixed(2)} s (${rate(best(alone))} objects/s) without viewer, ` +
        `${best(watched).toFixed(2)} s (${rate(best(watched))} objects/s) with viewer ` +
        `[runs: without ${alone.map((s) => s.toFixed(2)).join(', ')} s; with ${watched.map((s) => s.toFixed(2)).join(', ')} s; ` +
        `viewer received ${updates} events; stats.objects ${reported}]`,
    );
  }, 300_000);
});
