import { defaultEnvironment } from './environment.js';
import { isUnauthorized, RuncastError } from './errors.js';
import { ExponentialBackoff, type ReconnectPolicy } from './reconnect-policy.js';
import { RunCursor } from './run-cursor.js';
import type {
  NetworkHints,
  Transport,
  TransportContext,
  TransportFactory,
  TransportHandlers,
} from './transport.js';
import { fetchRunOnce, PollingTransport } from './transports/polling.js';
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
  /** Origin of the API (`https://runcast.example`, or with a path prefix: `https://host/runcast`); empty for the page's own origin. */
  baseUrl?: string;
  /** Origin of the Socket.IO endpoint; defaults to `baseUrl`. */
  wsUrl?: string;
  /** Path of the Socket.IO endpoint; defaults to `<baseUrl's path>/socket.io`. */
  socketPath?: string;
  /** A bearer token or a function returning one; omit it to use the session cookie. */
  token?: TokenSource;
  /** Methods to use, best first. */
  transports?: readonly ConnectionMethod[];
  /** How long each method may take to deliver its first snapshot. */
  connectTimeoutMs?: Partial<Record<ConnectionMethod, number>>;
  /**
   * How long a method may stay without its first snapshot before the next one is started beside
   * it (happy eyeballs); the first to deliver carries the runs, a better one switches up when it
   * delivers. `null` waits out the whole connect timeout instead.
   */
  raceAfterMs?: number | null;
  /**
   * Fetch each new run's state over REST while the live transport connects, so that the first
   * snapshot arrives within one round trip whatever the network (default true).
   */
  openingFetch?: boolean;
  /** Failures of one method within `failureWindowMs` that make the service fall back. */
  fallbackAfterFailures?: number;
  failureWindowMs?: number;
  /**
   * A connection that carried events for this long and is then cut was cut for being idle (a
   * proxy's timeout), not refused: the same method reconnects, and nothing counts against it.
   */
  healthyAfterMs?: number;
  /**
   * Whether the server answers at all, asked after a failure without an answer from it (default:
   * `GET <baseUrl>/healthz`; a gateway error means the proxy is up and the server is not).
   */
  isServerReachable?: () => boolean | Promise<boolean>;
  /** Mean interval of background probes of a better method while on a fallback. */
  upgradeProbeIntervalMs?: number;
  reconnectPolicy?: ReconnectPolicy;
  env?: Partial<Environment>;
  /** Builds transports; tests inject fakes. */
  createTransport?: TransportFactory;
  /** Where errors thrown by callbacks and listeners go (they never break the service). */
  onListenerError?: (error: unknown) => void;
  /**
   * Ask every transport for delta updates (default true): an update carries only what changed,
   * and is made whole before any callback sees it. `false` asks for whole snapshots.
   */
  deltaUpdates?: boolean;
  /**
   * How long a long-poll answer may wait, once an event arrived, for the events that follow at
   * once to come in the same answer (default 100 ms; 0 answers at the first event).
   */
  pollLingerMs?: number;
}

/** Options of one subscription. */
export interface SubscribeOptions {
  /**
   * Replay the retained log after this seq before the snapshot and live events; `0` replays the
   * whole retained log. Applies when the run is not followed yet.
   */
  since?: number;
  /** The whole retained log first: the same as `since: 0`. */
  history?: boolean;
}

/** What `getStats` reports. */
export interface ServiceStats {
  eventsDelivered: number;
  /** Events whose seq was already delivered (another transport, a replay): dropped. */
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
  /** The REST fetch of the opening state, while it runs. */
  openingFetch: AbortController | undefined;
}

/** A transport the service opened, with what it needs to judge how it ended. */
interface Opened {
  method: ConnectionMethod;
  /** Runs it was asked to open without a cursor (it got only their snapshot). */
  blind: Set<string>;
  /** Its events of runs whose gap is being read over REST, held until the gap is filled. */
  held: Map<string, ProgressEvent[]>;
  openedAtMs: number | undefined;
  lastEventMs: number;
  /** It delivered at least one event (replayed logs may come long before the snapshot). */
  carried: boolean;
}

const DEFAULT_TIMEOUTS: Record<ConnectionMethod, number> = { websocket: 5000, sse: 5000, polling: 10_000 };
const DEFAULT_RACE_AFTER_MS = 500;
const DEFAULT_HEALTHY_AFTER_MS = 3000;
/** Seconds a long-poll waits on the server until a proxy is seen to cut shorter ones. */
const DEFAULT_POLL_WAIT_S = 25;
/** What a long-poll answer waits after the first event, for those that follow it at once. */
const DEFAULT_POLL_LINGER_MS = 100;
const REACHABILITY_TIMEOUT_MS = 3000;
/** Answers of a proxy whose upstream (the server) is down. */
const GATEWAY_DOWN = new Set([502, 503, 504]);

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
 * It alone chooses: it fetches the opening state over REST while a transport connects, races the
 * next method when one stays silent, tells an unreachable server from a blocked method and from an
 * idle cut, falls back only for a blocked method, probes a better method in the background and
 * switches up without a gap, and delivers every event exactly once.
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
  private readonly raceAfterMs: number | null;
  private readonly healthyAfterMs: number;
  private readonly subscriptions = new Map<string, Subscription>();
  private readonly listeners = new Set<(change: ConnectionChange) => void>();
  private readonly failures = new Map<ConnectionMethod, number[]>();
  /** Every transport opened and not yet retired. */
  private readonly live = new Map<Transport, Opened>();
  /** Transports still connecting, with the function that marks them open. */
  private readonly opening = new Map<Transport, () => void>();
  private readonly openTimers = new Map<Transport, unknown>();
  /** Connecting transports of a better method than the current one, by index in `order`. */
  private readonly probes = new Map<Transport, number>();
  private readonly hints: NetworkHints = {
    pollWaitS: DEFAULT_POLL_WAIT_S,
    keepaliveS: undefined,
    deltaRefused: false,
  };
  private change: ConnectionChange;
  private active: Transport | undefined;
  private pending: Transport | undefined;
  private index = 0;
  private retryCount = 0;
  private lastGoodMs: number;
  private retryTimer: unknown;
  private probeTimer: unknown;
  private raceTimer: unknown;
  /** Set while a failure is being classified (the server's reachability is asked). */
  private classifying: number | undefined;
  private classifications = 0;
  /** The method the pending transport raced, until one of them wins. */
  private racedFrom: ConnectionMethod | undefined;
  /** The fallback to report with the next transport's first request, once. */
  private fallbackReport: { from: ConnectionMethod; reason: string } | undefined;
  private lastFallbackReason: string | undefined;
  private closed = false;
  private readonly stopWake: () => void;
  private readonly counters = { eventsDelivered: 0, duplicatesDropped: 0, fallbacks: 0, upgrades: 0 };

  constructor(private readonly options: ProgressServiceOptions = {}) {
    this.env = { ...defaultEnvironment(), ...options.env };
    this.order = (options.transports ?? CONNECTION_METHODS).filter((m) => CONNECTION_METHODS.includes(m));
    if (this.order.length === 0)
      throw new RuncastError('INVALID_INPUT', 'transports must name at least one method');
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...options.connectTimeoutMs };
    this.policy = options.reconnectPolicy ?? new ExponentialBackoff({ random: () => this.env.random() });
    this.createTransport = options.createTransport ?? defaultTransportFactory;
    this.fallbackAfter = Math.max(1, options.fallbackAfterFailures ?? 2);
    this.failureWindowMs = options.failureWindowMs ?? 60_000;
    this.probeIntervalMs = options.upgradeProbeIntervalMs ?? 30_000;
    this.raceAfterMs = options.raceAfterMs === undefined ? DEFAULT_RACE_AFTER_MS : options.raceAfterMs;
    this.healthyAfterMs = options.healthyAfterMs ?? DEFAULT_HEALTHY_AFTER_MS;
    this.lastGoodMs = this.env.now();
    this.change = { method: null, state: 'idle', reason: null, since: this.env.now(), reconnects: 0 };
    this.stopWake = this.env.onWake((signal) => this.onWake(signal));
  }

  /**
   * Follows a run: `callback` gets a snapshot first, then updates and logs. With `since` (or
   * `history`), the retained logs after it come first, then the snapshot. Returns `unsubscribe`.
   */
  subscribeToRun(runId: string, callback: ProgressCallback, options: SubscribeOptions = {}): () => void {
    if (this.closed) throw new RuncastError('CLOSED', 'this ProgressService was closed');
    const since = options.history ? 0 : options.since;
    if (since !== undefined && !(Number.isSafeInteger(since) && since >= 0))
      throw new RuncastError('INVALID_INPUT', `since must be an integer >= 0, not ${since}`);
    let subscription = this.subscriptions.get(runId);
    if (!subscription) {
      subscription = {
        callbacks: new Set(),
        unprimed: new Set(),
        cursor: new RunCursor(since),
        failed: false,
        openingFetch: undefined,
      };
      this.subscriptions.set(runId, subscription);
      subscription.callbacks.add(callback);
      this.follow(runId, subscription);
    } else {
      if (subscription.cursor.lastState) {
        // A second callback on a run already followed starts from the state already known.
        const sub = subscription;
        sub.unprimed.add(callback);
        queueMicrotask(() => this.prime(sub, callback));
      }
      subscription.callbacks.add(callback);
    }
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
    for (const subscription of this.subscriptions.values()) subscription.openingFetch?.abort();
    this.subscriptions.clear();
    this.setState('closed', null, 'closed');
  }

  // Subscriptions

  private followedRunIds(): string[] {
    const ids: string[] = [];
    for (const [runId, sub] of this.subscriptions) if (!sub.failed && !sub.cursor.finished) ids.push(runId);
    return ids;
  }

  private connecting(): Transport[] {
    return [this.active, this.pending, ...this.probes.keys()].filter((t): t is Transport => t !== undefined);
  }

  private follow(runId: string, subscription: Subscription): void {
    for (const transport of this.connecting()) transport.subscribe(runId);
    // An open transport brings the snapshot within a round trip; otherwise REST does, meanwhile.
    if (!this.active && this.options.openingFetch !== false) this.fetchOpening(runId, subscription);
    if (!this.active && !this.pending && this.retryTimer === undefined && this.classifying === undefined)
      this.attempt();
  }

  private unfollow(runId: string): void {
    for (const transport of this.connecting()) transport.unsubscribe(runId);
  }

  private unsubscribe(runId: string, callback: ProgressCallback): void {
    const subscription = this.subscriptions.get(runId);
    if (!subscription?.callbacks.delete(callback) || subscription.callbacks.size > 0) return;
    subscription.openingFetch?.abort();
    this.subscriptions.delete(runId);
    this.unfollow(runId);
    if (this.subscriptions.size === 0 && !this.closed) {
      this.clearTimers();
      this.dropTransports();
      this.setState('idle', null, 'no subscriptions');
    }
  }

  /**
   * The run's state (and the logs missed since its cursor) over REST, delivered like a
   * transport's opening: the viewer sees the run within one round trip, however long the live
   * transport takes. Refused credentials end everything, as on a transport; other failures are
   * left to the live transport.
   */
  private fetchOpening(runId: string, subscription: Subscription): void {
    const controller = new AbortController();
    subscription.openingFetch = controller;
    const context = this.context(undefined, new Set());
    fetchRunOnce(context, runId, controller.signal, (event) => {
      if (!controller.signal.aborted) this.deliver(event);
    }).then(
      () => {
        if (subscription.openingFetch === controller) subscription.openingFetch = undefined;
      },
      (err: unknown) => {
        if (subscription.openingFetch === controller) subscription.openingFetch = undefined;
        if (controller.signal.aborted) return;
        if (err instanceof RuncastError && isUnauthorized(err)) this.onFailure(err, 'error');
      },
    );
  }

  /**
   * A transport opened a run without a cursor, and the REST answer set one meanwhile: logs between
   * the two states may be missing. They are read over REST (from the cursor to now) while this
   * transport's events of the run wait; then those follow, what REST already brought dropped by
   * seq. Re-opening the transport instead would race its live events with the new replay.
   */
  private fillGap(transport: Transport, opened: Opened, snapshot: ProgressEvent): void {
    const runId = snapshot.run_id;
    const held: ProgressEvent[] = [snapshot];
    opened.held.set(runId, held);
    const release = (filled: boolean) => {
      if (opened.held.get(runId) !== held) return;
      opened.held.delete(runId);
      if (filled) for (const event of held) this.deliver(event);
      // Without the gap, the run is opened again from the cursor.
      else transport.resume(runId);
    };
    fetchRunOnce(this.context(undefined, new Set()), runId, new AbortController().signal, (event) =>
      this.deliver(event),
    ).then(
      () => release(true),
      () => release(false),
    );
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
      if (subscription.cursor.lastDrop === 'duplicate') this.counters.duplicatesDropped += 1;
      return;
    }
    this.counters.eventsDelivered += 1;
    if (out.type === 'error') subscription.failed = true;
    if (out.type === 'error' || subscription.cursor.finished) subscription.openingFetch?.abort();
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

  private context(fallback: TransportContext['fallback'], blind: Set<string>): TransportContext {
    const baseUrl = (this.options.baseUrl ?? '').replace(/\/$/, '');
    return {
      baseUrl,
      wsUrl: (this.options.wsUrl ?? baseUrl).replace(/\/$/, ''),
      socketPath: this.options.socketPath ?? defaultSocketPath(baseUrl),
      token: this.options.token,
      env: this.env,
      cursor: (runId) => {
        const seq = this.subscriptions.get(runId)?.cursor.lastSeq;
        if (seq === undefined) blind.add(runId);
        return seq;
      },
      fallback,
      hints: this.hints,
      delta: this.options.deltaUpdates !== false,
      pollLingerMs: this.options.pollLingerMs ?? DEFAULT_POLL_LINGER_MS,
    };
  }

  /** Builds the transport of `order[index]`, reporting a fallback with it when one is due. */
  private build(
    index: number,
    fallback: TransportContext['fallback'],
  ): { transport: Transport; opened: Opened } {
    const method = this.order[index] ?? 'polling';
    const blind = new Set<string>();
    const transport = this.createTransport(method, this.context(fallback, blind));
    return {
      transport,
      opened: {
        method,
        blind,
        held: new Map(),
        openedAtMs: undefined,
        lastEventMs: this.env.now(),
        carried: false,
      },
    };
  }

  private handlers(transport: Transport): TransportHandlers {
    return {
      onEvent: (event) => {
        const opened = this.live.get(transport);
        if (!opened) return;
        opened.lastEventMs = this.env.now();
        opened.carried = true;
        // Callbacks see the method of the connection that brings an event, even replayed logs
        // that come before its snapshot.
        if (!this.active && (transport === this.pending || this.probes.has(transport))) {
          this.setState('connected', opened.method, this.connectedReason(transport));
        }
        if (event.type === 'snapshot' || event.type === 'error') this.opening.get(transport)?.();
        const held = opened.held.get(event.run_id);
        if (held) {
          held.push(event);
          return;
        }
        if (event.type === 'snapshot' && opened.blind.delete(event.run_id)) {
          const cursor = this.subscriptions.get(event.run_id)?.cursor;
          if (cursor?.lastState && cursor.lastSeq !== undefined && event.seq > cursor.lastSeq) {
            this.fillGap(transport, opened, event);
            return;
          }
        }
        this.deliver(event);
      },
      onClose: (error) => {
        const opened = this.live.get(transport);
        if (!opened) return;
        this.live.delete(transport);
        if (this.probes.delete(transport)) {
          this.scheduleProbe();
          return;
        }
        if (transport !== this.active) return;
        this.active = undefined;
        const nowMs = this.env.now();
        this.lastGoodMs = nowMs;
        const healthy = opened.openedAtMs !== undefined && nowMs - opened.openedAtMs >= this.healthyAfterMs;
        this.onFailure(error, 'closed', healthy ? nowMs - opened.lastEventMs : undefined);
      },
    };
  }

  private connectedReason(transport: Transport): string | null {
    if (this.probes.has(transport)) return null;
    return this.index > 0 && this.lastFallbackReason ? `fallback: ${this.lastFallbackReason}` : null;
  }

  /** Opens the method at `this.index`, bounded by its timeout, raced by the next after a while. */
  private attempt(): void {
    if (this.closed || this.subscriptions.size === 0) return;
    this.retryTimer = undefined;
    const index = this.index;
    const { transport, opened } = this.build(index, this.fallbackReport);
    this.fallbackReport = undefined;
    const method = opened.method;
    this.pending = transport;
    const fresh = this.change.state === 'idle' || this.change.state === 'closed';
    if (fresh) {
      this.lastGoodMs = this.env.now();
      this.retryCount = 0;
    }
    const state = fresh ? 'connecting' : this.change.state;
    this.setState(state, this.change.state === 'connected' ? this.change.method : method, this.change.reason);
    this.open(transport, opened);
    if (this.raceAfterMs !== null && index < this.order.length - 1) {
      this.raceTimer = this.env.setTimeout(() => {
        this.raceTimer = undefined;
        this.race(transport, index);
      }, this.raceAfterMs);
    }
  }

  /**
   * The pending method has said nothing for a while: start the next one beside it. The first to
   * deliver carries the runs; the slow one goes on as an upgrade probe (a black-holed WebSocket
   * or a buffered stream fails at its timeout, a merely slow one switches up).
   */
  private race(transport: Transport, index: number): void {
    if (this.closed || this.pending !== transport || this.active) return;
    // Events are flowing (a long history replay): it is not silent, its timeout still bounds it.
    if (this.live.get(transport)?.carried) return;
    const from = this.order[index] ?? 'websocket';
    this.pending = undefined;
    this.probes.set(transport, index);
    this.racedFrom = from;
    this.lastFallbackReason = 'no_snapshot';
    this.fallbackReport = { from, reason: 'no_snapshot' };
    this.index = index + 1;
    this.attempt();
  }

  /**
   * Connects a transport: it is open when its first snapshot (or run error) arrives, and failed
   * when it fails or stays silent past its timeout (a WebSocket that upgrades but carries
   * nothing, a stream held back by a buffering proxy).
   */
  private open(transport: Transport, opened: Opened): void {
    const method = opened.method;
    this.live.set(transport, opened);
    let settled = false;
    const settle = (error?: RuncastError) => {
      if (settled) return;
      settled = true;
      this.env.clearTimeout(timer);
      this.openTimers.delete(transport);
      this.opening.delete(transport);
      if (error) {
        const wasLive = this.live.has(transport);
        this.retire(transport);
        if (wasLive) this.onOpenFailed(transport, error);
      } else if (this.live.has(transport)) {
        opened.openedAtMs = this.env.now();
        this.onOpened(transport, method);
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

  private onOpened(transport: Transport, method: ConnectionMethod): void {
    if (transport === this.pending) {
      this.clearRace();
      this.pending = undefined;
      this.active = transport;
      this.retryCount = 0;
      this.lastGoodMs = this.env.now();
      if (this.racedFrom !== undefined) {
        // The race was won by the simpler method: that is the fallback, counted once.
        this.racedFrom = undefined;
        this.counters.fallbacks += 1;
      }
      this.setState('connected', method, this.connectedReason(transport));
      this.scheduleProbe();
      return;
    }
    const candidate = this.probes.get(transport);
    if (candidate === undefined) return;
    if (this.followedRunIds().length === 0) {
      // Everything ended meanwhile (a buffering proxy lets a stream through when it closes).
      this.probes.delete(transport);
      this.retire(transport);
      return;
    }
    // A better method delivered: it carries the runs. Both carried them for a moment; seq
    // de-duplication keeps that gap-free and single.
    const upgrade = this.active !== undefined;
    this.clearRace();
    if (this.retryTimer !== undefined) this.env.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.probes.delete(transport);
    for (const old of [this.active, this.pending]) if (old) this.retire(old);
    for (const [probe, index] of this.probes) {
      if (index > candidate) {
        this.probes.delete(probe);
        this.retire(probe);
      }
    }
    this.pending = undefined;
    this.retryCount = 0;
    this.lastGoodMs = this.env.now();
    this.active = transport;
    this.index = candidate;
    this.racedFrom = undefined;
    this.failures.set(method, []);
    if (upgrade) this.counters.upgrades += 1;
    this.setState('connected', method, upgrade ? 'upgrade' : null);
    this.scheduleProbe();
  }

  private onOpenFailed(transport: Transport, error: RuncastError): void {
    if (transport === this.pending) {
      this.clearRace();
      this.pending = undefined;
      this.onFailure(error, error.code === 'TIMEOUT' ? 'timeout' : 'error');
      return;
    }
    const candidate = this.probes.get(transport);
    if (candidate === undefined) return;
    this.probes.delete(transport);
    if (isUnauthorized(error)) {
      this.onFailure(error, 'error');
      return;
    }
    if (this.probes.size > 0 || !this.active) return;
    if (candidate + 1 < this.index) this.runProbe(candidate + 1);
    else this.scheduleProbe();
  }

  private clearRace(): void {
    if (this.raceTimer !== undefined) this.env.clearTimeout(this.raceTimer);
    this.raceTimer = undefined;
  }

  private retire(transport: Transport): void {
    const timer = this.openTimers.get(transport);
    if (timer !== undefined) this.env.clearTimeout(timer);
    this.openTimers.delete(transport);
    this.opening.delete(transport);
    if (!this.live.delete(transport)) return;
    transport.close();
  }

  /**
   * One failure of the current method, classified: refused credentials stop everything; an idle
   * cut after a healthy period (`idleMs` given) reconnects the same method; a failure without an
   * answer asks whether the server can be reached at all — if not, the same method retries
   * ('offline'); only a method that fails while the server answers counts towards a fallback.
   */
  private onFailure(error: RuncastError, reason: string, idleMs?: number): void {
    if (this.closed || this.subscriptions.size === 0) return;
    if (isUnauthorized(error)) {
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
    if (this.active || this.pending) return;
    const method = this.order[this.index] ?? 'polling';
    if (idleMs !== undefined) {
      this.learnIdleLimit(idleMs);
      this.retryCount = 0;
      this.retry(error, method, 'reconnecting', `idle cut: ${error.code}`);
      return;
    }
    if (error.status !== undefined && !GATEWAY_DOWN.has(error.status)) {
      this.countFailure(error, method, reason);
      return;
    }
    const decide = (reachable: boolean) => {
      if (reachable) this.countFailure(error, method, reason);
      else this.retry(error, method, 'offline', `server unreachable: ${error.code}`);
    };
    const answer = this.isServerReachable();
    if (typeof answer === 'boolean') {
      decide(answer);
      return;
    }
    const classification = ++this.classifications;
    this.classifying = classification;
    if (this.change.state === 'connected') this.setState('reconnecting', method, `${reason}: ${error.code}`);
    void answer.then(
      (reachable) => {
        if (this.classifying !== classification) return;
        this.classifying = undefined;
        if (this.closed || this.subscriptions.size === 0 || this.active || this.pending) return;
        decide(reachable);
      },
      () => {},
    );
  }

  private isServerReachable(): boolean | Promise<boolean> {
    if (!this.options.isServerReachable) return this.reachable();
    try {
      return this.options.isServerReachable();
    } catch (err) {
      this.call(() => {
        throw err;
      }, undefined);
      return true;
    }
  }

  /** Counts a failure of `method` while the server answers: falls back when it keeps failing. */
  private countFailure(error: RuncastError, method: ConnectionMethod, reason: string): void {
    const nowMs = this.env.now();
    const recent = (this.failures.get(method) ?? []).filter((at) => nowMs - at < this.failureWindowMs);
    recent.push(nowMs);
    this.failures.set(method, recent);
    if (recent.length >= this.fallbackAfter && this.index < this.order.length - 1) {
      this.failures.set(method, []);
      this.counters.fallbacks += 1;
      this.lastFallbackReason = reason;
      this.fallbackReport = { from: method, reason };
      this.index += 1;
      this.setState('reconnecting', this.order[this.index] ?? null, `fallback: ${reason}`);
      this.attempt();
      return;
    }
    this.retry(error, method, 'reconnecting', `${reason}: ${error.code}`);
  }

  /** Tries `method` again after the policy's delay, or gives up when the policy says so. */
  private retry(error: RuncastError, method: ConnectionMethod, state: ConnectionState, reason: string): void {
    let delayMs: number | null;
    try {
      delayMs = this.policy.nextRetryDelayMs({
        previousRetryCount: this.retryCount,
        elapsedMs: this.env.now() - this.lastGoodMs,
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
    this.setState(state, method, reason);
    this.retryTimer = this.env.setTimeout(() => this.attempt(), Math.max(0, delayMs));
  }

  /** Whether the server answers at all: a gateway error means the proxy is there, the server not. */
  private async reachable(): Promise<boolean> {
    const controller = new AbortController();
    const timer = this.env.setTimeout(() => controller.abort(), REACHABILITY_TIMEOUT_MS);
    try {
      const baseUrl = (this.options.baseUrl ?? '').replace(/\/$/, '');
      const response = await this.env.fetch(`${baseUrl}/healthz`, {
        cache: 'no-store',
        signal: controller.signal,
      });
      return !GATEWAY_DOWN.has(response.status);
    } catch {
      return false;
    } finally {
      this.env.clearTimeout(timer);
    }
  }

  /**
   * A connection cut after `idleMs` without an event: a proxy allows no longer. Long-polls wait
   * less and streams ask for keep-alives within it from now on.
   */
  private learnIdleLimit(idleMs: number): void {
    const limitS = Math.floor(idleMs / 1000);
    if (limitS < 2) return;
    this.hints.pollWaitS = Math.max(1, Math.min(this.hints.pollWaitS, limitS - 1));
    this.hints.keepaliveS = Math.max(1, Math.min(this.hints.keepaliveS ?? 60, Math.floor(limitS / 2)));
  }

  // Upgrade probes

  private scheduleProbe(): void {
    if (
      this.closed ||
      this.index === 0 ||
      this.probes.size > 0 ||
      this.probeTimer !== undefined ||
      !this.active
    )
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
    const { transport, opened } = this.build(candidate, {
      from: this.order[this.index] ?? 'polling',
      reason: 'upgrade',
    });
    this.probes.set(transport, candidate);
    this.open(transport, opened);
  }

  private onWake(signal: WakeSignal): void {
    if (this.closed || signal === 'offline') return;
    if (this.retryTimer !== undefined) {
      // The network or the page is back: try now rather than at the end of the backoff.
      this.env.clearTimeout(this.retryTimer);
      this.retryTimer = undefined;
      this.attempt();
    } else if (this.active && this.index > 0 && this.probes.size === 0) {
      if (this.probeTimer !== undefined) this.env.clearTimeout(this.probeTimer);
      this.probeTimer = undefined;
      this.runProbe(0);
    }
  }

  private clearTimers(): void {
    if (this.retryTimer !== undefined) this.env.clearTimeout(this.retryTimer);
    if (this.probeTimer !== undefined) this.env.clearTimeout(this.probeTimer);
    this.clearRace();
    this.retryTimer = undefined;
    this.probeTimer = undefined;
    this.classifying = undefined;
  }

  private dropTransports(): void {
    for (const transport of this.connecting()) this.retire(transport);
    this.active = undefined;
    this.pending = undefined;
    this.probes.clear();
    this.racedFrom = undefined;
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

/** Socket.IO's path under the API's: `https://host/runcast` → `/runcast/socket.io`. */
export function defaultSocketPath(baseUrl: string): string {
  let prefix = '';
  try {
    prefix = new URL(baseUrl).pathname;
  } catch {
    // A relative base (`/runcast`) or none: its path is the prefix.
    prefix = baseUrl.startsWith('/') ? baseUrl : '';
  }
  return `${prefix.replace(/\/$/, '')}/socket.io`;
}
