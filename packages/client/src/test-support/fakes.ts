import type { LogEvent, RunSnapshot, SnapshotEvent, UpdateEvent } from '@runcast/protocol';
import { RuncastError } from '../errors.js';
import type { ReconnectPolicy, RetryContext } from '../reconnect-policy.js';
import type { Transport, TransportContext, TransportFactory, TransportHandlers } from '../transport.js';
import type { ConnectionMethod, Environment, ProgressEvent, RunErrorEvent, WakeSignal } from '../types.js';

interface Timer {
  id: number;
  dueMs: number;
  fn: () => void;
}

/**
 * The timer half of an Environment, run by hand: nothing fires until `advance` moves the clock,
 * and then due timers run in order of due time (ties in the order they were set).
 */
export class FakeClock {
  private nowMs: number;
  private nextId = 1;
  private readonly timers = new Map<number, Timer>();
  private randomSource: () => number;

  constructor(options: { startMs?: number; random?: number | (() => number) } = {}) {
    this.nowMs = options.startMs ?? 1_000_000;
    this.randomSource = () => 0.5;
    if (options.random !== undefined) this.setRandom(options.random);
  }

  now(): number {
    return this.nowMs;
  }

  setTimeout(fn: () => void, ms: number): number {
    const id = this.nextId++;
    const delayMs = Number.isFinite(ms) && ms > 0 ? ms : 0;
    this.timers.set(id, { id, dueMs: this.nowMs + delayMs, fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    if (typeof handle === 'number') this.timers.delete(handle);
  }

  random(): number {
    return this.randomSource();
  }

  /** A fixed value in [0, 1) or a function returning one. */
  setRandom(random: number | (() => number)): void {
    this.randomSource = typeof random === 'number' ? () => random : random;
  }

  /** Moves the clock `ms` forward, running every timer that falls due on the way, in order. */
  advance(ms: number): void {
    const targetMs = this.nowMs + ms;
    for (;;) {
      const next = this.nextTimer();
      if (!next || next.dueMs > targetMs) break;
      this.timers.delete(next.id);
      this.nowMs = next.dueMs;
      next.fn();
    }
    this.nowMs = targetMs;
  }

  /** Timers set and neither run nor cleared. */
  pendingTimers(): number {
    return this.timers.size;
  }

  /** Time until the next timer is due, or undefined when none is set. */
  nextTimerInMs(): number | undefined {
    const next = this.nextTimer();
    return next === undefined ? undefined : next.dueMs - this.nowMs;
  }

  /** The clock as the plain object that `ProgressService`'s `env` option spreads. */
  environment(): Pick<Environment, 'setTimeout' | 'clearTimeout' | 'now' | 'random'> {
    return {
      setTimeout: (fn, ms) => this.setTimeout(fn, ms),
      clearTimeout: (handle) => this.clearTimeout(handle),
      now: () => this.now(),
      random: () => this.random(),
    };
  }

  private nextTimer(): Timer | undefined {
    let next: Timer | undefined;
    // Map iteration follows insertion order, so `<` keeps ties in the order they were set.
    for (const timer of this.timers.values()) if (!next || timer.dueMs < next.dueMs) next = timer;
    return next;
  }
}

/** Browser wake signals raised by the test. */
export class FakeWakeSignals {
  private readonly listeners = new Set<(signal: WakeSignal) => void>();

  readonly onWake = (listener: (signal: WakeSignal) => void): (() => void) => {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  };

  signal(signal: WakeSignal): void {
    for (const listener of [...this.listeners]) listener(signal);
  }

  get listenerCount(): number {
    return this.listeners.size;
  }
}

/**
 * A whole Environment of fakes; the network fails loudly (fake transports never use it) unless
 * the test passes its own `fetch`.
 */
export function fakeEnvironment(
  clock: FakeClock,
  wake = new FakeWakeSignals(),
  fetch: typeof globalThis.fetch = () => Promise.reject(new TypeError('fake environment: no network')),
): Environment {
  return {
    ...clock.environment(),
    onWake: wake.onWake,
    fetch,
    createSocket: () => {
      throw new Error('fake environment: no sockets');
    },
  };
}

/** Resolves once every queued microtask (and the promise callbacks they queue) has run. */
export function flushMicrotasks(): Promise<void> {
  return new Promise((resolve) => globalThis.setTimeout(resolve, 0));
}

type ConnectState = 'idle' | 'pending' | 'resolved' | 'rejected' | 'dropped';

/**
 * A Transport the test drives. `connect` returns a promise that stays pending until the test
 * resolves or rejects it — or until an opening snapshot (or a run error) is emitted, which
 * resolves it, as the contract says. `emit` hands an event to the service, `drop` fails the
 * connection from the server side (rejecting `connect` if it is still pending, else `onClose`).
 * Events can still be emitted after `close()`: that is how a test plays a stale callback.
 */
export class FakeTransport implements Transport {
  readonly subscribed: string[] = [];
  readonly unsubscribed: string[] = [];
  readonly resumed: string[] = [];
  closeCalls = 0;
  /** The run ids `connect` was given, and each run's cursor at that moment. */
  connectRunIds: readonly string[] | undefined;
  cursorsAtConnect: Record<string, number | undefined> = {};
  private handlers: TransportHandlers | undefined;
  private connectState: ConnectState = 'idle';
  private resolvePromise: (() => void) | undefined;
  private rejectPromise: ((error: RuncastError) => void) | undefined;

  constructor(
    readonly method: ConnectionMethod,
    readonly context: TransportContext,
    private readonly onConnect: (transport: FakeTransport) => void = () => {},
  ) {}

  connect(runIds: readonly string[], handlers: TransportHandlers): Promise<void> {
    if (this.connectState !== 'idle') throw new Error(`${this.method}: connect called twice`);
    this.connectState = 'pending';
    this.handlers = handlers;
    this.connectRunIds = [...runIds];
    for (const runId of runIds) this.cursorsAtConnect[runId] = this.context.cursor(runId);
    const promise = new Promise<void>((resolve, reject) => {
      this.resolvePromise = resolve;
      this.rejectPromise = reject;
    });
    this.onConnect(this);
    return promise;
  }

  subscribe(runId: string): void {
    this.subscribed.push(runId);
  }

  unsubscribe(runId: string): void {
    this.unsubscribed.push(runId);
  }

  resume(runId: string): void {
    this.resumed.push(runId);
  }

  close(): void {
    this.closeCalls += 1;
  }

  get closed(): boolean {
    return this.closeCalls > 0;
  }

  /** `connect` was called and has not rejected, and the service has not closed it. */
  get isOpen(): boolean {
    return (this.connectState === 'pending' || this.connectState === 'resolved') && !this.closed;
  }

  get connectSettled(): boolean {
    return this.connectState !== 'idle' && this.connectState !== 'pending';
  }

  resolveConnect(): void {
    if (this.connectState !== 'pending') throw new Error(`${this.method}: connect is ${this.connectState}`);
    this.connectState = 'resolved';
    this.resolvePromise?.();
  }

  rejectConnect(error: RuncastError = new RuncastError('CONNECT_FAILED', `${this.method} refused`)): void {
    if (this.connectState !== 'pending') throw new Error(`${this.method}: connect is ${this.connectState}`);
    this.connectState = 'rejected';
    this.rejectPromise?.(error);
  }

  /** Hands `event` to the service; a snapshot or run error first resolves a pending `connect`. */
  emit(event: ProgressEvent): void {
    const handlers = this.handlers;
    if (!handlers) throw new Error(`${this.method}: emit before connect`);
    handlers.onEvent(event);
    if (this.connectState === 'pending' && (event.type === 'snapshot' || event.type === 'error')) {
      this.resolveConnect();
    }
  }

  /**
   * The server side ends the connection: a pending `connect` rejects, an open one reports
   * `onClose`. Dropping again plays a stale second close.
   */
  drop(error: RuncastError = new RuncastError('DISCONNECTED', `${this.method} dropped`)): void {
    const handlers = this.handlers;
    if (!handlers) throw new Error(`${this.method}: drop before connect`);
    if (this.connectState === 'pending') {
      this.rejectConnect(error);
      return;
    }
    this.connectState = 'dropped';
    handlers.onClose(error);
  }
}

/**
 * What a fake transport does when connected: `manual` leaves it to the test; `fail` rejects;
 * `open` sends an opening snapshot per run and resolves; a function scripts anything else.
 */
export type ConnectBehaviour = 'manual' | 'fail' | 'open' | ((transport: FakeTransport) => void);

/** Builds FakeTransports with scripted behaviour per method and keeps every one it built. */
export class FakeTransportFactory {
  readonly created: FakeTransport[] = [];
  private readonly behaviours: Partial<Record<ConnectionMethod, ConnectBehaviour>>;

  constructor(
    behaviours: Partial<Record<ConnectionMethod, ConnectBehaviour>> = {},
    /** The snapshot an `open` transport sends for a run, given the run's cursor. */
    private readonly openingSnapshot: (runId: string, cursor: number | undefined) => SnapshotEvent = (
      runId,
      cursor,
    ) => snapshotEvent(runId, cursor ?? 0),
  ) {
    this.behaviours = { ...behaviours };
  }

  /** The TransportFactory to pass as `createTransport`. */
  readonly create: TransportFactory = (method, context) => {
    const transport = new FakeTransport(method, context, (t) => this.onConnect(t));
    this.created.push(transport);
    return transport;
  };

  /** Changes what later connects of `method` do. */
  script(method: ConnectionMethod, behaviour: ConnectBehaviour): void {
    this.behaviours[method] = behaviour;
  }

  byMethod(method: ConnectionMethod): FakeTransport[] {
    return this.created.filter((t) => t.method === method);
  }

  /** The methods of every transport built, in order. */
  methods(): ConnectionMethod[] {
    return this.created.map((t) => t.method);
  }

  /** The last transport built (of `method`, if given). */
  last(method?: ConnectionMethod): FakeTransport {
    const list = method ? this.byMethod(method) : this.created;
    const transport = list[list.length - 1];
    if (!transport) throw new Error(`no ${method ?? ''} transport was created`);
    return transport;
  }

  /** Transports connected (or connecting) and not closed by the service. */
  open(): FakeTransport[] {
    return this.created.filter((t) => t.isOpen);
  }

  private onConnect(transport: FakeTransport): void {
    const behaviour = this.behaviours[transport.method] ?? 'manual';
    if (behaviour === 'manual') return;
    // A real transport answers from the network, never inside `connect` itself.
    queueMicrotask(() => {
      if (typeof behaviour === 'function') behaviour(transport);
      else if (behaviour === 'fail') transport.rejectConnect();
      else
        for (const runId of transport.connectRunIds ?? [])
          transport.emit(this.openingSnapshot(runId, transport.cursorsAtConnect[runId]));
    });
  }
}

/** A reconnect policy that records every context it is asked about. */
export class RecordingPolicy implements ReconnectPolicy {
  readonly contexts: RetryContext[] = [];

  constructor(private readonly decide: number | null | ((context: RetryContext) => number | null) = 1000) {}

  nextRetryDelayMs(context: RetryContext): number | null {
    this.contexts.push(context);
    return typeof this.decide === 'function' ? this.decide(context) : this.decide;
  }
}

const AT = '2026-01-01T00:00:00.000Z';

/** A whole run snapshot at `seq`, RUNNING unless `patch` says otherwise. */
export function runSnapshot(runId: string, seq: number, patch: Partial<RunSnapshot> = {}): RunSnapshot {
  return {
    run_id: runId,
    project_id: 'prj_test',
    kind: 'external',
    mode: null,
    status: 'RUNNING',
    stage: null,
    current_stage: null,
    progress: null,
    stats: null,
    seq,
    created_at: AT,
    started_at: AT,
    finished_at: null,
    updated_at: AT,
    error: null,
    retry_of: null,
    ...patch,
  };
}

export function snapshotEvent(
  runId: string,
  seq: number,
  patch: Partial<RunSnapshot> = {},
  eventsTruncated?: boolean,
): SnapshotEvent {
  const event: SnapshotEvent = {
    run_id: runId,
    seq,
    type: 'snapshot',
    at: AT,
    snapshot: runSnapshot(runId, seq, patch),
  };
  if (eventsTruncated !== undefined) event.events_truncated = eventsTruncated;
  return event;
}

export function updateEvent(runId: string, seq: number, patch: Partial<RunSnapshot> = {}): UpdateEvent {
  return { run_id: runId, seq, type: 'update', at: AT, snapshot: runSnapshot(runId, seq, patch) };
}

export function logEvent(runId: string, seq: number, message = `line ${seq}`): LogEvent {
  return { run_id: runId, seq, type: 'log', at: AT, log: { level: 'info', message } };
}

export function runErrorEvent(runId: string, code = 'RUN_NOT_FOUND'): RunErrorEvent {
  return { run_id: runId, type: 'error', error: { code, message: `run ${runId}: ${code}` } };
}
