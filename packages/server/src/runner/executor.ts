import type { LogLevel, ProgressUpdate, RunKind } from '@runcast/protocol';
import type { RunRecord } from '../store/store.js';

/** How an executor reports while it works. */
export interface ExecutionContext {
  run: RunRecord;
  /** The run's config with its secrets opened. */
  config: Record<string, unknown>;
  /** Aborted when the run is canceled or the server shuts down. */
  signal: AbortSignal;
  /** A directory of its own, removed when the run ends. */
  workDir: string;
  /** A partial update; throttled (latest state wins), flushed before the run ends. */
  progress(patch: ProgressUpdate): void;
  log(level: LogLevel, message: string, stage?: string): void;
}

/** Does the work of one kind of run. */
export interface Executor {
  readonly kind: RunKind;
  /** Validates a new run's config and returns the form to store (secrets sealed). */
  prepareConfig(config: Record<string, unknown> | undefined): Record<string, unknown>;
  /** Opens what `prepareConfig` sealed, for the run's execution. */
  openConfig(config: Record<string, unknown>): Record<string, unknown>;
  /** Runs to completion; throws ExecutionError to fail the run. */
  execute(context: ExecutionContext): Promise<void>;
}

/** Why a run failed: a code, a message, and details such as the mismatched refs. */
export class ExecutionError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'ExecutionError';
  }
}
