import type { LogEntry, LogEvent } from '@runcast/protocol';
import type { RunChange, RunRecord } from './store.js';

// How a run and its log events are laid out in SQL rows, and what a commit may change: shared by
// the SQLite and the PostgreSQL store, whose tables have the same columns.

/** A run's row: JSON fields as text, exactly as stored. */
export interface RunRow {
  run_id: string;
  project_id: string;
  kind: string;
  mode: string | null;
  status: string;
  stage: string | null;
  current_stage: string | null;
  progress: string | null;
  stats: string | null;
  error: string | null;
  config: string | null;
  seq: number;
  created_by: string;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  updated_at: string;
  retry_of: string | null;
  log_count: number;
  pruned_through_seq: number;
}

/** A log event's row; `body` is the event's `log` as JSON text. */
export interface EventRow {
  run_id: string;
  seq: number;
  at: string;
  body: string;
}

/** The columns of `runs`, in one order for SELECT and INSERT. */
export const RUN_COLUMNS =
  'run_id, project_id, kind, mode, status, stage, current_stage, progress, stats, error, config, seq, created_by, created_at, started_at, finished_at, updated_at, retry_of, log_count, pruned_through_seq';

/** What a commit may change in a run: its state, never what it was created with. */
export const STATE_COLUMNS = [
  'status',
  'stage',
  'current_stage',
  'progress',
  'stats',
  'error',
  'seq',
  'started_at',
  'finished_at',
  'updated_at',
  'log_count',
  'pruned_through_seq',
] as const;

const FIXED_FIELDS = [
  'run_id',
  'project_id',
  'kind',
  'mode',
  'config',
  'created_by',
  'created_at',
  'retry_of',
] as const;

export const json = (value: unknown): string | null =>
  value === null || value === undefined ? null : JSON.stringify(value);
const parse = <T>(text: string | null): T | null => (text === null ? null : (JSON.parse(text) as T));

export function rowToRun(row: RunRow): RunRecord {
  return {
    ...row,
    kind: row.kind as RunRecord['kind'],
    status: row.status as RunRecord['status'],
    progress: parse(row.progress),
    stats: parse(row.stats),
    error: parse(row.error),
    config: parse(row.config),
  };
}

export function runToRow(run: RunRecord): RunRow {
  return {
    run_id: run.run_id,
    project_id: run.project_id,
    kind: run.kind,
    mode: run.mode,
    status: run.status,
    stage: run.stage,
    current_stage: run.current_stage,
    progress: json(run.progress),
    stats: json(run.stats),
    error: json(run.error),
    config: json(run.config),
    seq: run.seq,
    created_by: run.created_by,
    created_at: run.created_at,
    started_at: run.started_at,
    finished_at: run.finished_at,
    updated_at: run.updated_at,
    retry_of: run.retry_of,
    log_count: run.log_count,
    pruned_through_seq: run.pruned_through_seq,
  };
}

/** A run's state columns, in `STATE_COLUMNS` order. */
export function stateValues(run: RunRecord): (string | number | null)[] {
  return [
    run.status,
    run.stage,
    run.current_stage,
    json(run.progress),
    json(run.stats),
    json(run.error),
    run.seq,
    run.started_at,
    run.finished_at,
    run.updated_at,
    run.log_count,
    run.pruned_through_seq,
  ];
}

export const rowToEvent = (row: EventRow): LogEvent => ({
  run_id: row.run_id,
  seq: row.seq,
  type: 'log',
  at: row.at,
  log: JSON.parse(row.body) as LogEntry,
});

/** A commit's new run must keep what the run was created with and advance its seq. */
export function checkStateChange(current: RunRecord, next: RunRecord): void {
  for (const field of FIXED_FIELDS) {
    if (next[field] !== current[field]) throw new Error(`a commit may not change a run's ${field}`);
  }
  if (next.seq <= current.seq) throw new Error("a commit must advance the run's seq");
}

/**
 * A commit's log events must take seqs after the run's current one, ascending, up to its new seq:
 * then they can never clash with a stored event, which lets a store check them before it writes.
 */
export function checkLogSeqs(current: RunRecord, { run, logs }: RunChange): void {
  let previous = current.seq;
  for (const event of logs) {
    if (event.seq <= previous || event.seq > run.seq) {
      throw new Error(
        `a commit's log events must take ascending seqs in ${current.seq + 1}..${run.seq}; got ${event.seq}`,
      );
    }
    previous = event.seq;
  }
}

/**
 * The runs a claim may take (SQL condition over `runs`, given the placeholders of its parameters):
 * QUEUED and RUNNING runs whose lease ran out or never existed (a RUNNING one left by a Runcast
 * before leases), and, with `reclaim` true, those `owner` held in a previous life. Which kinds is
 * the caller's condition.
 */
export function claimableRuns(now: string, owner: string, reclaim: string): string {
  return `(
    status IN ('QUEUED', 'RUNNING')
    AND (lease_until IS NULL OR lease_until < ${now} OR (${reclaim} AND owner = ${owner}))
  )`;
}
