import { createHash } from 'node:crypto';
import {
  canTransition,
  isTerminal,
  type LogEntry,
  type LogEvent,
  type ProgressUpdate,
  type RunKind,
  type RunSnapshot,
  type RunStatus,
} from '@runcast/protocol';
import type { Bus } from '../bus/bus.js';
import { AppError } from '../errors.js';
import { newId } from '../ids.js';
import type {
  IdempotencyClaim,
  RunChange,
  RunFence,
  RunQuery,
  RunRecord,
  RunReplay,
  Store,
} from '../store/store.js';
import { changeEvents, toSnapshot } from './snapshot.js';

/**
 * What RunService needs to know about run kinds: which exist on this server, how a kind's
 * config is checked and stored (secrets sealed), and who takes a new run of it (the runner).
 */
export interface RunKinds {
  has(kind: RunKind): boolean;
  /** Validates a config and returns the form to store; throws INVALID_INPUT. */
  prepareConfig(
    kind: RunKind,
    config: Record<string, unknown> | undefined,
  ): Record<string, unknown> | undefined;
  /** Called after a run was created (and after a retry created one). */
  created(run: RunRecord): void;
}

/** Only `external` runs, moved by their workers. */
export const EXTERNAL_ONLY: RunKinds = {
  has: (kind) => kind === 'external',
  prepareConfig: (_kind, config) => config,
  created: () => {},
};

/** What a producer's request may add to a change. */
export interface ProducerRequestOptions {
  /** The request's `Idempotency-Key`: repeats with the same key for the same run are applied once. */
  idempotencyKey?: string | undefined;
}

/** What a change may carry: a producer's key, or the lease of the node executing the run. */
export interface WriteOptions extends ProducerRequestOptions {
  /** The runner's lease: the change is refused with LEASE_LOST once another node claimed the run. */
  fence?: RunFence | undefined;
}

/** Identifies a request by what it asks for, so that one key cannot stand for two requests. */
function fingerprint(operation: string, body: unknown): string {
  return createHash('sha256').update(operation).update('\n').update(JSON.stringify(body)).digest('base64url');
}

export interface NewRun {
  project_id: string;
  kind: RunKind;
  mode?: string | undefined;
  config?: Record<string, unknown> | undefined;
  created_by: string;
  retry_of?: string;
}

/** Applies a partial update: a present field replaces the stored one, an absent one is untouched. */
export function applyProgressUpdate(run: RunRecord, patch: ProgressUpdate, at: string): RunRecord {
  if (isTerminal(run.status)) {
    throw new AppError('RUN_TERMINAL', `run ${run.run_id} is ${run.status} and can no longer change`);
  }
  const next: RunRecord = { ...run, updated_at: at };
  if (patch.status !== undefined) {
    if (!canTransition(run.kind, run.status, patch.status)) {
      throw new AppError(
        'INVALID_TRANSITION',
        `a ${run.kind} run cannot go from ${run.status} to ${patch.status}`,
      );
    }
    next.status = patch.status;
  }
  if (Object.hasOwn(patch, 'stage')) next.stage = patch.stage ?? null;
  if (Object.hasOwn(patch, 'current_stage')) next.current_stage = patch.current_stage ?? null;
  if (Object.hasOwn(patch, 'progress')) next.progress = patch.progress ?? null;
  if (Object.hasOwn(patch, 'stats')) next.stats = patch.stats ?? null;
  if (Object.hasOwn(patch, 'error')) next.error = patch.error ?? null;
  if (next.status === 'RUNNING' && next.started_at === null) next.started_at = at;
  if (isTerminal(next.status)) next.finished_at = at;
  next.seq = run.seq + 1;
  return next;
}

/**
 * The only writer of runs. Every change is committed with its seq before it is acknowledged, and
 * then handed to the Bus.
 */
export class RunService {
  constructor(
    private readonly store: Store,
    private readonly bus: Bus,
    private readonly kinds: RunKinds = EXTERNAL_ONLY,
    private readonly now: () => Date = () => new Date(),
  ) {}

  /** Creates a run in CREATED state at seq 0. */
  async create(input: NewRun): Promise<RunRecord> {
    if (!this.kinds.has(input.kind)) {
      throw new AppError('KIND_UNSUPPORTED', `runs of kind "${input.kind}" are not available on this server`);
    }
    const at = this.now().toISOString();
    const run: RunRecord = {
      run_id: newId('run'),
      project_id: input.project_id,
      kind: input.kind,
      mode: input.mode ?? null,
      status: 'CREATED',
      stage: null,
      current_stage: null,
      progress: null,
      stats: null,
      seq: 0,
      created_at: at,
      started_at: null,
      finished_at: null,
      updated_at: at,
      error: null,
      retry_of: input.retry_of ?? null,
      config: input.retry_of
        ? (input.config ?? null)
        : (this.kinds.prepareConfig(input.kind, input.config) ?? null),
      created_by: input.created_by,
      log_count: 0,
      pruned_through_seq: 0,
    };
    await this.store.createRun(run);
    this.kinds.created(run);
    return run;
  }

  get(runId: string): Promise<RunRecord | undefined> {
    return this.store.getRun(runId);
  }

  list(query: RunQuery): Promise<RunRecord[]> {
    return this.store.listRuns(query);
  }

  /** The run and its log events after `since` (a page: `limit` events, about `maxBytes`), read consistently. */
  replay(runId: string, since: number, limit: number, maxBytes?: number): Promise<RunReplay | undefined> {
    return this.store.replay(runId, since, limit, maxBytes);
  }

  /**
   * RunService.update_run_progress: partial update, one seq, durable when it resolves. With an
   * idempotency key already used for this run, commits nothing and answers the first snapshot.
   */
  async updateProgress(
    runId: string,
    patch: ProgressUpdate,
    options: WriteOptions = {},
  ): Promise<RunSnapshot> {
    return this.commitOnce(
      runId,
      (current) => {
        const at = this.now().toISOString();
        const next = applyProgressUpdate(current, patch, at);
        return { run: next, logs: [] };
      },
      (change) => toSnapshot(change.run),
      options,
      () => fingerprint('progress', patch),
    );
  }

  /** Moves a run to `status` (used by the runner, under its lease, and by cancel). */
  setStatus(
    runId: string,
    status: RunStatus,
    error?: ProgressUpdate['error'],
    options: WriteOptions = {},
  ): Promise<RunSnapshot> {
    return this.updateProgress(runId, error === undefined ? { status } : { status, error }, options);
  }

  /**
   * Appends log lines, one seq each. With an idempotency key already used for this run, commits
   * nothing and answers the seqs the first request took.
   */
  async appendLogs(
    runId: string,
    entries: readonly LogEntry[],
    options: WriteOptions = {},
  ): Promise<{ first_seq: number; last_seq: number }> {
    return this.commitOnce(
      runId,
      (current) => {
        if (isTerminal(current.status)) {
          throw new AppError('RUN_TERMINAL', `run ${runId} is ${current.status} and takes no more logs`);
        }
        const at = this.now().toISOString();
        const events: LogEvent[] = entries.map((log, index) => ({
          run_id: runId,
          seq: current.seq + 1 + index,
          type: 'log',
          at,
          log,
        }));
        return { run: { ...current, seq: current.seq + entries.length }, logs: events };
      },
      ({ logs }) => ({ first_seq: logs[0]?.seq ?? 0, last_seq: logs[logs.length - 1]?.seq ?? 0 }),
      options,
      () => fingerprint('logs', entries),
    );
  }

  /** Ends a run CANCELED, and asks the node executing it to stop. */
  async cancel(runId: string): Promise<RunSnapshot> {
    const snapshot = await this.setStatus(runId, 'CANCELED');
    this.bus.publish({ type: 'cancel', run_id: runId });
    return snapshot;
  }

  /** Creates a new run with the configuration of a FAILED or CANCELED one. */
  async retry(runId: string, createdBy: string): Promise<RunRecord> {
    const run = await this.store.getRun(runId);
    if (!run) throw new AppError('RUN_NOT_FOUND', `run ${runId} not found`);
    if (run.status !== 'FAILED' && run.status !== 'CANCELED') {
      throw new AppError(
        'INVALID_TRANSITION',
        `only a FAILED or CANCELED run can be retried; this one is ${run.status}`,
      );
    }
    return this.create({
      project_id: run.project_id,
      kind: run.kind,
      mode: run.mode ?? undefined,
      config: run.config ?? undefined,
      created_by: createdBy,
      retry_of: run.run_id,
    });
  }

  /**
   * Commits `change` and answers `answer(change)`; with an idempotency key, at most once per run
   * and key — a repeat publishes nothing and answers what the first request was answered.
   */
  private async commitOnce<T>(
    runId: string,
    change: (current: RunRecord) => RunChange,
    answer: (change: RunChange) => T,
    { idempotencyKey, fence }: WriteOptions,
    requestFingerprint: () => string,
  ): Promise<T> {
    let answered: { value: T } | undefined;
    const claim: IdempotencyClaim | undefined =
      idempotencyKey === undefined
        ? undefined
        : {
            key: idempotencyKey,
            fingerprint: requestFingerprint(),
            response: (committed) => {
              answered = { value: answer(committed) };
              return JSON.stringify(answered.value);
            },
          };
    const result = await this.store.commitRun(runId, change, { idempotency: claim, fence });
    if (result.replayed) return JSON.parse(result.response) as T;
    this.publish(result.change);
    return answered ? answered.value : answer(result.change);
  }

  private publish(change: RunChange): void {
    this.bus.publish({ type: 'run-events', events: changeEvents(change) });
  }
}
