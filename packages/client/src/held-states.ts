import { applyDeltaPatch, type DeltaUpdateEvent, type RunSnapshot } from '@runcast/protocol';
import type { ProgressEvent } from './types.js';

/** What a transport may receive: any event the application sees, or a delta update. */
export type ReceivedEvent = ProgressEvent | DeltaUpdateEvent;

interface HeldState {
  seq: number;
  snapshot: RunSnapshot;
}

/**
 * The state each run's subscription holds on one connection — its last snapshot or update —
 * which the connection's delta updates apply to. Deltas are made whole here: the service and the
 * application only ever see whole snapshots.
 */
export class HeldStates {
  private readonly states = new Map<string, HeldState>();
  /** Runs whose state was lost (a delta of another base): their deltas wait for a whole state. */
  private readonly lost = new Set<string>();

  /** The state held for `runId`, if any. */
  get(runId: string): HeldState | undefined {
    return this.states.get(runId);
  }

  /**
   * The event to hand on: a delta made whole, any other event as it came. A delta that does not
   * apply to the state held is dropped (never guessed at): `onLost` is called once, so that the
   * transport asks for a snapshot, and the run's deltas are dropped until a whole state comes.
   */
  take(event: ReceivedEvent, onLost: (runId: string) => void): ProgressEvent | undefined {
    if (event.type === 'snapshot' || (event.type === 'update' && 'snapshot' in event)) {
      this.hold(event.run_id, event.seq, event.snapshot);
      return event;
    }
    if (event.type !== 'update') return event;
    const held = this.states.get(event.run_id);
    if (held?.seq !== event.base_seq) {
      if (!this.lost.has(event.run_id)) {
        this.lost.add(event.run_id);
        this.states.delete(event.run_id);
        onLost(event.run_id);
      }
      return undefined;
    }
    const snapshot = applyDeltaPatch(held.snapshot, event);
    this.hold(event.run_id, event.seq, snapshot);
    return { run_id: event.run_id, seq: event.seq, type: 'update', at: event.at, snapshot };
  }

  /** Holds a whole state of the run (a snapshot, an update, a poll's answer). */
  hold(runId: string, seq: number, snapshot: RunSnapshot): void {
    this.lost.delete(runId);
    this.states.set(runId, { seq, snapshot });
  }

  /** Forgets the run (its subscription on this connection ended). */
  forget(runId: string): void {
    this.states.delete(runId);
    this.lost.delete(runId);
  }
}
