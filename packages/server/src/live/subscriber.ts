import type { TransportName } from '../metrics.js';
import type { EncodedEvent } from './encoded-event.js';

/** Why the server ended a subscriber's connection. */
export type DisconnectReason =
  | 'SLOW_CONSUMER'
  | 'SERVER_SHUTDOWN'
  | 'RUN_ENDED'
  | 'CLIENT_CLOSED'
  /** The credentials the connection was opened with ended (its runs were told why first). */
  | 'ACCESS_ENDED';

/** Why a run's subscription ended for good, as the client is told. */
export interface RunFailure {
  code: string;
  message: string;
}

/** The transport end of a subscriber: how one connection is written to. */
export interface Sink {
  readonly transport: TransportName;
  /**
   * True while the connection cannot take more without buffering (a full buffer, or a write
   * still in flight); the sink's owner calls `Subscriber.flush` once it can.
   */
  isBusy(): boolean;
  /**
   * Writes the events in one go, in order. The array is the subscriber's and is reused after the
   * call: read it, do not keep it.
   */
  write(events: readonly EncodedEvent[]): void;
  /** Called after `write` delivered the terminal update of a run. */
  runEnded(runId: string): void;
  /**
   * The run's subscription ended for good (access to it ended): tell the client why. Nothing of
   * the run is written after it.
   */
  runFailed(runId: string, failure: RunFailure): void;
  /** Ends the connection. */
  close(reason: DisconnectReason): void;
}

/** Callbacks a Subscriber makes into its Hub. */
export interface SubscriberHooks {
  /** The subscriber has something to write: flush it when the publish ends, or this tick. */
  markDirty(subscriber: Subscriber): void;
  onWritten(subscriber: Subscriber, events: readonly EncodedEvent[]): void;
  onConflated(subscriber: Subscriber): void;
  onOverflow(subscriber: Subscriber): void;
  onRunEnded(subscriber: Subscriber, runId: string): void;
}

/** Identifies one opening of a run on a connection (a run opened again gets a new one). */
export type OpeningToken = object;

interface RunState {
  open: boolean;
  /** Seq of the last event queued for this run: later duplicates are dropped. */
  lastSeq: number;
  /** Live events that arrived while the subscription was opening (none once it is open). */
  early: EncodedEvent[] | undefined;
  /** This run's update still waiting in the queue, if any, and its index there. */
  pending: EncodedEvent | undefined;
  pendingAt: number;
  /** The subscription asked for delta updates. */
  delta: boolean;
  /**
   * Seq of the last update written, the state the client holds; -1 until one is (the opening
   * snapshot is no base: the first update after it goes out whole).
   */
  stateSeq: number;
}

/**
 * One open connection: the runs it follows and a bounded outbound queue. Updates are conflatable
 * (a newer one replaces a queued one of the same run); logs are never dropped, but past
 * `maxQueuedBytes` the subscriber is disconnected and resumes from its last seq.
 */
export class Subscriber {
  // The runs followed, by id. Most connections follow one run: it is held in two fields, and a
  // Map (some 180 bytes a connection) is made only for the others.
  private firstRunId: string | undefined;
  private firstRun: RunState | undefined;
  private otherRuns: Map<string, RunState> | undefined;
  /**
   * Events to write, in seq order. A conflated update leaves a hole (`undefined`) rather than
   * moving the others; the flush closes the holes.
   */
  private queue: (EncodedEvent | undefined)[] = [];
  private holes = 0;
  /** The array the last flush wrote, emptied: the next flush swaps it in instead of allocating. */
  private spare: (EncodedEvent | undefined)[] | undefined;
  private queuedBytes = 0;
  private earlyBytes = 0;
  private closed = false;
  /** Runs whose subscription asked for delta updates (a flush looks at run states only then). */
  private deltaRuns = 0;
  /** Openings waiting for the connection to take more (see `whenWritable`). */
  private writableWaiters: ((writable: boolean) => void)[] | undefined;

  constructor(
    readonly sink: Sink,
    private readonly hooks: SubscriberHooks,
    private readonly maxQueuedBytes: number,
  ) {}

  get transport(): TransportName {
    return this.sink.transport;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** The runs followed or being opened (a copy, in no particular order). */
  get runIds(): string[] {
    const ids = this.otherRuns ? [...this.otherRuns.keys()] : [];
    if (this.firstRunId !== undefined) ids.unshift(this.firstRunId);
    return ids;
  }

  hasRun(runId: string): boolean {
    return this.stateOf(runId) !== undefined;
  }

  /** Runs followed or being opened. */
  get runCount(): number {
    return (this.firstRunId === undefined ? 0 : 1) + (this.otherRuns?.size ?? 0);
  }

  private stateOf(runId: string): RunState | undefined {
    return runId === this.firstRunId ? this.firstRun : this.otherRuns?.get(runId);
  }

  private setState(runId: string, state: RunState): void {
    if (this.firstRunId === undefined) {
      this.firstRunId = runId;
      this.firstRun = state;
    } else {
      this.otherRuns ??= new Map();
      this.otherRuns.set(runId, state);
    }
  }

  private deleteState(runId: string): void {
    if (runId === this.firstRunId) {
      this.firstRunId = undefined;
      this.firstRun = undefined;
    } else if (this.otherRuns?.delete(runId) && this.otherRuns.size === 0) {
      this.otherRuns = undefined;
    }
  }

  /** True while the opening `token` of the run is still under way (not replaced, not open). */
  isOpening(runId: string, token: OpeningToken): boolean {
    const state = this.stateOf(runId);
    return state === token && !state.open;
  }

  /**
   * Resolves true once the connection takes writes and nothing live waits before them (false if
   * it closes first): a replay writes its next page then, so a client that does not read holds
   * one page, not the whole history.
   */
  whenWritable(): Promise<boolean> {
    if (this.closed) return Promise.resolve(false);
    if (this.queue.length === this.holes && !this.sink.isBusy()) return Promise.resolve(true);
    return new Promise((resolve) => {
      this.writableWaiters ??= [];
      this.writableWaiters.push(resolve);
    });
  }

  /** Bytes waiting to be written (for tests and metrics). */
  get backlogBytes(): number {
    return this.queuedBytes + this.earlyBytes;
  }

  /** Starts following a run (or answers the opening under way); live events are held until `openRun`. */
  addRun(runId: string): OpeningToken {
    let state = this.stateOf(runId);
    if (!state) {
      state = {
        open: false,
        lastSeq: -1,
        early: undefined,
        pending: undefined,
        pendingAt: -1,
        delta: false,
        stateSeq: -1,
      };
      this.setState(runId, state);
    }
    return state;
  }

  /**
   * The opening (replay and snapshot at `seq`) has been written: events held since `addRun`
   * with seq > `seq` are queued, older ones dropped. With `delta`, an update goes out as a delta
   * whenever the client holds the state it applies to.
   */
  openRun(runId: string, seq: number, delta = false): void {
    const state = this.stateOf(runId);
    if (!state || state.open) return;
    state.open = true;
    state.lastSeq = seq;
    if (delta) {
      state.delta = true;
      this.deltaRuns++;
    }
    const early = state.early ?? [];
    state.early = undefined;
    for (const event of early) {
      this.earlyBytes -= event.size;
      this.push(event);
    }
  }

  removeRun(runId: string): boolean {
    const state = this.stateOf(runId);
    if (!state) return false;
    this.deleteState(runId);
    if (state.delta) this.deltaRuns--;
    this.dropPending(state);
    // A closed subscriber counts nothing any more (`markClosed` zeroed its counts).
    if (!this.closed) for (const event of state.early ?? []) this.earlyBytes -= event.size;
    // Whatever of the run is still queued stays unwritten: the subscription is over.
    for (let i = 0; i < this.queue.length; i++) {
      const event = this.queue[i];
      if (event?.runId !== runId) continue;
      this.queue[i] = undefined;
      this.holes++;
      this.queuedBytes -= event.size;
    }
    return true;
  }

  /** A committed event of a run this subscriber follows. */
  push(event: EncodedEvent): void {
    if (this.closed) return;
    const state = this.stateOf(event.runId);
    if (!state) return;
    if (!state.open) {
      state.early ??= [];
      state.early.push(event);
      this.earlyBytes += event.size;
      this.checkLimit();
      return;
    }
    if (event.seq <= state.lastSeq) return;
    state.lastSeq = event.seq;
    if (event.isUpdate) {
      const pending = state.pending;
      // The index is stale once a flush took the queue: then the slot holds something else.
      if (pending && this.queue[state.pendingAt] === pending) {
        // Latest state wins.
        this.hooks.onConflated(this);
        if (state.pendingAt === this.queue.length - 1) {
          // Nothing was queued after the old update: the new one takes its place.
          this.queue[state.pendingAt] = event;
          this.queuedBytes += event.size - pending.size;
          state.pending = event;
          this.checkLimit();
          return;
        }
        // Otherwise the new one goes to the end, so that seq keeps growing.
        this.queue[state.pendingAt] = undefined;
        this.holes++;
        this.queuedBytes -= pending.size;
      }
      state.pending = event;
      state.pendingAt = this.queue.length;
    }
    this.queue.push(event);
    this.queuedBytes += event.size;
    if (this.checkLimit()) return;
    if (this.queue.length === 1) this.hooks.markDirty(this);
  }

  /** Takes the run's update out of the queue, if it is still there. */
  private dropPending(state: RunState): void {
    const pending = state.pending;
    state.pending = undefined;
    if (!pending || this.queue[state.pendingAt] !== pending) return;
    this.queue[state.pendingAt] = undefined;
    this.holes++;
    this.queuedBytes -= pending.size;
  }

  private checkLimit(): boolean {
    if (this.queuedBytes + this.earlyBytes <= this.maxQueuedBytes) return false;
    this.hooks.onOverflow(this);
    this.close('SLOW_CONSUMER');
    return true;
  }

  /** Writes everything queued in one write, unless the connection is still busy. */
  flush(): void {
    if (this.closed) return;
    if (this.sink.isBusy()) return; // the sink's drain calls flush again
    if (this.queue.length === this.holes) {
      this.queue.length = 0;
      this.holes = 0;
      this.wakeWritable(true);
      return;
    }
    const queue = this.queue;
    const holes = this.holes;
    // A flush the write itself might start (a synchronous drain) finds no spare and allocates.
    this.queue = this.spare ?? [];
    this.spare = undefined;
    this.holes = 0;
    this.queuedBytes = 0;
    if (holes > 0) closeHoles(queue);
    // No holes are left.
    const events = queue as EncodedEvent[];
    if (this.deltaRuns > 0) this.chooseForms(events);
    if (events.length > 0) {
      this.sink.write(events);
      this.hooks.onWritten(this, events);
      for (const event of events) {
        if (event.isTerminal && this.removeRun(event.runId)) {
          this.hooks.onRunEnded(this, event.runId);
          this.sink.runEnded(event.runId);
        }
      }
    }
    queue.length = 0;
    this.spare = queue;
    if (this.queue.length === 0 && !this.sink.isBusy()) this.wakeWritable(true);
  }

  /**
   * Puts the delta form in place of each update whose run asked for deltas and whose client holds
   * the state the delta applies to; any other update (the first after the opening, one after an
   * update conflation skipped, one the Hub has no base for) stays whole.
   */
  private chooseForms(events: EncodedEvent[]): void {
    for (let i = 0; i < events.length; i++) {
      const event = events[i] as EncodedEvent;
      if (!event.isUpdate) continue;
      const state = this.stateOf(event.runId);
      if (!state?.delta) continue;
      const delta = event.baseSeq === state.stateSeq ? event.delta : undefined;
      if (delta) events[i] = delta;
      state.stateSeq = event.seq;
    }
  }

  /** Ends the connection (idempotent). */
  close(reason: DisconnectReason): void {
    if (this.closed) return;
    this.markClosed();
    this.sink.close(reason);
  }

  private wakeWritable(writable: boolean): void {
    const waiters = this.writableWaiters;
    if (waiters === undefined || waiters.length === 0) return;
    this.writableWaiters = undefined;
    for (const resolve of waiters) resolve(writable);
  }

  /** Marks the subscriber closed after its connection went away by itself. */
  markClosed(): void {
    this.closed = true;
    this.wakeWritable(false);
    this.queue = [];
    this.spare = undefined;
    this.holes = 0;
    this.queuedBytes = 0;
    this.earlyBytes = 0;
  }
}

/** Removes the `undefined` slots of `queue` in place, keeping the order of the rest. */
function closeHoles(queue: (EncodedEvent | undefined)[]): void {
  let kept = 0;
  for (const event of queue) if (event) queue[kept++] = event;
  queue.length = kept;
}
