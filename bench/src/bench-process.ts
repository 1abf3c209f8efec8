import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { createInterface } from 'node:readline';
import type { ReadyMessage, ReplyMessage } from './ipc.js';
import { BenchError, withTimeout } from './time.js';

/** `taskset` pins a process to one CPU; without it (or with one CPU) nothing is pinned. */
export const CPU_COUNT = availableParallelism();
export const CAN_PIN = CPU_COUNT >= 2 && spawnSync('taskset', ['-c', '0', 'true']).status === 0;
/** The server (Runcast or a baseline) runs on this CPU; every load process on the other. */
export const SERVER_CPU = 0;
export const LOAD_CPU = 1;

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface StartOptions {
  /** Shown in errors and logs. */
  name: string;
  script: string;
  args?: string[];
  /** Node flags placed before the script. */
  nodeArgs?: string[];
  env?: NodeJS.ProcessEnv;
  /** The CPU to pin the process to, when the machine allows. */
  cpu?: number;
  /** Wait for the child's `ready` message (the bench's own processes send one). */
  waitReady?: boolean;
  readyTimeoutMs?: number;
}

interface Pending {
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

const TAIL_LINES = 200;
// The soft open-files limit is raised to the hard one before Node starts: 10k connections need it.
const RAISE_NOFILE = 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"';

/**
 * A process the harness started: pinned with taskset, controlled over IPC, stopped by its pid.
 * Every instance is registered until it exits so that `stopAllProcesses` can end a run cleanly.
 */
export class BenchProcess {
  static readonly running = new Set<BenchProcess>();
  readonly pid: number;
  readonly exited: Promise<Exit>;
  exit: Exit | undefined;
  readyInfo: unknown;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly lines: string[] = [];
  private readonly lineListeners: ((line: string) => void)[] = [];

  private constructor(
    readonly name: string,
    private readonly child: ChildProcess,
  ) {
    if (child.pid === undefined) throw new BenchError('SPAWN_FAILED', `${name} did not start`);
    this.pid = child.pid;
    BenchProcess.running.add(this);
    for (const stream of [child.stdout, child.stderr]) {
      if (!stream) continue;
      createInterface({ input: stream }).on('line', (line) => {
        this.lines.push(line);
        if (this.lines.length > TAIL_LINES) this.lines.shift();
        for (const listener of this.lineListeners) listener(line);
      });
    }
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        BenchProcess.running.delete(this);
        for (const [id, pending] of this.pending) {
          clearTimeout(pending.timer);
          pending.reject(
            new BenchError(
              'CHILD_EXITED',
              `${name} exited (${code ?? signal}) before answering\n${this.tail(30)}`,
            ),
          );
          this.pending.delete(id);
        }
        resolve(this.exit);
      });
    });
    child.on('message', (message: unknown) => this.onMessage(message));
    // A closed channel is not an error worth crashing the harness for.
    child.on('error', () => {});
  }

  static async start(options: StartOptions): Promise<BenchProcess> {
    const pin = options.cpu !== undefined && CAN_PIN ? ['taskset', '-c', String(options.cpu)] : [];
    const child = spawn(
      'sh',
      [
        '-c',
        RAISE_NOFILE,
        'sh',
        ...pin,
        process.execPath,
        ...(options.nodeArgs ?? []),
        options.script,
        ...(options.args ?? []),
      ],
      { env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe', 'ipc'] },
    );
    const started = new BenchProcess(options.name, child);
    if (options.waitReady !== false) {
      const ready = new Promise<unknown>((resolve, reject) => {
        child.on('message', (message: unknown) => {
          if ((message as ReadyMessage | null)?.type === 'ready') resolve((message as ReadyMessage).info);
        });
        void started.exited.then(({ code, signal }) =>
          reject(
            new BenchError('CHILD_EXITED', `${options.name} exited (${code ?? signal})\n${started.tail(30)}`),
          ),
        );
      });
      try {
        started.readyInfo = await withTimeout(
          ready,
          options.readyTimeoutMs ?? 20_000,
          `${options.name} start`,
        );
      } catch (err) {
        await started.stop();
        throw err;
      }
    }
    return started;
  }

  get isRunning(): boolean {
    return this.exit === undefined;
  }

  /** Sends a command and waits for its answer. */
  request<T>(cmd: string, args?: unknown, timeoutMs = 60_000): Promise<T> {
    if (!this.isRunning) {
      return Promise.reject(new BenchError('CHILD_EXITED', `${this.name} is not running\n${this.tail(30)}`));
    }
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new BenchError('TIMEOUT', `${this.name} did not answer ${cmd} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (value: unknown) => void, reject, timer });
      this.child.send({ id, cmd, args });
    });
  }

  /** Calls `listener` with every line the process prints from now on. */
  onLine(listener: (line: string) => void): void {
    this.lineListeners.push(listener);
  }

  /** The last `n` lines of the process's output. */
  tail(n: number): string {
    return this.lines.slice(-n).join('\n');
  }

  /** SIGTERM by pid, then SIGKILL when it has not exited after `graceMs`. */
  async stop(graceMs = 3000): Promise<Exit> {
    if (this.isRunning) signal(this.pid, 'SIGTERM');
    const timer = setTimeout(() => {
      if (this.isRunning) signal(this.pid, 'SIGKILL');
    }, graceMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }

  private onMessage(message: unknown): void {
    const reply = message as ReplyMessage;
    if (typeof reply?.id !== 'number') return;
    const pending = this.pending.get(reply.id);
    if (!pending) return;
    this.pending.delete(reply.id);
    clearTimeout(pending.timer);
    if (reply.ok) pending.resolve(reply.result);
    else pending.reject(new BenchError('CHILD_FAILED', `${this.name}: ${reply.error}`));
  }
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // already gone
  }
}

/** Stops every process the harness started that is still running, load first. */
export async function stopAllProcesses(): Promise<void> {
  await Promise.all([...BenchProcess.running].map((child) => child.stop(2000)));
}
