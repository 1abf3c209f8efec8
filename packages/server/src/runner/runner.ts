import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { LogEntry, RunKind } from '@runcast/protocol';
import type { FastifyBaseLogger } from 'fastify';
import type { Bus } from '../bus/bus.js';
import { AppError } from '../errors.js';
import { makePrivateDir } from '../private-files.js';
import type { RunKinds, RunService } from '../runs/run-service.js';
import type { RunLeases, RunRecord } from '../store/store.js';
import { type ExecutionContext, ExecutionError, type Executor } from './executor.js';
import { ProgressThrottle } from './progress-throttle.js';

export interface RunnerOptions {
  /** Runs executed at once. */
  concurrency: number;
  /** Where each run gets a work directory (removed when it ends). */
  workRoot: string;
  /** Minimum interval between progress commits of one run (5 per second by default). */
  progressIntervalMs?: number;
  /** This node's id: the owner of the runs it claims. */
  nodeId: string;
  /** How long a claim holds unless renewed; renewed every third of it (15 s by default). */
  leaseMs?: number;
  /** How often to look for runs to claim besides when a bus message says one is queued (1 s by default). */
  pollIntervalMs?: number;
}

export const DEFAULT_RUN_LEASE_MS = 15_000;

/** A node id for a node that was given none: random at each start. */
export function newNodeId(): string {
  return `node-${randomBytes(6).toString('hex')}`;
}
const DEFAULT_POLL_INTERVAL_MS = 1000;

interface Execution {
  controller: AbortController;
  /** The fence of this node's claim: every write to the run carries it. */
  fence: number;
  /** When the last renewal that succeeded was asked for (this process's clock). */
  renewedAtMs: number;
  /** The run was RUNNING on a node that stopped: this execution only ends it. */
  takeover: boolean;
  done: Promise<void>;
}

const SHUTDOWN = 'server shutdown';
const LEASE_LOST = 'lease lost';

/** Ignores the refusal of a change to a run that ended meanwhile (canceled while working). */
function ignoreTerminal(err: unknown): void {
  if (err instanceof AppError && (err.code === 'RUN_TERMINAL' || err.code === 'INVALID_TRANSITION')) return;
  throw err;
}

const isLeaseLost = (err: unknown): boolean => err instanceof AppError && err.code === 'LEASE_LOST';

/**
 * Executes runs of the kinds it has executors for, on whichever node claims them: QUEUED runs are
 * claimed from the store (at most `concurrency` at a time) when a bus message says one was queued
 * and every `pollIntervalMs`; the claim is a lease this node renews while it works, and every
 * write it makes to the run carries the claim's fence. A run whose node died (its lease ran out)
 * is claimed by another node, which ends it FAILED with `INTERRUPTED`. A node that finds its lease
 * gone — a renewal refused, a write answered LEASE_LOST — stops working on the run at once. Cancel
 * reaches the owner over the bus and aborts the executor.
 */
export class Runner implements RunKinds {
  private readonly executors = new Map<RunKind, Executor>();
  private readonly running = new Map<string, Execution>();
  private readonly leaseMs: number;
  private runs: RunService | undefined;
  private leases: RunLeases | undefined;
  private bus: Bus | undefined;
  private unsubscribe: (() => void) | undefined;
  private timers: NodeJS.Timeout[] = [];
  private claiming: Promise<void> | undefined;
  private claimAgain = false;
  private renewing = false;
  private closed = false;

  constructor(
    private readonly options: RunnerOptions,
    private readonly log: FastifyBaseLogger,
  ) {
    this.leaseMs = options.leaseMs ?? DEFAULT_RUN_LEASE_MS;
  }

  register(executor: Executor): this {
    this.executors.set(executor.kind, executor);
    return this;
  }

  /**
   * Connects the runner to the RunService, the store's leases and the Bus, takes back the runs
   * this node held in a previous life (they died with it), and starts claiming.
   */
  async start(runs: RunService, bus: Bus, leases: RunLeases): Promise<void> {
    this.runs = runs;
    this.bus = bus;
    this.leases = leases;
    const stops = [
      bus.subscribe('cancel', ({ run_id }) => this.cancel(run_id)),
      bus.subscribe('run-queued', () => void this.claim()),
    ];
    this.unsubscribe = () => {
      for (const stop of stops) stop();
    };
    // Nothing executes yet: work dirs left by a process that died are garbage.
    rmSync(this.options.workRoot, { recursive: true, force: true });
    // Other nodes' runs are theirs as long as their leases hold; only this node's are known dead.
    await this.claim(true);
    // Runs found RUNNING on this node's previous life show as interrupted once the server is up.
    await Promise.all([...this.running.values()].filter((e) => e.takeover).map((e) => e.done));
    this.timers = [
      setInterval(() => void this.claim(), this.options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS),
      setInterval(() => void this.renew(), Math.max(1, Math.floor(this.leaseMs / 3))),
    ];
    for (const timer of this.timers) timer.unref();
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
      // Every node's runner, this one's included, hears it and looks for a run to claim.
      () => this.bus?.publish({ type: 'run-queued', run_id: run.run_id }),
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
    for (const timer of this.timers) clearInterval(timer);
    await this.claiming;
    const executions = [...this.running.values()];
    for (const execution of executions) execution.controller.abort(SHUTDOWN);
    await Promise.all(executions.map((execution) => execution.done));
  }

  private cancel(runId: string): void {
    this.running.get(runId)?.controller.abort('canceled');
  }

  /** Claims as many runs as there is room for; calls made meanwhile claim once more after it. */
  private claim(reclaimOwn = false): Promise<void> {
    if (this.claiming) {
      this.claimAgain = true;
      return this.claiming;
    }
    this.claiming = this.claimOnce(reclaimOwn)
      .catch((err: unknown) => this.log.warn({ err }, 'could not claim runs; trying again later'))
      .finally(() => {
        this.claiming = undefined;
        if (this.claimAgain && !this.closed) {
          this.claimAgain = false;
          void this.claim();
        }
      });
    return this.claiming;
  }

  private async claimOnce(reclaimOwn: boolean): Promise<void> {
    const room = this.options.concurrency - this.running.size;
    if (this.closed || room <= 0 || !this.leases) return;
    const claimed = await this.leases.claimRuns({
      owner: this.options.nodeId,
      kinds: [...this.executors.keys()],
      limit: room,
      leaseMs: this.leaseMs,
      reclaimOwn,
    });
    for (const { run, fence } of claimed) this.launch(run, fence);
  }

  private launch(run: RunRecord, fence: number): void {
    const controller = new AbortController();
    // A claimed RUNNING run was executing on a node that died (or on this one before a restart).
    const takeover = run.status === 'RUNNING';
    const execution: Execution = {
      controller,
      fence,
      renewedAtMs: Date.now(),
      takeover,
      done: Promise.resolve(),
    };
    this.running.set(run.run_id, execution);
    const work = takeover ? this.interrupt(run.run_id, fence) : this.execute(run, execution);
    execution.done = work
      .catch((err: unknown) => this.log.error({ err, run_id: run.run_id }, 'run execution failed'))
      .finally(() => {
        this.running.delete(run.run_id);
        void this.claim();
      });
  }

  /** Ends a run whose node stopped while it was going. */
  private async interrupt(runId: string, fence: number): Promise<void> {
    this.log.warn({ run_id: runId }, 'took over a run whose node stopped; it ends INTERRUPTED');
    await this.runs
      ?.setStatus(
        runId,
        'FAILED',
        {
          code: 'INTERRUPTED',
          message: 'its node stopped while this run was going; retry it to start again',
        },
        { fence: { owner: this.options.nodeId, fence } },
      )
      .catch((err: unknown) => (isLeaseLost(err) ? undefined : ignoreTerminal(err)));
  }

  /**
   * Extends the leases of the runs executing here. A lease the store no longer holds for this node,
   * or one not renewed for its whole length (the database did not answer), may be another node's
   * now: its execution stops.
   */
  private async renew(): Promise<void> {
    if (this.renewing || !this.leases || this.running.size === 0) return;
    this.renewing = true;
    const askedAtMs = Date.now();
    const held = [...this.running].map(([run_id, { fence }]) => ({ run_id, fence }));
    try {
      const renewed = new Set(await this.leases.renewLeases(this.options.nodeId, held, this.leaseMs));
      for (const { run_id, fence } of held) {
        const execution = this.running.get(run_id);
        if (!execution || execution.fence !== fence) continue;
        if (renewed.has(run_id)) execution.renewedAtMs = askedAtMs;
        else this.loseLease(run_id, execution, 'its renewal was refused');
      }
    } catch (err) {
      this.log.warn({ err }, 'could not renew run leases');
      for (const [runId, execution] of this.running) {
        if (askedAtMs - execution.renewedAtMs >= this.leaseMs) {
          this.loseLease(runId, execution, 'it was not renewed for its whole length');
        }
      }
    } finally {
      this.renewing = false;
    }
  }

  private loseLease(runId: string, execution: Execution, why: string): void {
    if (execution.controller.signal.aborted) return;
    this.log.warn(
      { run_id: runId, code: 'LEASE_LOST', why },
      'lost the lease on a run (another node may own it now): stopped working on it',
    );
    execution.controller.abort(LEASE_LOST);
  }

  private async execute(run: RunRecord, execution: Execution): Promise<void> {
    const runs = this.runs;
    const executor = this.executors.get(run.kind);
    if (!runs || !executor) return;
    const runId = run.run_id;
    const { controller } = execution;
    const write = { fence: { owner: this.options.nodeId, fence: execution.fence } };
    /** A refused write: a lost lease stops the execution; a run ended meanwhile is no error. */
    const refused = (err: unknown): void => {
      if (isLeaseLost(err)) this.loseLease(runId, execution, 'a write was refused with LEASE_LOST');
      else ignoreTerminal(err);
    };
    try {
      await runs.setStatus(runId, 'RUNNING', undefined, write);
    } catch (err) {
      refused(err);
      return;
    }
    if (controller.signal.aborted) return;
    const workDir = join(this.options.workRoot, runId);
    // Mirrors of private repositories: the work root and the run's dir are owner-only.
    makePrivateDir(workDir);
    const logs = new LogBatcher((entries) =>
      runs.appendLogs(runId, entries, write).then(() => undefined, refused),
    );
    const throttle = new ProgressThrottle(
      (patch) => runs.updateProgress(runId, patch, write).catch(refused),
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
          .setStatus(
            runId,
            'FAILED',
            { code: 'INTERRUPTED', message: 'the server shut down during the run; retry it' },
            write,
          )
          .catch(refused);
      }
      // A cancel already ended the run CANCELED; a lost lease leaves it to its new owner.
      return;
    }
    if (failure) {
      const error = {
        code: failure.code.slice(0, 80),
        message: failure.message.slice(0, 4000),
        details: failure.details,
      };
      await runs.setStatus(runId, 'FAILED', error, write).catch(refused);
      return;
    }
    const current = await runs.get(runId);
    await runs
      .updateProgress(
        runId,
        { status: 'COMPLETED', progress: { ...(current?.progress ?? {}), percentage: 100 } },
        write,
      )
      .catch(refused);
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
