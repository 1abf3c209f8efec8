import type { LogEntry, LogLevel, ProgressUpdate, RunError } from '@runcast/protocol';
import { errorFromResponse, RuncastError } from './errors.js';
import { ExponentialBackoff, type ReconnectPolicy } from './reconnect-policy.js';
import { currentToken } from './transport.js';
import type { Environment, TokenSource } from './types.js';

/** The parts of its surroundings a reporter uses; each defaults to the global one. */
export type ReporterEnvironment = Pick<
  Environment,
  'fetch' | 'setTimeout' | 'clearTimeout' | 'now' | 'random'
>;

/** Options of a {@link RunReporter}. */
export interface RunReporterOptions {
  /** The server's origin (`https://runcast.example`), or `''` for the page's own origin. */
  baseUrl: string;
  /** The run reported on (an `external` run). */
  runId: string;
  /** An API token (or a function returning one) of an operator of the run's project. */
  token: TokenSource;
  /** Replaces parts of the surroundings: `fetch`, timers, clock, randomness. */
  env?: Partial<ReporterEnvironment>;
  /** How long a call may wait to be sent together with the ones after it (default 200 ms). */
  batchIntervalMs?: number;
  /** Log lines per request, 1..1000 (default 100); a full batch is sent at once. */
  maxBatch?: number;
  /**
   * Bytes of log entries per request (default 128 KiB, half the server's default body limit); a
   * batch ends before the entry that would pass it. A single larger entry travels alone.
   */
  maxBatchBytes?: number;
  /**
   * Delay before repeating a request that got no answer, a 5xx or a 429; `null` gives it up.
   * Default: exponential backoff with full jitter from 250 ms up to 10 s, giving up once the
   * server has been unreachable for 10 minutes.
   */
  retryPolicy?: ReconnectPolicy;
  /** An attempt with no complete answer after this long is abandoned and repeated (default 30 s). */
  requestTimeoutMs?: number;
  /** Hears of every request given up on: refused by the server (4xx but 429) or out of retries. */
  onError?: (error: RuncastError) => void;
}

/** Counters of a reporter's requests. */
export interface ReporterStats {
  /** Requests the server acknowledged. */
  acknowledged: number;
  /** Attempts repeated after no answer, a 5xx or a 429. */
  retries: number;
  /** Requests given up on. */
  failed: number;
  /** Log lines and updates waiting to be sent (the request in flight not counted). */
  pending: number;
}

// The header's name is IDEMPOTENCY_KEY_HEADER of @runcast/protocol; it is spelled out here because
// the client imports only types from the protocol package and stays free of its schema library.
const IDEMPOTENCY_KEY_HEADER = 'idempotency-key';
const MAX_BATCH_LIMIT = 1000;

type State = 'open' | 'closed';

/** One call of `log` or `update` (several consecutive updates once coalesced), not yet sent. */
type Item =
  | { kind: 'log'; entry: LogEntry; bytes: number; firstCall: number; lastCall: number; queuedAtMs: number }
  | { kind: 'update'; patch: ProgressUpdate; firstCall: number; lastCall: number; queuedAtMs: number };

/** A request as first sent; its retries repeat it byte for byte, key included. */
interface OutgoingRequest {
  method: 'POST' | 'PATCH';
  url: string;
  body: string;
  key: string;
  /** The calls it carries. */
  firstCall: number;
  lastCall: number;
}

type AttemptOutcome =
  | { kind: 'acknowledged' }
  | { kind: 'refused'; error: RuncastError }
  | { kind: 'retry'; error: RuncastError; retryAfterMs: number };

interface Failure {
  firstCall: number;
  lastCall: number;
  error: RuncastError;
}

interface Waiter {
  through: number;
  resolve: () => void;
  reject: (error: RuncastError) => void;
}

function defaultReporterEnvironment(): ReporterEnvironment {
  // Not defaultEnvironment(): a worker that only reports needs no socket.io-client.
  return {
    fetch: (input, init) => globalThis.fetch(input, init),
    setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
    clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof globalThis.setTimeout>),
    now: () => Date.now(),
    random: () => Math.random(),
  };
}

/** 128 random bits as hex, from the platform's CSPRNG where there is one. */
function randomHex(random: () => number): string {
  const bytes = new Uint8Array(16);
  const crypto = (globalThis as { crypto?: Crypto }).crypto;
  if (crypto?.getRandomValues) crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** A copy of what the caller passed, as it will travel: later mutations of theirs do not leak in. */
function wireCopy<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

/** Length of `text` in UTF-8, without encoding it. */
function utf8Length(text: string): number {
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x80) bytes += 1;
    else if (code < 0x800) bytes += 2;
    else if (code >= 0xd800 && code <= 0xdbff) {
      bytes += 4; // a surrogate pair: one 4-byte character
      i++;
    } else bytes += 3;
  }
  return bytes;
}

const isRetryableStatus = (status: number): boolean => status === 429 || status >= 500;

/** `Retry-After` in seconds (the HTTP-date form is rare from APIs and ignored). */
function retryAfterMs(header: string | null): number {
  const seconds = header === null ? Number.NaN : Number(header.trim());
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds, 3600) * 1000 : 0;
}

function networkError(err: unknown, timedOut: boolean): RuncastError {
  if (err instanceof RuncastError) return err;
  if (timedOut) return new RuncastError('TIMEOUT', 'the server did not answer in time');
  const cause = (err as { cause?: { code?: string; message?: string } })?.cause;
  const detail = cause?.code ?? cause?.message ?? (err as Error)?.message ?? String(err);
  return new RuncastError('NETWORK', `the server could not be reached (${detail})`);
}

/**
 * Reports a run's progress and log from the worker doing it. Calls are queued and sent one
 * request at a time, in call order: log lines in batches, consecutive updates coalesced. Every
 * request carries an `Idempotency-Key`, kept across its retries, so a request whose answer was
 * lost is applied once; it is retried with backoff while the server is unreachable or answers
 * 5xx or 429. Works in Node (>= 20) and browsers.
 *
 * ```ts
 * const reporter = new RunReporter({ baseUrl, runId, token });
 * reporter.update({ status: 'RUNNING', stage: 'EXPORT' });
 * reporter.log('info', 'Cloned group/api');
 * await reporter.complete({ progress: { percentage: 100 } });
 * ```
 */
export class RunReporter {
  private readonly env: ReporterEnvironment;
  private readonly runUrl: string;
  private readonly token: TokenSource;
  private readonly batchIntervalMs: number;
  private readonly maxBatch: number;
  private readonly maxBatchBytes: number;
  private readonly retryPolicy: ReconnectPolicy;
  private readonly requestTimeoutMs: number;
  private readonly onError: ((error: RuncastError) => void) | undefined;
  private readonly keyPrefix: string;

  private state: State = 'open';
  private closing: Promise<void> | undefined;
  private readonly queue: Item[] = [];
  private queuedLogs = 0;
  private queuedLogBytes = 0;
  /** Calls made so far; call n is the n-th `log` or `update` (1-based). */
  private calls = 0;
  /** Every call up to this one has been acknowledged or given up on. */
  private settledThrough = 0;
  /** Calls up to this one are sent without waiting for the batch interval. */
  private flushThrough = 0;
  /** Failures up to this call were reported to a `flush`. */
  private claimedThrough = 0;
  private failures: Failure[] = [];
  private readonly waiters: Waiter[] = [];
  private sending = false;
  private timer: unknown;
  private requestCount = 0;
  /** When the server was found unreachable, while it still is. */
  private unreachableSinceMs: number | undefined;
  private readonly counters = { acknowledged: 0, retries: 0, failed: 0 };

  constructor(options: RunReporterOptions) {
    this.env = { ...defaultReporterEnvironment(), ...options.env };
    this.runUrl = `${options.baseUrl.replace(/\/+$/, '')}/api/v1/runs/${encodeURIComponent(options.runId)}`;
    this.token = options.token;
    this.batchIntervalMs = options.batchIntervalMs ?? 200;
    this.maxBatch = options.maxBatch ?? 100;
    this.maxBatchBytes = options.maxBatchBytes ?? 128 * 1024;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 30_000;
    if (!(this.batchIntervalMs >= 0)) {
      throw new RuncastError('INVALID_INPUT', `batchIntervalMs must be >= 0, not ${this.batchIntervalMs}`);
    }
    if (!Number.isInteger(this.maxBatch) || this.maxBatch < 1 || this.maxBatch > MAX_BATCH_LIMIT) {
      throw new RuncastError('INVALID_INPUT', `maxBatch must be an integer in 1..${MAX_BATCH_LIMIT}`);
    }
    if (!(this.maxBatchBytes > 0)) {
      throw new RuncastError('INVALID_INPUT', `maxBatchBytes must be > 0, not ${this.maxBatchBytes}`);
    }
    if (!(this.requestTimeoutMs > 0)) {
      throw new RuncastError('INVALID_INPUT', `requestTimeoutMs must be > 0, not ${this.requestTimeoutMs}`);
    }
    this.retryPolicy =
      options.retryPolicy ??
      new ExponentialBackoff({
        initialDelayMs: 250,
        maxDelayMs: 10_000,
        maxElapsedMs: 10 * 60_000,
        random: () => this.env.random(),
      });
    this.onError = options.onError;
    this.keyPrefix = randomHex(() => this.env.random());
  }

  /**
   * Queues a partial update (a present field replaces the stored one). While it waits, a later
   * update's fields override its own, unless the two set different statuses; it is never moved
   * past a log line queued before or after it.
   */
  update(patch: ProgressUpdate): void {
    this.requireOpen();
    this.enqueueUpdate(wireCopy(patch));
  }

  /** Queues a log line, sent in a batch with its neighbours. */
  log(entry: LogEntry): void;
  log(level: LogLevel, message: string, extra?: Pick<LogEntry, 'stage' | 'data'>): void;
  log(levelOrEntry: LogLevel | LogEntry, message?: string, extra?: Pick<LogEntry, 'stage' | 'data'>): void {
    this.requireOpen();
    const json = JSON.stringify(
      typeof levelOrEntry === 'string'
        ? { ...extra, level: levelOrEntry, message: message ?? '' }
        : levelOrEntry,
    );
    const entry = JSON.parse(json) as LogEntry;
    // One more for the comma between entries.
    const bytes = utf8Length(json) + 1;
    const call = ++this.calls;
    this.queue.push({
      kind: 'log',
      entry,
      bytes,
      firstCall: call,
      lastCall: call,
      queuedAtMs: this.env.now(),
    });
    this.queuedLogs += 1;
    this.queuedLogBytes += bytes;
    if (!this.sending && (this.batchFull() || this.timer === undefined)) this.kick();
  }

  /**
   * Sends everything queued so far without waiting for the batch interval. Resolves when all of
   * it was acknowledged; rejects with the first error of a request given up on since the last
   * flush.
   */
  flush(): Promise<void> {
    const through = this.calls;
    this.flushThrough = Math.max(this.flushThrough, through);
    this.kick();
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ through, resolve, reject });
      this.releaseWaiters();
    });
  }

  /** Flushes, then sends status COMPLETED (with `patch`) and closes. */
  complete(patch: Omit<ProgressUpdate, 'status'> = {}): Promise<void> {
    return this.finish(() => ({ ...wireCopy(patch), status: 'COMPLETED' }));
  }

  /** Flushes, then sends status FAILED with `error` (and `patch`) and closes. */
  fail(error: RunError, patch: Omit<ProgressUpdate, 'status' | 'error'> = {}): Promise<void> {
    return this.finish(() => ({ ...wireCopy(patch), status: 'FAILED', error: wireCopy(error) }));
  }

  /**
   * Refuses further calls and flushes what is queued. Resolves when everything was sent; rejects
   * like `flush`. Calling it again returns the same promise.
   */
  close(): Promise<void> {
    this.state = 'closed';
    this.closing ??= this.flush();
    return this.closing;
  }

  /** Queues the terminal update and closes; rejects (never throws) if the reporter is closed. */
  private finish(terminal: () => ProgressUpdate): Promise<void> {
    try {
      this.requireOpen();
      this.enqueueUpdate(terminal());
    } catch (err) {
      return Promise.reject(err);
    }
    return this.close();
  }

  /** Counters of requests, and the calls waiting. */
  getStats(): ReporterStats {
    return { ...this.counters, pending: this.queue.length };
  }

  private requireOpen(): void {
    if (this.state !== 'open') throw this.closedError();
  }

  private closedError(): RuncastError {
    return new RuncastError('CLOSED', 'the reporter is closed; it takes no more calls');
  }

  private enqueueUpdate(patch: ProgressUpdate): void {
    const call = ++this.calls;
    const tail = this.queue[this.queue.length - 1];
    // Coalescing only with the last queued call keeps the order relative to the log around it;
    // two different statuses stay two requests, so that every transition is made.
    if (
      tail?.kind === 'update' &&
      !(tail.patch.status !== undefined && patch.status !== undefined && tail.patch.status !== patch.status)
    ) {
      tail.patch = { ...tail.patch, ...patch };
      tail.lastCall = call;
    } else {
      this.queue.push({ kind: 'update', patch, firstCall: call, lastCall: call, queuedAtMs: this.env.now() });
    }
    if (!this.sending && this.timer === undefined) this.kick();
  }

  /** Sends the next request if one is due; otherwise sets the timer for when one will be. */
  private kick(): void {
    if (this.sending) return;
    const request = this.nextRequest();
    if (!request) {
      this.armTimer();
      return;
    }
    this.disarmTimer();
    this.sending = true;
    void this.send(request).then(() => {
      this.sending = false;
      this.kick();
    });
  }

  private nextRequest(): OutgoingRequest | undefined {
    const head = this.queue[0];
    if (!head) return undefined;
    const due =
      head.firstCall <= this.flushThrough ||
      this.batchFull() ||
      this.env.now() - head.queuedAtMs >= this.batchIntervalMs;
    if (!due) return undefined;
    if (head.kind === 'update') {
      this.queue.shift();
      return this.request('PATCH', '/progress', head.patch, head.firstCall, head.lastCall);
    }
    const entries: LogEntry[] = [];
    let lastCall = head.lastCall;
    let bytes = 0;
    for (
      let item = this.queue[0];
      item?.kind === 'log' &&
      entries.length < this.maxBatch &&
      (entries.length === 0 || bytes + item.bytes <= this.maxBatchBytes);
      item = this.queue[0]
    ) {
      this.queue.shift();
      entries.push(item.entry);
      bytes += item.bytes;
      lastCall = item.lastCall;
    }
    this.queuedLogs -= entries.length;
    this.queuedLogBytes -= bytes;
    return this.request('POST', '/logs', { entries }, head.firstCall, lastCall);
  }

  /** Enough log is queued to fill a request. */
  private batchFull(): boolean {
    return this.queuedLogs >= this.maxBatch || this.queuedLogBytes >= this.maxBatchBytes;
  }

  private request(
    method: OutgoingRequest['method'],
    path: string,
    body: unknown,
    firstCall: number,
    lastCall: number,
  ): OutgoingRequest {
    this.requestCount += 1;
    return {
      method,
      url: `${this.runUrl}${path}`,
      body: JSON.stringify(body),
      key: `${this.keyPrefix}-${this.requestCount}`,
      firstCall,
      lastCall,
    };
  }

  private armTimer(): void {
    const head = this.queue[0];
    if (!head || this.timer !== undefined) return;
    const delayMs = Math.max(0, head.queuedAtMs + this.batchIntervalMs - this.env.now());
    this.timer = this.env.setTimeout(() => {
      this.timer = undefined;
      this.kick();
    }, delayMs);
  }

  private disarmTimer(): void {
    if (this.timer === undefined) return;
    this.env.clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Sends one request until it is acknowledged or given up on; never rejects. */
  private async send(request: OutgoingRequest): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const outcome = await this.attempt(request);
      if (outcome.kind === 'acknowledged') {
        this.unreachableSinceMs = undefined;
        this.counters.acknowledged += 1;
        this.settle(request);
        return;
      }
      if (outcome.kind === 'refused') {
        this.unreachableSinceMs = undefined;
        this.settle(request, outcome.error);
        return;
      }
      const nowMs = this.env.now();
      this.unreachableSinceMs ??= nowMs;
      const delayMs = this.retryDelayMs(attempt, nowMs - this.unreachableSinceMs, outcome.error);
      if (delayMs === null) {
        this.settle(request, outcome.error);
        return;
      }
      this.counters.retries += 1;
      await new Promise<void>((resolve) => {
        this.env.setTimeout(resolve, Math.max(delayMs, outcome.retryAfterMs));
      });
    }
  }

  private async attempt(request: OutgoingRequest): Promise<AttemptOutcome> {
    const controller = new AbortController();
    let timedOut = false;
    const timer = this.env.setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.requestTimeoutMs);
    try {
      const headers: Record<string, string> = {
        'content-type': 'application/json',
        [IDEMPOTENCY_KEY_HEADER]: request.key,
      };
      const token = await currentToken(this.token);
      if (token) headers.authorization = `Bearer ${token}`;
      const response = await this.env.fetch(request.url, {
        method: request.method,
        headers,
        body: request.body,
        signal: controller.signal,
      });
      if (response.ok) {
        // The status line says it committed; the body is read only to free the connection.
        await response.text().catch(() => undefined);
        return { kind: 'acknowledged' };
      }
      const error = await errorFromResponse(response);
      if (!isRetryableStatus(response.status)) return { kind: 'refused', error };
      return { kind: 'retry', error, retryAfterMs: retryAfterMs(response.headers.get('retry-after')) };
    } catch (err) {
      return { kind: 'retry', error: networkError(err, timedOut), retryAfterMs: 0 };
    } finally {
      this.env.clearTimeout(timer);
    }
  }

  private retryDelayMs(attempt: number, elapsedMs: number, reason: RuncastError): number | null {
    try {
      const delayMs = this.retryPolicy.nextRetryDelayMs({
        previousRetryCount: attempt,
        elapsedMs,
        retryReason: reason,
      });
      return delayMs === null || !Number.isFinite(delayMs) ? null : Math.max(0, delayMs);
    } catch {
      // A policy that throws means "stop", as the ReconnectPolicy contract has it.
      return null;
    }
  }

  private settle(request: OutgoingRequest, error?: RuncastError): void {
    this.settledThrough = request.lastCall;
    if (error) {
      this.counters.failed += 1;
      this.failures.push({ firstCall: request.firstCall, lastCall: request.lastCall, error });
      try {
        this.onError?.(error);
      } catch {
        // A listener's failure must not stop the queue.
      }
    }
    this.releaseWaiters();
  }

  /** Settles the flushes whose calls have all been settled, in order. */
  private releaseWaiters(): void {
    for (
      let waiter = this.waiters[0];
      waiter && waiter.through <= this.settledThrough;
      waiter = this.waiters[0]
    ) {
      this.waiters.shift();
      const { through } = waiter;
      const failure = this.failures.find((f) => f.firstCall <= through && f.lastCall > this.claimedThrough);
      this.claimedThrough = Math.max(this.claimedThrough, through);
      this.failures = this.failures.filter((f) => f.lastCall > this.claimedThrough);
      if (failure) waiter.reject(failure.error);
      else waiter.resolve();
    }
  }
}
