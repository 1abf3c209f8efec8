import type { ProgressEvent, SnapshotEvent } from './types.js';

/**
 * A snapshot's content apart from its seq, to tell a real change from a re-sent state. Keys are
 * sorted: the same state arrives with its fields in another order over REST (serialized by its
 * schema) than over a live transport.
 */
function stateKey(snapshot: SnapshotEvent['snapshot']): string {
  return JSON.stringify({ ...snapshot, seq: 0 }, (_key, value: unknown) =>
    value !== null && typeof value === 'object' && !Array.isArray(value)
      ? Object.fromEntries(Object.entries(value).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : value,
  );
}

/**
 * Per-run bookkeeping that makes delivery exactly-once across reconnects and transport
 * switches: the last seq delivered, and the seq of the last state (snapshot or update).
 */
export class RunCursor {
  /** Highest seq delivered to the callback; every transport resumes after it. */
  lastSeq: number | undefined;
  /** Seq of the last state delivered. */
  private stateSeq = -1;
  /** The terminal state was delivered: no transport needs to follow this run any more. */
  finished = false;
  /** The last state delivered, as a snapshot event (a later callback on the run starts from it). */
  lastState: SnapshotEvent | undefined;
  private lastStateKey = '';
  /**
   * Why `accept` last dropped an event: its seq was already delivered (`duplicate`), or it
   * repeated the state already delivered at a later seq (`unchanged`, which is no duplicate).
   */
  lastDrop: 'duplicate' | 'unchanged' | undefined;

  /** `since`: resume after this seq from the start (0 replays every retained log first). */
  constructor(since?: number) {
    this.lastSeq = since;
  }

  /**
   * The event to hand to the callback, or undefined to drop it as already seen. A transport's
   * opening snapshot becomes an `update` once the first snapshot went out, unless it reports a
   * gap (`events_truncated`), which the app must see as a snapshot.
   */
  accept(event: ProgressEvent): ProgressEvent | undefined {
    this.lastDrop = undefined;
    if (event.type === 'error') return event;
    const last = this.lastSeq ?? -1;
    if (event.type === 'log') {
      if (event.seq <= last) return this.drop('duplicate');
      this.lastSeq = event.seq;
      return event;
    }
    const terminal = ['COMPLETED', 'FAILED', 'CANCELED'].includes(event.snapshot.status);
    let out: ProgressEvent;
    // The first state is the opening snapshot, even after the logs of a history replay.
    if (event.type === 'snapshot' && (this.lastState === undefined || event.events_truncated)) {
      out = event;
    } else {
      // State at seq S after the logs up to S (a poll) is new; state already seen is not.
      if (event.seq < last || event.seq <= this.stateSeq) return this.drop('duplicate');
      // A transport's opening snapshot (or a poll) that only repeats the state already delivered
      // — the seq moved on through logs — is no update.
      if (event.type === 'snapshot' && stateKey(event.snapshot) === this.lastStateKey) {
        this.lastSeq = Math.max(last, event.seq);
        this.stateSeq = event.seq;
        return this.drop('unchanged');
      }
      out =
        event.type === 'snapshot'
          ? { run_id: event.run_id, seq: event.seq, type: 'update', at: event.at, snapshot: event.snapshot }
          : event;
    }
    this.lastSeq = Math.max(last, event.seq);
    this.stateSeq = event.seq;
    this.lastState = {
      run_id: event.run_id,
      seq: event.seq,
      type: 'snapshot',
      at: event.at,
      snapshot: event.snapshot,
    };
    this.lastStateKey = stateKey(event.snapshot);
    if (terminal) this.finished = true;
    return out;
  }

  private drop(reason: 'duplicate' | 'unchanged'): undefined {
    this.lastDrop = reason;
    return undefined;
  }
}
