/**
 * Load process: Runcast's producer. Moves runs to RUNNING, then PATCHes progress and POSTs log
 * lines to every run at fixed rates (open loop, send time in the payload), and on `finish` waits
 * for every request to be answered and completes each run, reporting what was acknowledged.
 */
import { serveCommands } from '../ipc.js';
import { Pacer } from '../pacer.js';
import { logEntry, progressUpdate } from '../payload.js';
import { type Percentiles, percentiles } from '../percentiles.js';
import { requestText } from '../raw-http.js';
import { nowMs, sleep } from '../time.js';
import { RequestPool } from './request-pool.js';

export interface ProducerStartArgs {
  host: string;
  port: number;
  token: string;
  runIds: string[];
  updatesPerSPerRun: number;
  logsPerSPerRun: number;
  connections: number;
}

export interface ProducerFinishResult {
  runs: Record<string, { finalSeq: number; logs: number }>;
  updatesSent: number;
  updatesAcked: number;
  logsAcked: number;
  errors: number;
  errorExamples: string[];
  maxQueued: number;
  /** From the scheduled send to the acknowledgement of each PATCH. */
  updateAckLatency: Percentiles;
  /** Requests still unanswered when `finish` gave up waiting. */
  unanswered: number;
}

let pool: RequestPool | undefined;
let pacers: Pacer[] = [];
let settings: ProducerStartArgs | undefined;
const logsAcked = new Map<string, number>();
let updatesSent = 0;
let updatesAcked = 0;
let inFlight = 0;
let errors = 0;
const errorExamples: string[] = [];
let ackLatency: number[] = [];

function headers(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

function failed(what: string): void {
  errors++;
  if (errorExamples.length < 5) errorExamples.push(what);
}

/** Sends one request and counts its answer; resolves with the body (undefined on failure). */
async function send(text: string, dueMs: number, what: string): Promise<string | undefined> {
  inFlight++;
  try {
    const { response } = await pool!.send(text, dueMs);
    if (response.status >= 300) {
      failed(`${what}: ${response.status} ${response.body.slice(0, 200)}`);
      return undefined;
    }
    return response.body;
  } catch (err) {
    failed(`${what}: ${(err as Error).message}`);
    return undefined;
  } finally {
    inFlight--;
  }
}

function patch(
  runId: string,
  index: number,
  dueMs: number,
  status: 'RUNNING' | 'COMPLETED',
): Promise<string | undefined> {
  const body = JSON.stringify(progressUpdate(dueMs, index, status));
  return send(
    requestText('PATCH', `/api/v1/runs/${runId}/progress`, headers(settings!.token), body),
    dueMs,
    'PATCH',
  );
}

async function start(args: ProducerStartArgs): Promise<{ runs: number }> {
  settings = args;
  pool = await RequestPool.open(args.host, args.port, args.connections);
  await Promise.all(args.runIds.map((runId) => patch(runId, 0, nowMs(), 'RUNNING')));
  if (errors > 0) throw new Error(`could not start the runs: ${errorExamples.join('; ')}`);
  for (const runId of args.runIds) logsAcked.set(runId, 0);
  const runs = args.runIds;
  pacers = [
    new Pacer(args.updatesPerSPerRun * runs.length, (index, dueMs) => {
      updatesSent++;
      void patch(runs[index % runs.length]!, index, dueMs, 'RUNNING').then((body) => {
        if (body === undefined) return;
        updatesAcked++;
        ackLatency.push(nowMs() - dueMs);
      });
    }),
    new Pacer(args.logsPerSPerRun * runs.length, (index, dueMs) => {
      const runId = runs[index % runs.length]!;
      const body = JSON.stringify(logEntry(dueMs, index));
      void send(
        requestText('POST', `/api/v1/runs/${runId}/logs`, headers(args.token), body),
        dueMs,
        'POST logs',
      ).then((answer) => {
        if (answer !== undefined) logsAcked.set(runId, (logsAcked.get(runId) ?? 0) + 1);
      });
    }),
  ];
  for (const pacer of pacers) pacer.start();
  return { runs: runs.length };
}

async function finish(args: { waitMs: number }): Promise<ProducerFinishResult> {
  for (const pacer of pacers) pacer.stop();
  const started = Date.now();
  while (inFlight > 0 && Date.now() - started < args.waitMs) await sleep(20);
  const unanswered = inFlight;
  const runs: ProducerFinishResult['runs'] = {};
  await Promise.all(
    settings!.runIds.map(async (runId) => {
      const body = await patch(runId, 0, nowMs(), 'COMPLETED');
      const finalSeq = body === undefined ? -1 : (JSON.parse(body) as { seq: number }).seq;
      runs[runId] = { finalSeq, logs: logsAcked.get(runId) ?? 0 };
    }),
  );
  let logs = 0;
  for (const count of logsAcked.values()) logs += count;
  const result: ProducerFinishResult = {
    runs,
    updatesSent,
    updatesAcked,
    logsAcked: logs,
    errors,
    errorExamples,
    maxQueued: pool!.maxQueued,
    updateAckLatency: percentiles(ackLatency),
    unanswered,
  };
  ackLatency = [];
  pool!.close();
  return result;
}

serveCommands({
  start: (args) => start(args as ProducerStartArgs),
  finish: (args) => finish(args as { waitMs: number }),
});
