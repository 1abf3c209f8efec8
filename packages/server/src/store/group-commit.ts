import { AppError } from '../errors.js';
import type {
  CommitOptions,
  CommitResult,
  IdempotencyClaim,
  RunChange,
  RunFence,
  RunRecord,
} from './store.js';

// What the SQLite and the PostgreSQL store share about group commit: the settings, a queued
// `commitRun` call, how a batch settles, and the idempotency check each call makes.

/** Settings of a store's commits, whatever its engine. */
export interface CommitSettings {
  /** Log events kept per run. */
  eventRetention: number;
  /** Idempotency keys older than this may be pruned (default 24 h). */
  idempotencyTtlMs?: number;
  /** The clock that dates idempotency keys; injectable in tests. */
  now?: () => Date;
  /**
   * Most `commitRun` calls one transaction takes (default 256): one batch must not hold the
   * run locks, and the event loop, for long; the rest wait for the next batch.
   */
  maxCommitBatch?: number;
  /** Told when a write finds the disk full (with the error) and when writes succeed again. */
  onStorageFull?: (full: boolean, err?: unknown) => void;
}

export const DEFAULT_IDEMPOTENCY_TTL_MS = 24 * 60 * 60 * 1000;
export const DEFAULT_MAX_COMMIT_BATCH = 256;
/** Expired idempotency keys are deleted at most this often, on the insert of a new key. */
export const IDEMPOTENCY_PRUNE_INTERVAL_MS = 60_000;

/** A `commitRun` call waiting for its batch. */
export interface PendingCommit {
  runId: string;
  change: (current: RunRecord) => RunChange;
  claim: IdempotencyClaim | undefined;
  /** The caller's copy of the run (`CommitOptions.current`). */
  known: RunRecord | undefined;
  /** The writer's lease (`CommitOptions.fence`). */
  fence: RunFence | undefined;
  resolve: (result: CommitResult) => void;
  reject: (reason: unknown) => void;
  /** What the call did within its batch; undefined when it threw `error` and left no trace. */
  result: CommitResult | undefined;
  error: unknown;
}

/** Queues a `commitRun` call with `enqueue`; the promise settles when its batch has. */
export function pendingCommit(
  runId: string,
  change: (current: RunRecord) => RunChange,
  options: CommitOptions,
  enqueue: (pending: PendingCommit) => void,
): Promise<CommitResult> {
  return new Promise<CommitResult>((resolve, reject) => {
    enqueue({
      runId,
      change,
      claim: options.idempotency,
      known: options.current,
      fence: options.fence,
      resolve,
      reject,
      result: undefined,
      error: undefined,
    });
  });
}

/**
 * Settles a committed batch's calls in call order: RunService publishes each change when its
 * commit resolves, and subscribers must see a run's seq ascend.
 */
export function settleBatch(batch: readonly PendingCommit[]): void {
  for (const pending of batch) {
    if (pending.result) pending.resolve(pending.result);
    else pending.reject(pending.error);
  }
}

/**
 * The answer to a claim whose key is already stored for the run: its first response, or
 * INVALID_INPUT when the key was used for a different request. Undefined for a new key.
 */
export function replayOf(
  claim: IdempotencyClaim,
  stored: { fingerprint: string; response: string } | undefined,
): CommitResult | undefined {
  if (!stored) return undefined;
  if (stored.fingerprint !== claim.fingerprint) {
    throw new AppError(
      'INVALID_INPUT',
      'this Idempotency-Key was already used for a different request to this run',
    );
  }
  return { replayed: true, response: stored.response };
}

/** The lease a run's row holds: its owner and the fence of the last claim. */
export interface StoredLease {
  owner: string | null;
  fence: number;
}

/**
 * Refuses a write made under `fence` when the run is no longer held by it: another node claimed
 * the run after this writer's lease ran out (the writer was paused, or cut from the database).
 */
export function checkFence(runId: string, fence: RunFence | undefined, stored: StoredLease): void {
  if (!fence || (stored.owner === fence.owner && stored.fence === fence.fence)) return;
  throw new AppError(
    'LEASE_LOST',
    `run ${runId} is no longer held by node ${fence.owner}: its lease ran out and another node claimed it`,
  );
}
