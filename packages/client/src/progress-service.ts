import { defaultEnvironment } from './environment.js';
import { RuncastError } from './errors.js';
import { ExponentialBackoff, type ReconnectPolicy } from './reconnect-policy.js';
import { RunCursor } from './run-cursor.js';
import type { Transport, TransportContext, TransportFactory, TransportHandlers } from './transport.js';
import { PollingTransport } from './transports/polling.js';
import { SseTransport } from './transports/sse.js';
import { WebSocketTransport } from './transports/websocket.js';
import {
  CONNECTION_METHODS,
  type ConnectionChange,
  type ConnectionMethod,
  type ConnectionState,
  type Environment,
  type ProgressCallback,
  type ProgressEvent,
  type TokenSource,
  type WakeSignal,
} from './types.js';

export interface ProgressServiceOptions {
  /** Origin of the API (`https://runcast.example`); empty for the page's own origin. */
  baseUrl?: string;
  /** Origin of the Socket.IO endpoint; defaults to `baseUrl`. */
  wsUrl?: string;
  socketPath?: string;
  /** A bearer token or a function returning one; omit it to use the session cookie. */
  token?: TokenSource;
  /** Methods to use, best first. */
  transports?: readonly ConnectionMethod[];
  /** How long each method may take to deliver its first snapshot. */
  connectTimeoutMs?: Partial<Record<ConnectionMethod, number>>;
  /** Failures of one method within `failureWindowMs` that make the service fall back. */
  fallbackAfterFailures?: number;
  failureWindowMs?: number;
  /** Mean interval of background probes of a better method while on a fallback. */
  upgradeProbeIntervalMs?: number;
  reconnectPolicy?: ReconnectPolicy;
  env?: Partial<Environment>;
  /** Builds transports; tests inject fakes. */
  createTransport?: TransportFactory;
  /** Where errors thrown by callbacks and listeners go (they never break the service). */
  onListenerError?: (error: unknown) => void;
}

/** What `getStats` reports. */
export interface ServiceStats {
  eventsDelivered: number;
  duplicatesDropped: number;
  fallbacks: number;
  upgrades: number;
  reconnects: number;
}

interface Subscription {
  callbacks: Set<ProgressCallback>;
  /** Callbacks added to a followed run that have not had their opening snapshot yet. */
  unprimed: Set<ProgressCallback>;
  cursor: RunCursor;
  failed: boolean;
}

const DEFAULT_TIMEOUTS: Record<ConnectionMethod, number> = { websocket: 5000, sse: 5000, polling: 10_000 };

/** The transports this package ships, by method. */
export const defaultTransportFactory: TransportFactory = (method, context) => {
  switch (method) {
    case 'websocket':
      return new WebSocketTransport(context);
    case 'sse':
      return new SseTransport(context);
    case 'polling':
      return new PollingTransport(context);
  }
};

/**
 * Live progress of runs over the best transport that works: WebSocket, then SSE, then polling.
 * It alone chooses, falls back after repeated failures, probes a better method in the
 * background and switches up without a gap, and delivers every event exactly once.
 */
export class ProgressService {
  private readonly env: Environment;
  private readonly order: readonly ConnectionMethod[];
  private readonly timeouts: Record<ConnectionMethod, number>;
  private readonly policy: ReconnectPolicy;
  private readonly createTransport: TransportFactory;
  private readonly fallbackAfter: number;
  private readonly failureWindowMs: number;
  private readonly probeIntervalMs: number;
  private readonly subscriptions = new Map<string, Subscription>();
  private readonly listeners = new Set<(change: ConnectionChange) => void>();
  private readonly failures = new Map<ConnectionMethod, number[]>();
  private readonly live = new Set<Transport>();
  /** Transports still connecting, with the function that marks them open. */
  private readonly opening = new Map<Transport, () => void>();
  private readonly openTimers = new Map<Transport, unknown>();
  private change: ConnectionChange;
  private active: Transport | undefined;
  private pending: Transport | undefined;
  private probe: Transport | undefined;
  private index = 0;
  private retryCount = 0;
  private lastGoodMs: number;
  private retryTimer: unknown;
  private probeTimer: unknown;
  private lastFallback: { from: ConnectionMethod; reason: string } | undefined;
  private closed = false;
  private readonly stopWake: () => void;
  private readonly counters = { eventsDelivered: 0, duplicatesDropped: 0, fallbacks: 0, upgrades: 0 };

  constructor(private readonly options: ProgressServiceOptions = {}) {
    this.env = { ...defaultEnvironment(), ...options.env };
    this.order = (options.transports ?? CONNECTION_METHODS).filter((m) => CONNECTION_METHODS.includes(m));
    if (this.order.length === 0)
      throw new RuncastError('INVALID_OPTIONS', 'transports must name at least one method');
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...options.connectTimeoutMs };
    this.policy = options.reconnectPolicy ?? new ExponentialBackoff({ random: () => this.env.random() });
    this.createTransport = options.createTransport ?? defaultTransportFactory;
    this.fallbackAfter = Math.max(1, options.fallbackAfterFailures ?? 2);
    this.failureWindowMs = options.failureWindowMs ?? 60_000;
    this.probeIntervalMs = options.upgradeProbeIntervalMs ?? 30_000;
    this.lastGoodMs = this.env.now();
    this.change = { method: null, state: 'idle', reason: null, since: this.env.now(), reconnects: 0 };
    this.stopWake = this.env.onWake((signal) => this.onWake(signal));
  }

  /** Follows a run: `callback` gets a snapshot first, then updates and logs. Returns `unsubscribe`. */
  subscribeToRun(runId: string, callback: ProgressCallback): () => void {
    if (this.closed) throw new RuncastError('CLOSED', 'this ProgressService was closed');
    let subscription = this.subscriptions.get(runId);
    if (!subscription) {
      subscription = { callbacks: new Set(), unprimed: new Set(), cursor: new RunCursor(), failed: false };
      this.subscriptions.set(runId, subscription);
      this.follow(runId);
    } else if (subscription.cursor.lastState) {
      // A second callback on a run already followed starts from the state already known.
      const sub = subscription;
      sub.unprimed.add(callback);
      queueMicrotask(() => this.prime(sub, callback));
    }
    subscription.callbacks.add(callback);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.unsubscribe(runId, callback);
    };
  }

  /** The method now carrying events, or null while none is connected. */
  getConnectionMethod(): ConnectionMethod | null {
    return this.change.state === 'connected' ? this.change.method : null;
  }

  /** Counters since the service was created: events delivered, duplicates dropped, switches. */
  getStats(): ServiceStats {
    return { ...this.counters, reconnects: this.change.reconnects };
  }

  /** The current connection state. */
  getConnectionState(): ConnectionChange {
    return this.change;
  }

  /** Calls `listener` on every change of method or state; returns the function that stops it. */
  onConnectionChange(listener: (change: ConnectionChange) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Ends every connection and subscription; the service cannot be used again. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopWake();
    this.clearTimers();
    this.dropTransports();
    this.subscriptions.clear();
    this.setState('closed', null, 'closed');
  }

  // Subscriptions

  private followedRunIds(): string[] {
    const ids: string[] = [];
    for (const [runId, sub] of this.subscriptions) if (!sub.failed && !sub.cursor.finished) ids.push(runId);
    return ids;
  }

  private follow(runId: string): void {
    for (const transport of [this.active, this.pending, this.probe]) transport?.subscribe(runId);
    if (!this.active && !this.pending && this.retryTimer === undefined) this.attempt();
  }

  private unfollow(runId: string): void {
    for (const transport of [this.active, this.pending, this.probe]) transport?.unsubscribe(runId);
  }

  private unsubscribe(runId: string, callback: ProgressCallback): void {
    const subscription = this.subscriptions.get(runId);
    if (!subscription?.callbacks.delete(callback) || subscription.callbacks.size > 0) return;
    this.subscriptions.delete(runId);
    this.unfollow(runId);
    if (this.subscriptions.size === 0 && !this.closed) {
      this.clearTimers();
      this.dropTransports();
      this.setState('idle', null, 'no subscriptions');
    }
  }

  /** Gives a callback added to a followed run the state known now, once, before anything else. */
  private prime(subscription: Subscription, callback: ProgressCallback): void {
    if (!subscription.unprimed.delete(callback) || !subscription.callbacks.has(callback)) return;
    const opening = subscription.cursor.lastState;
    if (opening) this.call(callback, opening);
  }

  private deliver(event: ProgressEvent): void {
    const subscription = this.subscriptions.get(event.run_id);
    // After a run error nothing more is said about that run, even what was still in flight.
    if (!subscription || subscription.failed) return;
    for (const callback of [...subscription.unprimed]) this.prime(subscription, callback);
    const out = subscription.cursor.accept(event);
    if (!out) {
      this.counters.duplicatesDropped += 1;
      return;
    }
    this.counters.eventsDelivered += 1;
    if (out.type === 'error') subscription.failed = true;
    for (const callback of [...subscription.callbacks]) this.call(callback, out);
    if (subscription.failed || subscription.cursor.finished) this.unfollow(event.run_id);
    if (subscription.failed && this.followedRunIds().length === 0 && this.change.state !== 'unauthorized') {
      // The last run followed failed for good: no connection is needed until another is followed.
      this.clearTimers();
      this.dropTransports();
      this.setState('idle', null, `nothing to follow: ${out.type === 'error' ? out.error.code : ''}`);
    }
  }

  /** Ends every followed run with `error` and every transport. */
  private failAll(error: RuncastError): void {
    this.clearTimers();
    this.dropTransports();
    for (const runId of this.followedRunIds()) {
      this.deliver({ run_id: runId, type: 'error', error: { code: error.code, message: error.message } });
    }
  }

  private call<T>(fn: (value: T) => void, value: T): void {
    try {
      fn(value);
    } catch (err) {
      (this.options.onListenerError ?? ((e: unknown) => console.error('runcast: a listener threw', e)))(err);
    }
  }

  // Connection state machine

  private context(fallback: TransportContext['fallback']): TransportContext {
    const baseUrl = (this.options.baseUrl ?? '').replace(/\/$/, '');
    return {
      baseUrl,
      wsUrl: (this.options.wsUrl ?? baseUrl).replace(/\/$/, ''),
      socketPath: this.options.socketPath ?? '/socket.io',
      token: this.options.token,
      env: this.env,
      cursor: (runId) => this.subscriptions.get(runId)?.cursor.lastSeq,
      fallback,
    };
  }

  private handlers(transport: Transport): TransportHandlers {
    return {
      onEvent: (event) => {
        if (!this.live.has(transport)) return;
        if (event.type === 'snapshot' || event.type === 'error') this.opening.get(transport)?.();
        this.deliver(event);
      },
      onClose: (error) => {
        if (!this.live.has(transport)) return;
        this.live.delete(transport);
        if (transport === this.probe) {
          this.probe = undefined;
          this.scheduleProbe();
          return;
        }
        if (transport !== this.active) return;
        this.active = undefined;
        this.lastGoodMs = this.env.now();
        this.onFailure(error, 'closed');
      },
    };
  }

  /** Opens the method at `this.index`, bounded by its timeout. */
  private attempt(): void {
    if (this.closed || this.subscriptions.size === 0) return;
    this.retryTimer = undefined;
    const method = this.order[this.index] ?? 'polling';
    const transport = this.createTransport(
      method,
      this.context(this.index > 0 ? this.lastFallback : undefined),
    );
    this.pending = transport;
    const fresh = this.change.state === 'idle' || this.change.state === 'closed';
    if (fresh) {
      this.lastGoodMs = this.env.now();
      this.retryCount = 0;
    }
    const state = fresh ? 'connecting' : this.change.state;
    this.setState(state, method, this.change.reason);
    this.open(
      transport,
      method,
      () => {
        if (this.pending !== transport) return;
        this.pending = undefined;
        this.active = transport;
        this.retryCount = 0;
        this.lastGoodMs = this.env.now();
        const reason = this.index > 0 && this.lastFallback ? `fallback: ${this.lastFallback.reason}` : null;
        this.setState('connected', method, reason);
        this.scheduleProbe();
      },
      (error) => {
        if (this.pending !== transport) return;
        this.pending = undefined;
        this.onFailure(error, error.code === 'TIMEOUT' ? 'timeout' : 'error');
      },
    );
  }

  /**
   * Connects a transport: `onOpen` runs when its first event arrives — before that event is
   * delivered, so that callbacks already see the new method — and `onFail` when it fails or
   * stays silent past its timeout (a WebSocket that upgrades but carries nothing, a stream held
   * back by a buffering proxy).
   */
  private open(
    transport: Transport,
    method: ConnectionMethod,
    onOpen: () => void,
    onFail: (error: RuncastError) => void,
  ): void {
    this.live.add(transport);
    let settled = false;
    const settle = (error?: RuncastError) => {
      if (settled) return;
      settled = true;
      this.env.clearTimeout(timer);
      this.openTimers.delete(transport);
      this.opening.delete(transport);
      if (error) {
        this.retire(transport);
        onFail(error);
      } else if (this.live.has(transport)) {
        onOpen();
      }
    };
    const timer = this.env.setTimeout(
      () => settle(new RuncastError('TIMEOUT', `${method}: no snapshot within ${this.timeouts[method]} ms`)),
      this.timeouts[method],
    );
    this.opening.set(transport, () => settle());
    this.openTimers.set(transport, timer);
    const handlers = this.handlers(transport);
    transport.connect(this.followedRunIds(), handlers).then(
      () => settle(),
      (error: unknown) => {
        const failure =
          error instanceof RuncastError ? error : new RuncastError('CONNECT_FAILED', String(error));
        if (settled) handlers.onClose(failure);
        else settle(failure);
      },
    );
  }

  private retire(transport: Transport): void {
    const timer = this.openTimers.get(transport);
    if (timer !== undefined) this.env.clearTimeout(timer);
    this.openTimers.delete(transport);
    this.opening.delete(transport);
    if (!this.live.delete(transport)) return;
    transport.close();
  }

  /** One failure of the current method: retry it after a delay, or fall back when it keeps failing. */
  private onFailure(error: RuncastError, reason: string): void {
    if (this.closed || this.subscriptions.size === 0) return;
    if (error.code === 'UNAUTHORIZED') {
      // Retrying with the same credentials cannot work: every run is told, and the service stops.
      this.setState('unauthorized', null, error.message);
      this.failAll(error);
      return;
    }
    if (this.followedRunIds().length === 0) {
      // Every run ended or failed for good (access ended): there is nothing to reconnect for.
      this.dropTransports();
      this.setState('idle', null, `nothing to follow: ${error.code}`);
      return;
    }
    const method = this.order[this.index] ?? 'polling';
    const nowMs = this.env.now();
    const recent = (this.failures.get(method) ?? []).filter((at) => nowMs - at < this.failureWindowMs);
    recent.push(nowMs);
    this.failures.set(method, recent);
    if (recent.length >= this.fallbackAfter && this.index < this.order.length - 1) {
      this.failures.set(method, []);
      this.counters.fallbacks += 1;
      this.lastFallback = { from: method, reason };
      this.index += 1;
      this.setState('reconnecting', this.order[this.index] ?? null, `fallback: ${reason}`);
      this.attempt();
      return;
    }
    let delayMs: number | null;
    try {
      delayMs = this.policy.nextRetryDelayMs({
        previousRetryCount: this.retryCount,
        elapsedMs: nowMs - this.lastGoodMs,
        retryReason: error,
      });
    } catch (err) {
      // A policy that throws means "stop", like one that returns null.
      this.call(() => {
        throw err;
      }, undefined);
      delayMs = null;
    }
    if (delayMs === null) {
      this.setState('closed', null, `gave up: ${error.message}`);
      return;
    }
    this.retryCount += 1;
    this.setState('reconnecting', method, `${reason}: ${error.code}`);
    this.retryTimer = this.env.setTimeout(() => this.attempt(), Math.max(0, delayMs));
  }

  // Upgrade probes

  private scheduleProbe(): void {
    if (this.closed || this.index === 0 || this.probe || this.probeTimer !== undefined || !this.active)
      return;
    // Jittered, so that clients that fell back together do not probe together.
    const delayMs = this.probeIntervalMs * (0.5 + this.env.random());
    this.probeTimer = this.env.setTimeout(() => {
      this.probeTimer = undefined;
      this.runProbe(0);
    }, delayMs);
  }

  /** Tries the better method at `candidate`; switches to it when it delivers its snapshots. */
  private runProbe(candidate: number): void {
    if (this.closed || !this.active || candidate >= this.index) return;
    const method = this.order[candidate] ?? 'websocket';
    const probe = this.createTransport(
      method,
      this.context({ from: this.order[this.index] ?? 'polling', reason: 'upgrade' }),
    );
    this.probe = probe;
    this.open(
      probe,
      method,
      () => {
        if (this.probe !== probe) return;
        // Both carried the runs for a moment; seq de-duplication keeps that gap-free and single.
        if (this.retryTimer !== undefined) this.env.clearTimeout(this.retryTimer);
        this.retryTimer = undefined;
        for (const old of [this.active, this.pending]) if (old) this.retire(old);
        this.pending = undefined;
        this.retryCount = 0;
        this.lastGoodMs = this.env.now();
        this.probe = undefined;
        this.active = probe;
        this.index = candidate;
        this.failures.set(method, []);
        this.counters.upgrades += 1;
        this.setState('connected', method, 'upgrade');
        this.scheduleProbe();
      },
      () => {
        if (this.probe !== probe) return;
        this.probe = undefined;
        if (candidate + 1 < this.index) this.runProbe(candidate + 1);
        else this.scheduleProbe();
      },
    );
  }

  private onWake(signal: WakeSignal): void {
    if (this.closed || signal === 'offline') return;
    if (this.retryTimer !== undefined) {
      // The network or the page is back: try now rather than at the end of the backoff.
      this.env.clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
      this.attempt();
    } else if (this.active && this.index > 0 && !this.probe) {
      if (this.probeTimer !== undefined) this.env.clearTimeout(this.probeTimer);
      this.probeTimer = undefined;
      this.runProbe(0);
    }
  }

  private clearTimers(): void {
    if (this.retryTimer !== undefined) this.env.clearTimeout(this.retryTimer);
    if (this.probeTimer !== undefined) this.env.clearTimeout(this.probeTimer);
    this.retryTimer = undefined;
    this.probeTimer = undefined;
  }

  private dropTransports(): void {
    for (const transport of [this.active, this.pending, this.probe]) if (transport) this.retire(transport);
    this.active = undefined;
    this.pending = undefined;
    this.probe = undefined;
  }

  /** The one setter of the connection state; listeners hear every change. */
  private setState(state: ConnectionState, method: ConnectionMethod | null, reason: string | null): void {
    const previous = this.change;
    if (previous.state === state && previous.method === method && previous.reason === reason) return;
    const reconnects =
      previous.reconnects + (state === 'reconnecting' && previous.state !== 'reconnecting' ? 1 : 0);
    this.change = {
      method,
      state,
      reason,
      since: previous.state === state && previous.method === method ? previous.since : this.env.now(),
      reconnects,
    };
    for (const listener of [...this.listeners]) this.call(listener, this.change);
  }
}
