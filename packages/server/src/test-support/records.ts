import type { RunRecord } from '../store/store.js';

/** A moment every fixture record is dated. */
export const FIXTURE_AT = '2026-01-01T00:00:00.000Z';

/** A new external run as a store holds it, for store unit tests. */
export function newRunRecord(runId: string, projectId: string, createdBy: string): RunRecord {
  return {
    run_id: runId,
    project_id: projectId,
    kind: 'external',
    mode: null,
    status: 'CREATED',
    stage: null,
    current_stage: null,
    progress: null,
    stats: null,
    seq: 0,
    created_at: FIXTURE_AT,
    started_at: null,
    finished_at: null,
    updated_at: FIXTURE_AT,
    error: null,
    retry_of: null,
    config: null,
    created_by: createdBy,
    log_count: 0,
    pruned_through_seq: 0,
  };
}
