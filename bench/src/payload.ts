import type { LogEntry, ProgressUpdate, RunSnapshot, RunStatus } from '@runcast/protocol';

/**
 * What the benches publish. Runcast's producer PATCHes `progressUpdate`; the baselines broadcast
 * `updateEvent`, the same JSON a Runcast update event has (about 700 bytes). Both carry the
 * scheduled send time in `snapshot.progress.done` (ms since the epoch, sub-ms precision), and
 * Runcast's log lines carry it in `log.data.t`, so one parser measures latency on every system.
 */

/** Run ids of the baselines: same length as Runcast's, so frames have the same size. */
export function baselineRunIds(count: number): string[] {
  return Array.from({ length: count }, (_unused, i) => `run_BENCH${String(i).padStart(21, '0')}`);
}

const BASELINE_PROJECT = 'prj_BENCH000000000000000000000';
const CREATED_AT = '2026-01-01T00:00:00.000Z';

/** The body of one Runcast `PATCH …/progress`. */
export function progressUpdate(
  sentAtMs: number,
  index: number,
  status: RunStatus = 'RUNNING',
): ProgressUpdate {
  return {
    status,
    stage: 'EXPORT',
    current_stage: 'EXPORT group/api (2/5)',
    progress: {
      percentage: index % 100,
      message: 'Receiving objects',
      done: sentAtMs,
      total: 10_000,
      unit: 'objects',
      rate_per_s: 812.4,
      eta_s: 7,
    },
    stats: { repositories: 5, repositories_done: 1, refs: 120, objects: index, bytes: 1_234_567, errors: 0 },
  };
}

/** One log line as Runcast's producer posts it. */
export function logEntry(sentAtMs: number, index: number): LogEntry {
  return {
    level: 'info',
    message: `Pushed ${index % 50} refs to group/api`,
    stage: 'APPLY',
    data: { t: sentAtMs },
  };
}

/** A baseline's event, shaped like Runcast's `update` (or opening `snapshot`) event. */
export function updateEvent(
  runId: string,
  seq: number,
  sentAtMs: number,
  type: 'update' | 'snapshot',
  status: RunStatus,
): { run_id: string; seq: number; type: string; at: string; snapshot: RunSnapshot } {
  const at = new Date(sentAtMs).toISOString();
  const update = progressUpdate(sentAtMs, seq, status);
  return {
    run_id: runId,
    seq,
    type,
    at,
    snapshot: {
      run_id: runId,
      project_id: BASELINE_PROJECT,
      kind: 'external',
      mode: null,
      status,
      stage: update.stage ?? null,
      current_stage: update.current_stage ?? null,
      progress: update.progress ?? null,
      stats: update.stats ?? null,
      seq,
      created_at: CREATED_AT,
      started_at: CREATED_AT,
      finished_at: status === 'COMPLETED' ? at : null,
      updated_at: at,
      error: null,
      retry_of: null,
    },
  };
}

/** The send time an event carries (a whole snapshot or a delta's patch), if it carries one. */
export function sentAtOf(event: unknown): number | undefined {
  const e = event as {
    snapshot?: { progress?: { done?: unknown } | null };
    patch?: { progress?: { done?: unknown } | null };
    log?: { data?: { t?: unknown } };
  } | null;
  // A delta update carries the send time in its patch, as `progress.done` changes every time.
  const t = e?.snapshot?.progress?.done ?? e?.patch?.progress?.done ?? e?.log?.data?.t;
  return typeof t === 'number' ? t : undefined;
}

/** When the server committed an event: its `at` (ms since the epoch, ms precision). */
export function committedAtOf(event: unknown): number | undefined {
  const at = (event as { at?: unknown } | null)?.at;
  return typeof at === 'string' ? Date.parse(at) : undefined;
}
