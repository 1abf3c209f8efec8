import { isTerminal, type RunEvent } from '@runcast/protocol';
import type { Bus } from '../bus/bus.js';
import type { Metrics, TransportName } from '../metrics.js';
import type { RunService } from '../runs/run-service.js';
import type { RunReplay } from '../store/store.js';
import { EncodedEvent } from './encoded-event.js';
import { FlushPacer } from './flush-pacer.js';
import { type Sink, Subscriber, type SubscriberHooks } from './subscriber.js';

const TRANSPORTS: readonly TransportName[] = ['websocket', 'sse', 'polling'];

export interface HubOptions {
  /** Bytes a subscriber may have queued before it is disconnected. */
  maxQueuedBytes: number;
  /** Most log events replayed when a subscription opens (the retention). */
  replayLimit: number;
  /** A monotonic clock in milliseconds; `performance.now` unless a test passes its own. */
  nowMs?: () => number;
}

/** A pending long-poll: `done` resolves true when an event past its cursor committed. */
export interface PollWait {
  done: Promise<boolean>;
  cancel(): void;
}

interface Waiter {
  afterSeq: number;
  wake(): void;
}

interface Tally {
  events: number;
  oldestMs: number;
}

/**
 * The one subscription registry per run, shared by every gateway. It receives committed events
 * from the Bus, encodes each once, and fans it out to the subscribers of all transports; each
 * subscriber writes what a group of commits brought it in one write (see `markDirty`), unless
 * its connection is still busy with earlier writes. A fan-out that saturates the server is paced
 * (`FlushPacer`).
 */
export class Hub implements SubscriberHooks {
  private readonly rooms = new Map<string, Set<Subscriber>>();
  private readonly subscribers = new Set<Subscriber>();
  private readonly waiters = new Map<string, Set<Waiter>>();
  /** Subscribers that queued something since the last flush (a subscriber may appear twice). */
  private readonly dirty: Subscriber[] = [];
  private flushScheduled = false;
  private readonly flushLater = () => this.flushNow();
  private readonly pacer: FlushPacer;
  private readonly written: Record<TransportName, Tally> = {
    websocket: { events: 0, oldestMs: Number.POSITIVE_INFINITY },
    sse: { events: 0, oldestMs: Number.POSITIVE_INFINITY },
    polling: { events: 0, oldestMs: Number.POSITIVE_INFINITY },
  };
  private tallyScheduled = false;
  private readonly unsubscribeBus: () => void;

  constructor(
    bus: Bus,
    private readonly runs: RunService,
    private readonly metrics: Metrics,
    private readonly options: HubOptions,
  ) {
    this.pacer = new FlushPacer(options.nowMs ?? (() => performance.now()));
    this.unsubscribeBus = bus.subscribe((events) => this.publish(events));
  }

  /** Registers a connection; it leaves by `detach` when it closes. */
  attach(sink: Sink): Subscriber {
    const subscriber = new Subscriber(sink, this, this.options.maxQueuedBytes);
    this.subscribers.add(subscriber);
    this.metrics.connections.inc({ transport: sink.transport });
    return subscriber;
  }

  /** Removes a closed connection and all its subscriptions (idempotent). */
  detach(subscriber: Subscriber): void {
    if (!this.subscribers.delete(subscriber)) return;
    subscriber.markClosed();
    for (const runId of [...subscriber.runIds]) this.leave(subscriber, runId);
    this.metrics.connections.dec({ transport: subscriber.transport });
  }

  /**
   * Subscribes to a run from a cursor: registers first (so nothing committed meanwhile is
   * missed), then reads the missed logs and the snapshot in one transaction. The caller writes
   * them, then calls `subscriber.openRun(runId, replay.run.seq)`.
   */
  async subscribe(
    subscriber: Subscriber,
    runId: string,
    since: number | undefined,
  ): Promise<RunReplay | undefined> {
    if (!subscriber.hasRun(runId)) {
      subscriber.addRun(runId);
      let room = this.rooms.get(runId);
      if (!room) {
        room = new Set();
        this.rooms.set(runId, room);
      }
      room.add(subscriber);
      this.metrics.subscriptions.inc({ transport: subscriber.transport });
    }
    const replay = await this.runs.replay(runId, since ?? Number.MAX_SAFE_INTEGER, this.options.replayLimit);
    if (!replay) this.unsubscribe(subscriber, runId);
    return replay;
  }

  unsubscribe(subscriber: Subscriber, runId: string): void {
    this.leave(subscriber, runId);
  }

  /** Waits (a long-poll) for an event of `runId` with seq > `afterSeq`, at most `timeoutMs`. */
  wait(runId: string, afterSeq: number, timeoutMs: number): PollWait {
    let settle: (woken: boolean) => void = () => {};
    const done = new Promise<boolean>((resolve) => {
      settle = resolve;
    });
    let set = this.waiters.get(runId);
    if (!set) {
      set = new Set();
      this.waiters.set(runId, set);
    }
    const room = set;
    let finished = false;
    const finish = (woken: boolean) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      room.delete(waiter);
      if (room.size === 0 && this.waiters.get(runId) === room) this.waiters.delete(runId);
      this.metrics.subscriptions.dec({ transport: 'polling' });
      settle(woken);
    };
    const waiter: Waiter = { afterSeq, wake: () => finish(true) };
    const timer = setTimeout(() => finish(false), timeoutMs);
    room.add(waiter);
    this.metrics.subscriptions.inc({ transport: 'polling' });
    return { done, cancel: () => finish(false) };
  }

  /** Subscribers, subscriptions and pending polls now (tests assert cleanup with it). */
  stats(): { subscribers: number; rooms: number; subscriptions: number; waiters: number } {
    let subscriptions = 0;
    for (const room of this.rooms.values()) subscriptions += room.size;
    let waiters = 0;
    for (const set of this.waiters.values()) waiters += set.size;
    return { subscribers: this.subscribers.size, rooms: this.rooms.size, subscriptions, waiters };
  }

  /** Ends every connection with `reason` and wakes every long-poll. */
  closeAll(reason: 'SERVER_SHUTDOWN'): void {
    this.flushNow();
    for (const subscriber of [...this.subscribers]) {
      subscriber.close(reason);
      this.detach(subscriber);
    }
    for (const set of [...this.waiters.values()]) for (const waiter of [...set]) waiter.wake();
  }

  close(): void {
    this.unsubscribeBus();
    this.closeAll('SERVER_SHUTDOWN');
  }

  /** Fans committed events out; each is encoded at most once whatever the number of subscribers. */
  publish(events: readonly RunEvent[]): void {
    for (const event of events) {
      this.metrics.eventsPublished.inc({ type: event.type });
      const room = this.rooms.get(event.run_id);
      if (room && room.size > 0) {
        const terminal = event.type === 'update' && isTerminal(event.snapshot.status);
        const encoded = new EncodedEvent(event, terminal);
        for (const subscriber of room) subscriber.push(encoded);
      }
    }
    // Something of this commit waits for the pending flush: the pacer counts such commits.
    if (this.flushScheduled) this.pacer.committed();
    const last = events[events.length - 1];
    const set = last && this.waiters.get(last.run_id);
    if (last && set) for (const waiter of [...set]) if (last.seq > waiter.afterSeq) waiter.wake();
  }

  // SubscriberHooks

  markDirty(subscriber: Subscriber): void {
    this.dirty.push(subscriber);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    const delayMs = this.pacer.delayMs();
    if (delayMs >= 1) {
      setTimeout(this.flushLater, delayMs);
      return;
    }
    // Once the current job is done, before the event loop moves on: the store commits in groups
    // and publishes a group's commits one after another, which then go out in one write per
    // subscriber. `setImmediate` would add a turn of the event loop to every delivery.
    process.nextTick(this.flushLater);
  }

  /** Writes what every dirty subscriber has queued. A busy one stays queued until its drain. */
  flushNow(): void {
    this.flushScheduled = false;
    const dirty = this.dirty;
    if (dirty.length === 0) return;
    const startMs = this.pacer.flushing();
    // By index: a subscriber marked dirty meanwhile is flushed in this loop too.
    for (let i = 0; i < dirty.length; i++) dirty[i]?.flush();
    dirty.length = 0;
    this.pacer.flushed(startMs);
  }

  onWritten(subscriber: Subscriber, events: readonly EncodedEvent[]): void {
    // Counted per tick and transport, not per subscriber: with thousands of subscribers the
    // instruments would otherwise cost more than the writes they count.
    const tally = this.written[subscriber.transport];
    tally.events += events.length;
    const committedAtMs = events[0]?.committedAtMs ?? tally.oldestMs;
    if (committedAtMs < tally.oldestMs) tally.oldestMs = committedAtMs;
    if (!this.tallyScheduled) {
      this.tallyScheduled = true;
      setImmediate(() => this.recordWritten());
    }
  }

  /** Moves the tick's tallies into the metrics: events delivered, and the lag of the oldest. */
  private recordWritten(): void {
    this.tallyScheduled = false;
    const nowMs = Date.now();
    for (const transport of TRANSPORTS) {
      const tally = this.written[transport];
      if (tally.events === 0) continue;
      this.metrics.eventsDelivered.inc({ transport }, tally.events);
      if (Number.isFinite(tally.oldestMs)) {
        this.metrics.deliveryLag.observe({ transport }, Math.max(0, nowMs - tally.oldestMs) / 1000);
      }
      tally.events = 0;
      tally.oldestMs = Number.POSITIVE_INFINITY;
    }
  }

  onConflated(subscriber: Subscriber): void {
    this.metrics.updatesConflated.inc({ transport: subscriber.transport });
  }

  onOverflow(subscriber: Subscriber): void {
    this.metrics.slowDisconnects.inc({ transport: subscriber.transport });
  }

  onRunEnded(subscriber: Subscriber, runId: string): void {
    this.leaveRoom(subscriber, runId);
  }

  private leave(subscriber: Subscriber, runId: string): void {
    subscriber.removeRun(runId);
    this.leaveRoom(subscriber, runId);
  }

  private leaveRoom(subscriber: Subscriber, runId: string): void {
    const room = this.rooms.get(runId);
    if (!room?.delete(subscriber)) return;
    if (room.size === 0) this.rooms.delete(runId);
    this.metrics.subscriptions.dec({ transport: subscriber.transport });
  }
}
