import type { TransportName } from '../metrics.js';
import type { EncodedEvent } from './encoded-event.js';

/** Why the server ended a subscriber's connection. */
export type DisconnectReason = 'SLOW_CONSUMER' | 'SERVER_SHUTDOWN' | 'RUN_ENDED' | 'CLIENT_CLOSED';

/** The transport end of a subscriber: how one connection is written to. */
export interface Sink {
  readonly transport: TransportName;
  /** True while the connection cannot take more without buffering (write returned false). */
  isBusy(): boolean;
  /** Writes the events in one go, in order. */
  write(events: readonly EncodedEvent[]): void;
  /** Called after `write` delivered the terminal update of a run. */
  runEnded(runId: string): void;
  /** Ends the connection. */
  close(reason: DisconnectReason): void;
}

/** Callbacks a Subscriber makes into its Hub. */
export interface SubscriberHooks {
  /** The subscriber has something to write: flush it this tick. */
  markDirty(subscriber: Subscriber): void;
  onWritten(subscriber: Subscriber, events: readonly EncodedEvent[]): void;
  onConflated(subscriber: Subscriber): void;
  onOverflow(subscriber: Subscriber): void;
  onRunEnded(subscriber: Subscriber, runId: string): void;
}

interface QueueItem {
  event: EncodedEvent;
  /** Replaced by a newer update of the same run. */
  dead: boolean;
}

interface RunState {
  open: boolean;
  /** Seq of the last event queued for this run: later duplicates are dropped. */
  lastSeq: number;
  /** Live events that arrived while the subscription was opening. */
  early: EncodedEvent[];
}

/**
 * One open connection: the runs it follows and a bounded outbound queue. Updates are conflatable
 * (a newer one replaces a queued one of the same run); logs are never dropped, but past
 * `maxQueuedBytes` the subscriber is disconnected and resumes from its last seq.
 */
export class Subscriber {
  private readonly runs = new Map<string, RunState>();
  private queue: QueueItem[] = [];
  private readonly pendingUpdate = new Map<string, QueueItem>();
  private queuedBytes = 0;
  private closed = false;

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

  get runIds(): IterableIterator<string> {
    return this.runs.keys();
  }

  hasRun(runId: string): boolean {
    return this.runs.has(runId);
  }

  /** Bytes waiting to be written (for tests and metrics). */
  get backlogBytes(): number {
    return this.queuedBytes;
  }

  /** Starts following a run; live events are held until `openRun`. */
  addRun(runId: string): void {
    if (!this.runs.has(runId)) this.runs.set(runId, { open: false, lastSeq: -1, early: [] });
  }

  /**
   * The opening (replay and snapshot at `seq`) has been written: events held since `addRun`
   * with seq > `seq` are queued, older ones dropped.
   */
  openRun(runId: string, seq: number): void {
    const state = this.runs.get(runId);
    if (!state || state.open) return;
    state.open = true;
    state.lastSeq = seq;
    const early = state.early;
    state.early = [];
    for (const event of early) {
      this.queuedBytes -= event.size;
      this.push(event);
    }
  }

  removeRun(runId: string): boolean {
    const state = this.runs.get(runId);
    if (!state) return false;
    this.runs.delete(runId);
    const pending = this.pendingUpdate.get(runId);
    if (pending) {
      pending.dead = true;
      this.queuedBytes -= pending.event.size;
      this.pendingUpdate.delete(runId);
    }
    for (const event of state.early) this.queuedBytes -= event.size;
    return true;
  }

  /** A committed event of a run this subscriber follows. */
  push(event: EncodedEvent): void {
    if (this.closed) return;
    const state = this.runs.get(event.runId);
    if (!state) return;
    if (!state.open) {
      state.early.push(event);
      this.queuedBytes += event.size;
      this.checkLimit();
      return;
    }
    if (event.seq <= state.lastSeq) return;
    state.lastSeq = event.seq;
    if (event.isUpdate) {
      const pending = this.pendingUpdate.get(event.runId);
      if (pending) {
        // Latest state wins; the newer update goes to the end so seq keeps growing.
        pending.dead = true;
        this.queuedBytes -= pending.event.size;
        this.hooks.onConflated(this);
      }
      const item = { event, dead: false };
      this.pendingUpdate.set(event.runId, item);
      this.enqueue(item);
    } else {
      this.enqueue({ event, dead: false });
    }
  }

  private enqueue(item: QueueItem): void {
    const wasEmpty = this.queuedBytes === 0 && this.queue.length === 0;
    this.queue.push(item);
    this.queuedBytes += item.event.size;
    if (this.checkLimit()) return;
    if (wasEmpty) this.hooks.markDirty(this);
  }

  private checkLimit(): boolean {
    if (this.queuedBytes <= this.maxQueuedBytes) return false;
    this.hooks.onOverflow(this);
    this.close('SLOW_CONSUMER');
    return true;
  }

  /** Writes everything queued in one write, unless the connection is still busy. */
  flush(): void {
    if (this.closed || this.queue.length === 0) return;
    if (this.sink.isBusy()) return; // the sink's drain calls flush again
    const items = this.queue;
    this.queue = [];
    this.queuedBytes = 0;
    this.pendingUpdate.clear();
    const events: EncodedEvent[] = [];
    for (const item of items) if (!item.dead) events.push(item.event);
    if (events.length === 0) return;
    this.sink.write(events);
    this.hooks.onWritten(this, events);
    for (const event of events) {
      if (event.isTerminal && this.removeRun(event.runId)) {
        this.hooks.onRunEnded(this, event.runId);
        this.sink.runEnded(event.runId);
      }
    }
  }

  /** Ends the connection (idempotent). */
  close(reason: DisconnectReason): void {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    this.queuedBytes = 0;
    this.pendingUpdate.clear();
    this.sink.close(reason);
  }

  /** Marks the subscriber closed after its connection went away by itself. */
  markClosed(): void {
    this.closed = true;
    this.queue = [];
    this.queuedBytes = 0;
  }
}
