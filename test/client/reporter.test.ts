import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LogEvent } from '@runcast/protocol';
import { afterAll, describe, expect, it } from 'vitest';
import { ExponentialBackoff, type RuncastError, RunReporter } from '../../packages/client/src/index.js';
import { ADMIN_PASSWORD, Api, startServer } from '../../packages/server/src/test-support/server.js';
import { type LossyProxy, startLossyProxy } from '../support/lossy-proxy.js';
import { CHILD_ADMIN_PASSWORD, freePort, killAllServers, ServerProcess } from '../support/server-process.js';

const LOG_LINES = 300;
const UPDATE_EVERY = 6; // 50 updates among the 300 lines

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Every retained log event of a run, oldest first, page by page. */
async function allLogEvents(api: Api, runId: string): Promise<LogEvent[]> {
  const events: LogEvent[] = [];
  let since = 0;
  for (;;) {
    const page = await api.get(`/runs/${runId}/events?since=${since}&limit=100`);
    expect(page.status).toBe(200);
    expect(page.body.events_truncated).toBe(false);
    events.push(...page.body.events);
    if (page.body.next_since === since || page.body.events.length === 0) return events;
    since = page.body.next_since;
  }
}

/** A project, a worker token for it and an external run, made by the admin. */
async function prepareRun(admin: Api, name: string): Promise<{ runId: string; token: string }> {
  const project = await admin.post('/projects', { name });
  const token = await admin.post('/tokens', { project_id: project.body.project_id, name: 'worker' });
  const run = await admin.post('/runs', { project_id: project.body.project_id, kind: 'external' });
  expect([project.status, token.status, run.status]).toEqual([201, 201, 201]);
  return { runId: run.body.run_id, token: token.body.token };
}

/**
 * What a worker does: RUNNING, 300 log lines with an update every 6, paced so that the run lasts
 * a while; `midway` is called once, halfway through.
 */
async function work(reporter: RunReporter, midway: () => void): Promise<string[]> {
  const expected: string[] = [];
  reporter.update({ status: 'RUNNING', stage: 'EXPORT' });
  for (let i = 0; i < LOG_LINES; i++) {
    const message = `line ${i}`;
    reporter.log('info', message, { data: { i } });
    expected.push(message);
    if (i % UPDATE_EVERY === UPDATE_EVERY - 1) {
      reporter.update({
        progress: { percentage: ((i + 1) * 100) / LOG_LINES, done: i + 1, total: LOG_LINES },
      });
    }
    if (i === LOG_LINES / 2) midway();
    if (i % 5 === 4) await sleep(5);
  }
  await reporter.complete({ progress: { percentage: 100, done: LOG_LINES, total: LOG_LINES } });
  return expected;
}

describe('RunReporter against a real server', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'runcast-reporter-'));
  afterAll(async () => {
    await killAllServers();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('The reporter survives a server restart mid-run with no lost and no doubled log', async () => {
    const port = await freePort();
    let server = await ServerProcess.start(dataDir, port);
    const admin = await new Api(server.url).login('admin', CHILD_ADMIN_PASSWORD);
    const { runId, token } = await prepareRun(admin, 'restart');
    const errors: RuncastError[] = [];
    const reporter = new RunReporter({
      baseUrl: server.url,
      runId,
      token,
      batchIntervalMs: 20,
      maxBatch: 25,
      retryPolicy: new ExponentialBackoff({ initialDelayMs: 50, maxDelayMs: 400 }),
      requestTimeoutMs: 5000,
      onError: (error) => errors.push(error),
    });
    let restart: Promise<void> | undefined;
    let killedAtMs = 0;
    let restartedAtMs = 0;
    const expected = await work(reporter, () => {
      restart = (async () => {
        killedAtMs = Date.now();
        const exit = await server.kill();
        expect(exit.signal).toBe('SIGKILL');
        server = await ServerProcess.start(dataDir, port);
        restartedAtMs = Date.now();
      })();
    });
    await restart;

    expect(errors).toEqual([]);
    // The kill cost at least one request its answer: the reporter had to retry.
    expect(reporter.getStats().retries).toBeGreaterThan(0);
    const events = await allLogEvents(admin, runId);
    expect(events.map((e) => e.log.message)).toEqual(expected);
    expect(events.map((e) => e.log.data)).toEqual(expected.map((_, i) => ({ i })));
    // Mid-run indeed: lines were committed both before the kill and after the restart.
    expect(events.some((e) => Date.parse(e.at) < killedAtMs)).toBe(true);
    expect(events.some((e) => Date.parse(e.at) > restartedAtMs)).toBe(true);
    const run = await admin.get(`/runs/${runId}`);
    expect(run.body).toMatchObject({ status: 'COMPLETED', progress: { percentage: 100 } });
    expect(server.errorLines).toEqual([]);
  }, 60_000);

  describe('when the server commits and the answer is lost', () => {
    let proxy: LossyProxy | undefined;
    afterAll(async () => {
      await proxy?.close();
    });

    it('retries with the same key and nothing is applied twice', async () => {
      const server = await startServer();
      try {
        const admin = await new Api(server.url).login('admin', ADMIN_PASSWORD);
        const { runId, token } = await prepareRun(admin, 'lossy');
        proxy = await startLossyProxy(server.url);
        // Every 7th request is applied with its answer lost; every 11th never arrives.
        proxy.decide = ({ index }) => (index % 7 === 3 ? 'response' : index % 11 === 5 ? 'request' : 'none');
        const errors: RuncastError[] = [];
        const reporter = new RunReporter({
          baseUrl: proxy.url,
          runId,
          token,
          batchIntervalMs: 10,
          maxBatch: 10,
          retryPolicy: new ExponentialBackoff({ initialDelayMs: 20, maxDelayMs: 100 }),
          onError: (error) => errors.push(error),
        });
        const expected = await work(reporter, () => {});
        expect(errors).toEqual([]);

        const requests = proxy.requests;
        const lostAnswers = requests.filter((r) => r.loss === 'response');
        expect(lostAnswers.some((r) => r.method === 'POST')).toBe(true);
        expect(lostAnswers.some((r) => r.method === 'PATCH')).toBe(true);
        expect(lostAnswers.every((r) => r.upstreamStatus === 200 || r.upstreamStatus === 201)).toBe(true);
        // Each request lost on either way was sent again with its key; the repeat was answered 2xx.
        const keyOf = (r: (typeof requests)[number]) => String(r.headers['idempotency-key']);
        for (const lost of requests.filter((r) => r.loss !== 'none')) {
          const repeats = requests.filter((r) => r.index > lost.index && keyOf(r) === keyOf(lost));
          expect(repeats.length).toBeGreaterThan(0);
          expect(repeats.some((r) => r.loss === 'none' && (r.upstreamStatus ?? 0) < 300)).toBe(true);
          expect(new Set([lost, ...repeats].map((r) => r.body)).size).toBe(1);
        }

        const events = await allLogEvents(admin, runId);
        expect(events.map((e) => e.log.message)).toEqual(expected);
        // No doubled update either: one seq per log line and per distinct update request applied.
        const appliedUpdates = new Set(
          requests.filter((r) => r.method === 'PATCH' && r.upstreamStatus === 200).map(keyOf),
        );
        const run = await admin.get(`/runs/${runId}`);
        expect(run.body.status).toBe('COMPLETED');
        expect(run.body.seq).toBe(LOG_LINES + appliedUpdates.size);
        expect(server.errorLogs).toEqual([]);
      } finally {
        await server.close();
      }
    }, 60_000);
  });
});
