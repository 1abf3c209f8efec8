import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LogEntry, LogEvent, ProgressUpdate, RunSnapshot } from '@runcast/protocol';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Api } from '../../packages/server/src/test-support/server.js';
import { inFlight } from '../support/async.js';
import {
  CHILD_ADMIN_PASSWORD,
  type Exit,
  freePort,
  killAllServers,
  requireBuiltServer,
  ServerProcess,
} from '../support/server-process.js';

// DESIGN §3: "An acknowledged update is durable (it survives `kill -9`) and has its seq."
// The server runs as a real child process on a real SQLite file; it is killed with SIGKILL right
// after the last acknowledgement and restarted on the same data dir and port.

const UPDATES = 500;
const LOG_LINES = 500;
const BATCH_SIZE = 5;
const BATCHES = 20; // 20 batches of 5 lines + 400 single lines = 500 lines
const IN_FLIGHT = 8;
const EVENTS_PAGE = 100;

type Op =
  | { kind: 'update'; index: number; body: ProgressUpdate }
  | { kind: 'logs'; entries: LogEntry[]; batch: boolean };

interface AckedUpdate {
  sent: ProgressUpdate;
  seq: number;
  snapshot: RunSnapshot;
}

interface AckedLog {
  seq: number;
  level: LogEntry['level'];
  message: string;
}

const LEVELS: LogEntry['level'][] = ['debug', 'info', 'warn', 'error'];

/** 500 updates and 500 log lines (400 single, 20 batches of 5), interleaved. */
function buildOps(): Op[] {
  const updates: Op[] = [];
  for (let i = 0; i < UPDATES; i++) {
    updates.push({
      kind: 'update',
      index: i,
      body: {
        status: 'RUNNING',
        progress: {
          percentage: Math.round((i * 100 * 100) / UPDATES) / 100,
          message: `Receiving objects ${i + 1}/${UPDATES}`,
          done: (i + 1) * 10,
          total: UPDATES * 10,
          unit: 'objects',
        },
      },
    });
  }
  const logs: Op[] = [];
  let line = 0;
  const entry = (): LogEntry => {
    line++;
    return { level: LEVELS[line % LEVELS.length]!, message: `line ${line} — "pushed" ${line * 3} refs ✓` };
  };
  const singles = LOG_LINES - BATCHES * BATCH_SIZE;
  for (let i = 0; i < singles; i++) {
    logs.push({ kind: 'logs', entries: [entry()], batch: false });
    if ((i + 1) % (singles / BATCHES) === 0) {
      logs.push({ kind: 'logs', entries: Array.from({ length: BATCH_SIZE }, entry), batch: true });
    }
  }
  // Merge in proportion, so both kinds keep arriving until the very last acknowledgement.
  const ops: Op[] = [];
  let u = 0;
  let l = 0;
  while (u < updates.length || l < logs.length) {
    if (l >= logs.length || (u < updates.length && u / updates.length <= l / logs.length))
      ops.push(updates[u++]!);
    else ops.push(logs[l++]!);
  }
  return ops;
}

describe('durability: acknowledged writes survive kill -9', () => {
  let dataDir: string | undefined;
  let port: number;
  let runId: string;
  let ackedUpdates: AckedUpdate[] = [];
  let ackedLogs: AckedLog[] = [];
  let firstExit: Exit;
  // What a user sees after the restart.
  let runAfter: RunSnapshot;
  let snapshotAfter: RunSnapshot;
  const eventsAfter: LogEvent[] = [];
  let truncatedPages = 0;
  let restarted: ServerProcess;

  beforeAll(async () => {
    requireBuiltServer();
    dataDir = mkdtempSync(join(tmpdir(), 'runcast-durability-'));
    port = await freePort();

    // First life: write and have everything acknowledged.
    const first = await ServerProcess.start(dataDir, port);
    const admin = await new Api(first.url).login('admin', CHILD_ADMIN_PASSWORD);
    const project = await admin.post('/projects', { name: 'durability' });
    expect(project.status, JSON.stringify(project.body)).toBe(201);
    const run = await admin.post('/runs', { project_id: project.body.project_id, kind: 'external' });
    expect(run.status, JSON.stringify(run.body)).toBe(201);
    runId = run.body.run_id;

    const tasks = buildOps().map((op) => async () => {
      if (op.kind === 'update') {
        const answer = await admin.patch<RunSnapshot>(`/runs/${runId}/progress`, op.body);
        if (answer.status !== 200) {
          throw new Error(
            `update ${op.index} not acknowledged: ${answer.status} ${JSON.stringify(answer.body)}`,
          );
        }
        ackedUpdates.push({ sent: op.body, seq: answer.body.seq, snapshot: answer.body });
      } else {
        const body = op.batch ? { entries: op.entries } : op.entries[0];
        const answer = await admin.post<{ first_seq: number; last_seq: number }>(`/runs/${runId}/logs`, body);
        if (answer.status !== 201) {
          throw new Error(
            `log "${op.entries[0]!.message}" not acknowledged: ${answer.status} ${JSON.stringify(answer.body)}`,
          );
        }
        const { first_seq, last_seq } = answer.body;
        if (last_seq - first_seq + 1 !== op.entries.length) {
          throw new Error(`${op.entries.length} log lines acknowledged with seqs ${first_seq}..${last_seq}`);
        }
        op.entries.forEach((entry, i) => {
          ackedLogs.push({ seq: first_seq + i, level: entry.level, message: entry.message });
        });
      }
    });
    await inFlight(tasks, IN_FLIGHT);
    // Right after the last acknowledgement: no graceful shutdown.
    firstExit = await first.kill();
    expect(first.errorLines).toEqual([]);

    ackedUpdates = ackedUpdates.sort((a, b) => a.seq - b.seq);
    ackedLogs = ackedLogs.sort((a, b) => a.seq - b.seq);

    // Second life on the same data dir and port.
    restarted = await ServerProcess.start(dataDir, port);
    const again = await new Api(restarted.url).login('admin', CHILD_ADMIN_PASSWORD);
    const got = await again.get<RunSnapshot>(`/runs/${runId}`);
    expect(got.status, JSON.stringify(got.body)).toBe(200);
    runAfter = got.body;
    const progress = await again.get<RunSnapshot>(`/runs/${runId}/progress`);
    expect(progress.status, JSON.stringify(progress.body)).toBe(200);
    snapshotAfter = progress.body;

    let since = 0;
    for (let page = 0; ; page++) {
      if (page > (UPDATES + LOG_LINES) / EVENTS_PAGE + 5)
        throw new Error(`events paging did not end (since=${since})`);
      const answer = await again.get<{
        events: LogEvent[];
        events_truncated: boolean;
        next_since: number;
        seq: number;
      }>(`/runs/${runId}/events?since=${since}&limit=${EVENTS_PAGE}`);
      expect(answer.status, JSON.stringify(answer.body)).toBe(200);
      if (answer.body.events_truncated) truncatedPages++;
      if (answer.body.events.length === 0) break;
      eventsAfter.push(...answer.body.events);
      if (answer.body.next_since <= since)
        throw new Error(`next_since ${answer.body.next_since} did not advance past ${since}`);
      since = answer.body.next_since;
    }
  }, 120_000);

  afterAll(async () => {
    await killAllServers();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('acknowledged every write with its own seq before the kill', () => {
    expect(firstExit.signal).toBe('SIGKILL');
    expect(ackedUpdates).toHaveLength(UPDATES);
    expect(ackedLogs).toHaveLength(LOG_LINES);
    const seqs = [...ackedUpdates.map((u) => u.seq), ...ackedLogs.map((l) => l.seq)].sort((a, b) => a - b);
    expect(seqs).toEqual(Array.from({ length: UPDATES + LOG_LINES }, (_, i) => i + 1));
  });

  it('keeps the run at the highest acknowledged seq after the restart', () => {
    const highest = Math.max(...ackedUpdates.map((u) => u.seq), ...ackedLogs.map((l) => l.seq));
    expect(highest).toBe(UPDATES + LOG_LINES);
    expect(runAfter.seq).toBeGreaterThanOrEqual(highest);
    expect(runAfter.seq).toBe(UPDATES + LOG_LINES);
    expect(snapshotAfter.seq).toBe(runAfter.seq);
  });

  it('replays every acknowledged log line with its seq and message', () => {
    expect(truncatedPages).toBe(0);
    expect(eventsAfter.every((event) => event.type === 'log' && event.run_id === runId)).toBe(true);
    const replayed = eventsAfter.map((event) => ({
      seq: event.seq,
      level: event.log.level,
      message: event.log.message,
    }));
    expect(replayed).toEqual(ackedLogs);
  });

  it('serves the state of the last acknowledged update', () => {
    const last = ackedUpdates[ackedUpdates.length - 1]!;
    const { seq: _snapshotSeq, ...state } = snapshotAfter;
    const { seq: _lastSeq, ...expected } = last.snapshot;
    expect(state).toEqual(expected);
    expect(snapshotAfter.status).toBe('RUNNING');
    expect(snapshotAfter.progress).toEqual(last.sent.progress);
    const { seq: _runSeq, ...runState } = runAfter;
    expect(runState).toEqual(state);
  });

  it('hands out unique, strictly increasing seqs', () => {
    const seqs = eventsAfter.map((event) => event.seq);
    for (let i = 1; i < seqs.length; i++) expect(seqs[i]!).toBeGreaterThan(seqs[i - 1]!);
    expect(new Set(seqs).size).toBe(seqs.length);
    expect(seqs[seqs.length - 1]!).toBeLessThanOrEqual(runAfter.seq);
  });

  it('logs no error on the restarted server', () => {
    expect(restarted.errorLines).toEqual([]);
  });
});
