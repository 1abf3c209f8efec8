import { isTerminal, type LogEvent, type RunEvent, type SnapshotEvent } from '@runcast/protocol';
import type { Principal } from '../auth/principal.js';
import type { Bus, DirectoryChange } from '../bus/bus.js';
import { AppError } from '../errors.js';
import type { Metrics, TransportName } from '../metrics.js';
import { toSnapshot } from '../runs/snapshot.js';
import type { RunRecord, RunReplay } from '../store/store.js';
import { type BaseState, EncodedEvent } from './encoded-event.js';
import { FlushPacer } from './flush-pacer.js';
import { type OpeningToken, type Sink, Subscriber, type SubscriberHooks } from './subscriber.js';

const TRANSPORTS: readonly TransportName[] = ['websocket', 'sse', 'polling'];

/** Where the Hub reads what a subscription missed: a run's logs after a cursor, a page at a time. */
export interface ReplaySource {
  replay(runId: string, since: number, limit: number, maxBytes?: number): Promise<RunReplay | undefined>;
}

/** Whether a principal may still read a project's runs (asked again when a membership changes). */
export type ReadAccess = (principal: Principal, projectId: string) => Promise<boolean>;

export interface HubOptions {
  /** Bytes a subscriber may have queued before it is disconnected. */
  maxQueuedBytes: number;
  /** Most log events in one page of a replay. */
  replayPageEvents?: number;
  /** Most bytes (of stored event JSON) in one page of a replay; a larger single event goes alone. */
  replayPageBytes?: number;
  /** Runs one connection may follow at once. */
  maxRunsPerConnection?: number;
  /** Subscriptions one connection may be opening (replaying) at once. */
  maxOpeningsPerConnection?: number;
  /** Asked when a membership changes; without it, a membership change ends nothing. */
  canRead?: ReadAccess;
  /** A monotonic clock in milliseconds; `performance.now` unless a test passes its own. */
  nowMs?: () => number;
}

/** An error that ends a run's subscription (or a whole connection) on every transport. */
export interface AccessError {
  code: 'UNAUTHORIZED' | 'RUN_NOT_FOUND';
  message: string;
}

/** A pending long-poll: `done` resolves true when an event past its cursor committed. */
export interface PollWait {
  done: Promise<boolean>;
  cancel(): void;
  /** Set when the wait ended because the poller's access ended. */
  readonly ended: AccessError | undefined;
}

/**
 * How a gateway writes the opening of a subscription: the missed logs (a page at a time, each
 * once the connection took the one before), then the snapshot; live events follow.
 */
export interface Opening {
  logs(events: readonly EncodedEvent[]): void;
  /** The snapshot at the run's current seq; `live` is false for a run already over. */
  snapshot(event: SnapshotEvent, live: boolean): void;
  /** Sends what `logs` and `snapshot` buffered; called before the Hub waits, and at the end. */
  flush?(): void;
}

/** How a subscription is opened. */
export interface OpenOptions {
  /** Updates may go out as deltas (DeltaUpdateEvent) when the client holds their base. */
  delta?: boolean;
}

interface Waiter {
  afterSeq: number;
  runId: string;
  principal: Principal | undefined;
  wake(): void;
  end(error: AccessError): void;
}

const PAGE_EVENTS = 500;
const PAGE_BYTES = 256 * 1024;
const MAX_RUNS_PER_CONNECTION = 100;
const MAX_OPENINGS_PER_CONNECTION = 4;
/** After a failed read of a gap, how long until the next try. */
const FILL_RETRY_MS = 1000;
/** setTimeout's ceiling; a later expiry is checked again when the timer fires. */
const MAX_TIMER_MS = 2 ** 31 - 1;

const SESSION_ENDED: AccessError = { code: 'UNAUTHORIZED', message: 'your session ended; log in again' };
const TOKEN_REVOKED: AccessError = { code: 'UNAUTHORIZED', message: 'the API token was revoked' };
const TOKEN_EXPIRED: AccessError = { code: 'UNAUTHORIZED', message: 'your login expired; log in again' };

/** The snapshot event that opens a subscription at the run's current seq. */
export function snapshotEvent(run: RunRecord, truncated: boolean): SnapshotEvent {
  const event: SnapshotEvent = {
    run_id: run.run_id,
    seq: run.seq,
    type: 'snapshot',
    at: new Date().toISOString(),
    snapshot: toSnapshot(run),
  };
  if (truncated) event.events_truncated = true;
  return event;
}

/** What an access change means for a principal: its access ended, must be checked again, or neither. */
function effectOf(change: DirectoryChange, principal: Principal): AccessError | 'recheck' | undefined {
  switch (change.kind) {
    case 'session-ended':
      return principal.kind === 'user' && principal.sessionId === change.session_id
        ? SESSION_ENDED
        : undefined;
    case 'user-sessions-ended':
      return principal.kind === 'user' && principal.user.user_id === change.user_id
        ? SESSION_ENDED
        : undefined;
    case 'token-revoked':
      return principal.kind === 'token' && principal.token.token_id === change.token_id
        ? TOKEN_REVOKED
        : undefined;
    case 'membership-changed':
      return principal.kind === 'user' && principal.user.user_id === change.user_id ? 'recheck' : undefined;
    default:
      return undefined;
  }
}

/**
 * The subscribers of one run, and where the run's delivery stands. Bus messages may arrive out of
 * order or not at all (several nodes, a reconnecting listener): events are fanned out in seq
 * order only, an event ahead of a gap is held, and the gap is read from the store.
 */
interface Room {
  subscribers: Set<Subscriber>;
  projectId: string | undefined;
  /** Seq of the last event fanned out; undefined until an opening read the run. */
  deliveredSeq: number | undefined;
  /** Events that arrived ahead of a gap, or before `deliveredSeq` was known, by seq. */
  held: Map<number, RunEvent>;
  /** A seq the run is known to have reached without its event (a `run-reached` message). */
  reachedSeq: number;
  filling: boolean;
  refill: boolean;
  /** Messages may have been lost: the next fill reads the store even with nothing held. */
  stale: boolean;
  /**
   * The last update fanned out, when every seq since it went out as the event committed: the
   * state the next update's delta is computed against. Unset after a gap this node filled
   * without the events (a synthesized update is the state as read, not as it was at its seq).
   */
  state: BaseState | undefined;
}

/** The directory changes that may end someone's access. */
const ENDING_CHANGES: ReadonlySet<DirectoryChange['kind']> = new Set([
  'session-ended',
  'user-sessions-ended',
  'token-revoked',
  'membership-changed',
]);

const runGone = (runId: string): AccessError => ({
  code: 'RUN_NOT_FOUND',
  message: `run ${runId} not found`,
});

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
  private readonly rooms = new Map<string, Room>();
  private readonly subscribers = new Set<Subscriber>();
  /** Whose credentials each connection was opened with. */
  private readonly principals = new Map<Subscriber, Principal>();
  private readonly expiryTimers = new Map<Subscriber, NodeJS.Timeout>();
  /** Subscriptions each connection is opening now. */
  private readonly openings = new Map<Subscriber, number>();
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
  private readonly stopBus: (() => void)[];

  constructor(
    bus: Bus,
    private readonly replays: ReplaySource,
    private readonly metrics: Metrics,
    private readonly options: HubOptions,
  ) {
    this.pacer = new FlushPacer(options.nowMs ?? (() => performance.now()));
    this.stopBus = [
      bus.subscribe('run-events', ({ events, json }) => this.publish(events, json)),
      bus.subscribe('run-reached', ({ run_id, seq }) => this.reached(run_id, seq)),
      bus.subscribe('directory', ({ change }) => this.accessChanged(change)),
      bus.subscribe('resync', () => this.resync()),
    ];
  }

  /**
   * Registers a connection opened with `principal`'s credentials; it leaves by `detach` when it
   * closes. The connection ends when those credentials do (logout, revocation, expiry).
   */
  attach(sink: Sink, principal?: Principal): Subscriber {
    const subscriber = new Subscriber(sink, this, this.options.maxQueuedBytes);
    this.subscribers.add(subscriber);
    if (principal) {
      this.principals.set(subscriber, principal);
      if (principal.kind === 'user') this.endAtExpiry(subscriber, principal.expiresAtMs);
    }
    this.metrics.connections.inc({ transport: sink.transport });
    return subscriber;
  }

  /** Removes a closed connection and all its subscriptions (idempotent). */
  detach(subscriber: Subscriber): void {
    if (!this.subscribers.delete(subscriber)) return;
    subscriber.markClosed();
    this.principals.delete(subscriber);
    clearTimeout(this.expiryTimers.get(subscriber));
    this.expiryTimers.delete(subscriber);
    this.openings.delete(subscriber);
    for (const runId of subscriber.runIds) this.leave(subscriber, runId);
    this.metrics.connections.dec({ transport: subscriber.transport });
  }

  /**
   * Opens a subscription from a cursor — the one opening sequence of every transport. Registers
   * first (so nothing committed meanwhile is missed), then writes the missed logs a page at a
   * time, each once the connection took the last (a client that does not read holds one page,
   * not the run's history), then the snapshot read with the last page, then goes live. Without a
   * cursor, only the snapshot. Answers the run as of the snapshot; throws RUN_NOT_FOUND, or
   * RATE_LIMITED past the connection's limits. Opening a run the connection follows starts it
   * again from the new cursor.
   */
  async open(
    subscriber: Subscriber,
    runId: string,
    since: number | undefined,
    opening: Opening,
    options: OpenOptions = {},
  ): Promise<RunRecord | undefined> {
    const openingNow = this.openings.get(subscriber) ?? 0;
    const maxOpenings = this.options.maxOpeningsPerConnection ?? MAX_OPENINGS_PER_CONNECTION;
    if (openingNow >= maxOpenings) {
      throw new AppError(
        'RATE_LIMITED',
        `at most ${maxOpenings} subscriptions may open at once on a connection`,
      );
    }
    if (subscriber.hasRun(runId)) this.leave(subscriber, runId);
    const maxRuns = this.options.maxRunsPerConnection ?? MAX_RUNS_PER_CONNECTION;
    if (subscriber.runCount >= maxRuns) {
      throw new AppError('RATE_LIMITED', `a connection may follow at most ${maxRuns} runs`);
    }
    this.openings.set(subscriber, openingNow + 1);
    try {
      return await this.replayInPages(subscriber, runId, since, opening, options.delta === true);
    } finally {
      const left = (this.openings.get(subscriber) ?? 1) - 1;
      if (left > 0) this.openings.set(subscriber, left);
      else this.openings.delete(subscriber);
    }
  }

  private async replayInPages(
    subscriber: Subscriber,
    runId: string,
    since: number | undefined,
    writer: Opening,
    delta: boolean,
  ): Promise<RunRecord | undefined> {
    const token = this.join(subscriber, runId);
    const limit = this.options.replayPageEvents ?? PAGE_EVENTS;
    const maxBytes = this.options.replayPageBytes ?? PAGE_BYTES;
    let cursor = since ?? Number.MAX_SAFE_INTEGER;
    let truncated = false;
    for (;;) {
      // Each page once the connection took the one before (and whatever live went before it).
      if (!(await subscriber.whenWritable()) || !subscriber.isOpening(runId, token)) return undefined;
      const page = await this.replays.replay(runId, cursor, limit, maxBytes).catch((err: unknown) => {
        if (subscriber.isOpening(runId, token)) this.leave(subscriber, runId);
        throw err;
      });
      if (!page) {
        if (subscriber.isOpening(runId, token)) this.leave(subscriber, runId);
        throw new AppError('RUN_NOT_FOUND', `run ${runId} not found`);
      }
      // The connection went away, or this subscription was replaced, while the page was read.
      if (subscriber.isClosed || !subscriber.isOpening(runId, token)) return undefined;
      const room = this.rooms.get(runId);
      if (room) room.projectId = page.run.project_id;
      // Retention may prune between pages: a cursor it passed is a gap, said so in the snapshot.
      truncated ||= page.truncated;
      const last = page.events[page.events.length - 1];
      if (last) {
        writer.logs(page.events.map((log) => new EncodedEvent(log)));
        cursor = last.seq;
      }
      if (!page.more) {
        const live = !isTerminal(page.run.status);
        writer.snapshot(snapshotEvent(page.run, truncated), live);
        writer.flush?.();
        // The first opening of a room tells it where the run stands.
        if (room && room.deliveredSeq === undefined) this.startDelivery(runId, room, page.run.seq);
        if (live) subscriber.openRun(runId, page.run.seq, delta);
        else this.leave(subscriber, runId);
        return page.run;
      }
      writer.flush?.();
      // One page per turn of the event loop: other requests are served between pages.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /** Ends a connection's subscription to a run. */
  unsubscribe(subscriber: Subscriber, runId: string): void {
    this.leave(subscriber, runId);
  }

  /**
   * Waits (a long-poll) for an event of `runId` with seq > `afterSeq`, at most `timeoutMs`. A
   * wait of a principal whose access ends meanwhile ends at once, with `ended` set.
   */
  wait(runId: string, afterSeq: number, timeoutMs: number, principal?: Principal): PollWait {
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
    let ended: AccessError | undefined;
    const waiter: Waiter = {
      afterSeq,
      runId,
      principal,
      wake: () => finish(true),
      end: (error) => {
        ended = error;
        finish(false);
      },
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    room.add(waiter);
    this.metrics.subscriptions.inc({ transport: 'polling' });
    return {
      done,
      cancel: () => finish(false),
      get ended() {
        return ended;
      },
    };
  }

  /** Ends what an access change ended: connections, their runs, pending long-polls. */
  private accessChanged(change: DirectoryChange): void {
    // Creations (a login, a new token or project) end nothing: no need to look at every connection.
    if (!ENDING_CHANGES.has(change.kind)) return;
    for (const [subscriber, principal] of [...this.principals]) {
      const effect = effectOf(change, principal);
      if (effect === 'recheck' && change.kind === 'membership-changed') {
        void this.recheckRuns(subscriber, principal, change.project_id);
      } else if (effect && effect !== 'recheck') {
        this.endConnection(subscriber, effect);
      }
    }
    for (const set of [...this.waiters.values()]) {
      for (const waiter of [...set]) {
        const effect = waiter.principal && effectOf(change, waiter.principal);
        if (!effect || !waiter.principal) continue;
        if (effect !== 'recheck') waiter.end(effect);
        else if (change.kind === 'membership-changed') {
          const principal = waiter.principal;
          void this.readable(principal, change.project_id).then((ok) => {
            if (!ok) waiter.end(runGone(waiter.runId));
          });
        }
      }
    }
  }

  /** After a membership change: ends the connection's runs of that project it may no longer read. */
  private async recheckRuns(subscriber: Subscriber, principal: Principal, projectId: string): Promise<void> {
    if (await this.readable(principal, projectId)) return;
    for (const runId of subscriber.runIds) {
      if (this.rooms.get(runId)?.projectId !== projectId) continue;
      this.leave(subscriber, runId);
      subscriber.sink.runFailed(runId, runGone(runId));
    }
  }

  private async readable(principal: Principal, projectId: string): Promise<boolean> {
    const canRead = this.options.canRead;
    if (!canRead) return true;
    try {
      return await canRead(principal, projectId);
    } catch {
      // Unsure is no: the client opens again, and is asked then.
      return false;
    }
  }

  /** Ends every run of a connection with `error`, then the connection. */
  private endConnection(subscriber: Subscriber, error: AccessError): void {
    if (subscriber.isClosed) return;
    for (const runId of subscriber.runIds) {
      this.leave(subscriber, runId);
      subscriber.sink.runFailed(runId, error);
    }
    subscriber.close('ACCESS_ENDED');
    this.detach(subscriber);
  }

  private endAtExpiry(subscriber: Subscriber, expiresAtMs: number): void {
    const delayMs = expiresAtMs - Date.now();
    const timer = setTimeout(
      () => {
        this.expiryTimers.delete(subscriber);
        if (Date.now() >= expiresAtMs) this.endConnection(subscriber, TOKEN_EXPIRED);
        else this.endAtExpiry(subscriber, expiresAtMs);
      },
      Math.min(Math.max(0, delayMs), MAX_TIMER_MS),
    );
    timer.unref();
    this.expiryTimers.set(subscriber, timer);
  }

  /** Subscribers, subscriptions and pending polls now (tests assert cleanup with it). */
  stats(): { subscribers: number; rooms: number; subscriptions: number; waiters: number } {
    let subscriptions = 0;
    for (const room of this.rooms.values()) subscriptions += room.subscribers.size;
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
    for (const stop of this.stopBus) stop();
    this.closeAll('SERVER_SHUTDOWN');
  }

  /**
   * Committed events, as they arrive: fanned out in seq order, each encoded at most once whatever
   * the number of subscribers; an event ahead of a gap waits while the gap is read from the store.
   * `json`, when given, holds each event's JSON as it arrived (it is not made again).
   */
  publish(events: readonly RunEvent[], json?: readonly string[]): void {
    for (let i = 0; i < events.length; i++) {
      const event = events[i] as RunEvent;
      this.metrics.eventsPublished.inc({ type: event.type });
      const room = this.rooms.get(event.run_id);
      if (room) this.arrived(event.run_id, room, event, json?.[i]);
    }
    // Something of this commit waits for the pending flush: the pacer counts such commits.
    if (this.flushScheduled) this.pacer.committed();
    const last = events[events.length - 1];
    const set = last && this.waiters.get(last.run_id);
    if (last && set) for (const waiter of [...set]) if (last.seq > waiter.afterSeq) waiter.wake();
  }

  /** One committed event for a room: out now if it is next, held if a gap is before it. */
  private arrived(runId: string, room: Room, event: RunEvent, json: string | undefined): void {
    const delivered = room.deliveredSeq;
    if (delivered !== undefined && event.seq <= delivered) return; // already out
    if (delivered === undefined || room.filling || event.seq > delivered + 1) {
      room.held.set(event.seq, event);
      if (delivered !== undefined) this.scheduleFill(runId, room);
      return;
    }
    this.fanOut(room, event, false, json);
    if (room.held.size > 0) this.releaseHeld(runId, room);
  }

  /** A run reached `seq` (its events not carried): read what this node has not delivered. */
  private reached(runId: string, seq: number): void {
    const room = this.rooms.get(runId);
    if (!room || room.deliveredSeq === undefined || seq <= room.deliveredSeq) return;
    room.reachedSeq = Math.max(room.reachedSeq, seq);
    this.scheduleFill(runId, room);
  }

  /** Messages may have been lost: every room checks the store for what it missed. */
  resync(): void {
    for (const [runId, room] of this.rooms) {
      if (room.deliveredSeq === undefined) continue;
      room.stale = true;
      this.scheduleFill(runId, room);
    }
    // Waiting long-polls read the store when they wake.
    for (const set of [...this.waiters.values()]) for (const waiter of [...set]) waiter.wake();
  }

  /**
   * Encodes `event` once and hands it to every subscriber of the room. An update carries the
   * room's previous state as its delta's base; a synthesized one (`asRead`) is no base for the
   * next.
   */
  private fanOut(room: Room, event: RunEvent, asRead = false, json?: string): void {
    room.deliveredSeq = event.seq;
    let encoded: EncodedEvent;
    if (event.type === 'update') {
      const terminal = isTerminal(event.snapshot.status);
      encoded = new EncodedEvent(event, { terminal, base: room.state, json });
      room.state = asRead ? undefined : { seq: event.seq, snapshot: event.snapshot };
    } else {
      encoded = new EncodedEvent(event, { json });
    }
    for (const subscriber of room.subscribers) subscriber.push(encoded);
  }

  /** The first opening read the run at `seq`: delivery starts there. */
  private startDelivery(runId: string, room: Room, seq: number): void {
    room.deliveredSeq = seq;
    room.state = undefined;
    this.releaseHeld(runId, room);
  }

  /** Fans out the held events that follow what was delivered; a gap left is read from the store. */
  private releaseHeld(runId: string, room: Room): void {
    for (const seq of [...room.held.keys()]) if (seq <= (room.deliveredSeq ?? 0)) room.held.delete(seq);
    for (;;) {
      const next = room.held.get((room.deliveredSeq ?? 0) + 1);
      if (!next) break;
      room.held.delete(next.seq);
      this.fanOut(room, next);
    }
    if (room.held.size > 0 || room.reachedSeq > (room.deliveredSeq ?? 0)) this.scheduleFill(runId, room);
  }

  /**
   * Reads a gap from the store on the next turn (an event merely late arrives meanwhile):
   * everything after the last delivered seq, in pages.
   */
  private scheduleFill(runId: string, room: Room): void {
    if (room.filling) {
      room.refill = true;
      return;
    }
    room.filling = true;
    setImmediate(() => {
      this.fill(runId, room).catch(() => {
        // The store did not answer: read again in a second (or at the next message).
        room.filling = false;
        room.stale = true;
        setTimeout(() => {
          if (this.rooms.get(runId) === room) this.scheduleFill(runId, room);
        }, FILL_RETRY_MS).unref();
      });
    });
  }

  private async fill(runId: string, room: Room): Promise<void> {
    const limit = this.options.replayPageEvents ?? PAGE_EVENTS;
    const maxBytes = this.options.replayPageBytes ?? PAGE_BYTES;
    for (;;) {
      room.refill = false;
      const from = room.deliveredSeq ?? 0;
      const ahead = room.stale || room.held.size > 0 || room.reachedSeq > from;
      if (!ahead || this.rooms.get(runId) !== room) break;
      room.stale = false;
      if (room.held.has(from + 1)) {
        // What was missing arrived meanwhile.
        room.filling = false;
        this.releaseHeld(runId, room);
        return;
      }
      const page = await this.replays.replay(runId, from, limit, maxBytes);
      if (!page || this.rooms.get(runId) !== room) break;
      const last = page.events[page.events.length - 1];
      const upTo = page.more && last ? last.seq : page.run.seq;
      this.fanOutRange(room, page.run, page.events, from, upTo);
      if (!page.more && !room.refill && room.reachedSeq <= (room.deliveredSeq ?? 0)) break;
    }
    room.filling = false;
    if (this.rooms.get(runId) === room && room.held.size > 0) this.releaseHeld(runId, room);
  }

  /**
   * Fans out seqs `from`+1..`upTo` in order: held events and the logs read; a seq neither had is
   * an update this node never got (or a pruned log), and the last of them goes out as an update
   * carrying the run's state as read — unless the run is over and its terminal update is still
   * to come.
   */
  private fanOutRange(
    room: Room,
    run: RunRecord,
    logs: readonly LogEvent[],
    from: number,
    upTo: number,
  ): void {
    const read = new Map<number, RunEvent>();
    for (const log of logs) read.set(log.seq, log);
    let missing = -1;
    for (let seq = from + 1; seq <= upTo; seq++) if (!room.held.has(seq) && !read.has(seq)) missing = seq;
    const stateLater = isTerminal(run.status) && missing < run.seq;
    for (let seq = from + 1; seq <= upTo; seq++) {
      const event = room.held.get(seq) ?? read.get(seq);
      room.held.delete(seq);
      if (event) {
        this.fanOut(room, event);
        continue;
      }
      // An update this node never had: what followed it has no known state to be a delta of.
      room.state = undefined;
      if (seq === missing && !stateLater) {
        const snapshot = { ...toSnapshot(run), seq };
        this.fanOut(room, { run_id: run.run_id, seq, type: 'update', at: run.updated_at, snapshot }, true);
      }
    }
    room.deliveredSeq = Math.max(room.deliveredSeq ?? 0, upTo);
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

  /** Adds the run to the connection (opening) and to the run's room; answers the opening's token. */
  private join(subscriber: Subscriber, runId: string): OpeningToken {
    const token = subscriber.addRun(runId);
    let room = this.rooms.get(runId);
    if (!room) {
      room = {
        subscribers: new Set(),
        projectId: undefined,
        deliveredSeq: undefined,
        held: new Map(),
        reachedSeq: 0,
        filling: false,
        refill: false,
        stale: false,
        state: undefined,
      };
      this.rooms.set(runId, room);
    }
    if (room.subscribers.has(subscriber)) return token;
    room.subscribers.add(subscriber);
    this.metrics.subscriptions.inc({ transport: subscriber.transport });
    return token;
  }

  private leave(subscriber: Subscriber, runId: string): void {
    subscriber.removeRun(runId);
    this.leaveRoom(subscriber, runId);
  }

  private leaveRoom(subscriber: Subscriber, runId: string): void {
    const room = this.rooms.get(runId);
    if (!room?.subscribers.delete(subscriber)) return;
    if (room.subscribers.size === 0) this.rooms.delete(runId);
    this.metrics.subscriptions.dec({ transport: subscriber.transport });
  }
}
