import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { LogEntry, RunKind } from '@runcast/protocol';
import type { FastifyBaseLogger } from 'fastify';
import type { Bus } from '../bus/bus.js';
import { AppError } from '../errors.js';
import { makePrivateDir } from '../private-files.js';
import type { RunKinds, RunService } from '../runs/run-service.js';
import type { RunRecord } from '../store/store.js';
import { type ExecutionContext, ExecutionError, type Executor } from './executor.js';
import { ProgressThrottle } from './progress-throttle.js';

export interface RunnerOptions {
  /** Runs executed at once. */
  concurrency: number;
  /** Where each run gets a work directory (removed when it ends). */
  workRoot: string;
  /** Minimum interval between progress commits of one run (5 per second by default). */
  progressIntervalMs?: number;
}

interface Execution {
  controller: AbortController;
  done: Promise<void>;
}

const SHUTDOWN = 'server shutdown';

/** Ignores the refusal of a change to a run that ended meanwhile (canceled while working). */
function ignoreTerminal(err: unknown): void {
  if (err instanceof AppError && (err.code === 'RUN_TERMINAL' || err.code === 'INVALID_TRANSITION')) return;
  throw err;
}

/**
 * The in-process queue: QUEUED runs start in order, at most `concurrency` at a time; cancel
 * aborts the executor; a run found RUNNING at start-up (the server died) becomes FAILED with
 * `INTERRUPTED`. Executors are registered by kind.
 */
export class Runner implements RunKinds {
  private readonly executors = new Map<RunKind, Executor>();
  private readonly queue: string[] = [];
  private readonly running = new Map<string, Execution>();
  private runs: RunService | undefined;
  private unsubscribe: (() => void) | undefined;
  private closed = false;

  constructor(
    private readonly options: RunnerOptions,
    private readonly log: FastifyBaseLogger,
  ) {}

  register(executor: Executor): this {
    this.executors.set(executor.kind, executor);
    return this;
  }

  /** Connects the runner to the RunService and the Bus, and recovers runs left by a previous process. */
  async start(runs: RunService, bus: Bus): Promise<void> {
    this.runs = runs;
    this.unsubscribe = bus.subscribe('cancel', ({ run_id }) => this.cancel(run_id));
    // Nothing executes yet: work dirs left by a process that died are garbage.
    rmSync(this.options.workRoot, { recursive: true, force: true });
    // Only runs this process executes die with it; an external run's worker lives on.
    const running = await runs.list({ projectIds: 'all', statuses: ['RUNNING'], limit: 100_000 });
    for (const run of running.filter((r) => this.executors.has(r.kind))) {
      await runs
        .setStatus(run.run_id, 'FAILED', {
          code: 'INTERRUPTED',
          message: 'the server stopped while this run was going; retry it to start again',
        })
        .catch(ignoreTerminal);
    }
    const queued = await runs.list({ projectIds: 'all', statuses: ['QUEUED'], limit: 100_000 });
    for (const run of queued.reverse()) {
      if (this.executors.has(run.kind)) this.queue.push(run.run_id);
    }
    this.pump();
  }

  // RunKinds

  has(kind: RunKind): boolean {
    return kind === 'external' || this.executors.has(kind);
  }

  prepareConfig(
    kind: RunKind,
    config: Record<string, unknown> | undefined,
  ): Record<string, unknown> | undefined {
    const executor = this.executors.get(kind);
    return executor ? executor.prepareConfig(config) : config;
  }

  created(run: RunRecord): void {
    if (!this.executors.has(run.kind) || !this.runs) return;
    this.runs.setStatus(run.run_id, 'QUEUED').then(
      () => {
        this.queue.push(run.run_id);
        this.pump();
      },
      (err: unknown) => this.log.error({ err, run_id: run.run_id }, 'could not queue the run'),
    );
  }

  /** Runs executing now (for tests). */
  get active(): number {
    return this.running.size;
  }

  /** Aborts every execution, marks it interrupted, and waits for it (bounded by the caller). */
  async close(): Promise<void> {
    this.closed = true;
    this.unsubscribe?.();
    this.queue.length = 0;
    const executions = [...this.running.values()];
    for (const execution of executions) execution.controller.abort(SHUTDOWN);
    await Promise.all(executions.map((execution) => execution.done));
  }

  private cancel(runId: string): void {
    const index = this.queue.indexOf(runId);
    if (index >= 0) this.queue.splice(index, 1);
    this.running.get(runId)?.controller.abort('canceled');
  }

  private pump(): void {
    while (!this.closed && this.running.size < this.options.concurrency && this.queue.length > 0) {
      const runId = this.queue.shift();
      if (!runId) break;
      const controller = new AbortController();
      const execution: Execution = { controller, done: Promise.resolve() };
      this.running.set(runId, execution);
      execution.done = this.execute(runId, controller)
        .catch((err: unknown) => this.log.error({ err, run_id: runId }, 'run execution failed'))
        .finally(() => {
          this.running.delete(runId);
          this.pump();
        });
    }
  }

  private async execute(runId: string, controller: AbortController): Promise<void> {
    const runs = this.runs;
    if (!runs) return;
    const run = await runs.get(runId);
    const executor = run && this.executors.get(run.kind);
    if (!run || !executor || run.status !== 'QUEUED') return;
    try {
      await runs.setStatus(runId, 'RUNNING');
    } catch (err) {
      ignoreTerminal(err);
      return;
    }
    const workDir = join(this.options.workRoot, runId);
    // Mirrors of private repositories: the work root and the run's dir are owner-only.
    makePrivateDir(workDir);
    const logs = new LogBatcher((entries) =>
      runs.appendLogs(runId, entries).then(() => undefined, ignoreTerminal),
    );
    const throttle = new ProgressThrottle(
      (patch) => runs.updateProgress(runId, patch).catch(ignoreTerminal),
      this.options.progressIntervalMs ?? 200,
      (err) => this.log.error({ err, run_id: runId }, 'progress update failed'),
    );
    const context: ExecutionContext = {
      run,
      config: executor.openConfig(run.config ?? {}),
      signal: controller.signal,
      workDir,
      progress: (patch) => throttle.push(patch),
      log: (level, message, stage) => logs.push(stage ? { level, message, stage } : { level, message }),
    };
    let failure: ExecutionError | undefined;
    try {
      await executor.execute(context);
    } catch (err) {
      failure =
        err instanceof ExecutionError
          ? err
          : new ExecutionError('EXECUTOR_ERROR', (err as Error)?.message ?? String(err));
    } finally {
      rmSync(workDir, { recursive: true, force: true });
    }
    await logs.flush();
    await throttle.flush();
    if (controller.signal.aborted) {
      if (controller.signal.reason === SHUTDOWN) {
        await runs
          .setStatus(runId, 'FAILED', {
            code: 'INTERRUPTED',
            message: 'the server shut down during the run; retry it',
          })
          .catch(ignoreTerminal);
      }
      // A cancel already ended the run CANCELED.
      return;
    }
    if (failure) {
      const error = {
        code: failure.code.slice(0, 80),
        message: failure.message.slice(0, 4000),
        details: failure.details,
      };
      await runs.setStatus(runId, 'FAILED', error).catch(ignoreTerminal);
      return;
    }
    const current = await runs.get(runId);
    await runs
      .updateProgress(runId, {
        status: 'COMPLETED',
        progress: { ...(current?.progress ?? {}), percentage: 100 },
      })
      .catch(ignoreTerminal);
  }
}

/** Collects log lines and appends them in batches, one commit per tick, in order. */
class LogBatcher {
  private pending: LogEntry[] = [];
  private scheduled = false;
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly append: (entries: LogEntry[]) => Promise<void>) {}

  push(entry: LogEntry): void {
    this.pending.push(entry);
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.send());
  }

  async flush(): Promise<void> {
    this.send();
    await this.chain;
  }

  private send(): void {
    this.scheduled = false;
    if (this.pending.length === 0) return;
    const entries = this.pending.splice(0, 1000);
    this.chain = this.chain.then(() => this.append(entries));
    if (this.pending.length > 0) this.send();
  }
}
