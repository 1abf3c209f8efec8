import type { RunEvent, RunSnapshot } from '@runcast/protocol';
import type { RunChange, RunRecord } from '../store/store.js';

/** The wire view of a run: its snapshot fields, never its config or bookkeeping. */
export function toSnapshot(run: RunRecord): RunSnapshot {
  return {
    run_id: run.run_id,
    project_id: run.project_id,
    kind: run.kind,
    mode: run.mode,
    status: run.status,
    stage: run.stage,
    current_stage: run.current_stage,
    progress: run.progress,
    stats: run.stats,
    seq: run.seq,
    created_at: run.created_at,
    started_at: run.started_at,
    finished_at: run.finished_at,
    updated_at: run.updated_at,
    error: run.error,
    retry_of: run.retry_of,
  };
}

/** The `update` event that carries `run`'s state at its seq. */
export function updateEvent(run: RunRecord, at: string): RunEvent {
  return { run_id: run.run_id, seq: run.seq, type: 'update', at, snapshot: toSnapshot(run) };
}

/** What subscribers are told of a committed change: its log events, or else one update. */
export function changeEvents({ run, logs }: RunChange): RunEvent[] {
  return logs.length > 0 ? [...logs] : [updateEvent(run, run.updated_at)];
}
