import { type JsonObject, type MergePatch, mergePatchDiff, type RunSnapshot } from '@runcast/protocol';

interface State {
  seq: number;
  snapshot: RunSnapshot;
  /** Patches to this state, by the seq of the state they apply to (null: none can express it). */
  patchesFrom: Map<number, MergePatch | null> | undefined;
}

const MAX_RUNS = 1000;
const STATES_PER_RUN = 4;

/**
 * The states this node answered polls with lately, by run and seq: a poll that says which state
 * it holds (`state_seq`) is answered with the merge patch from it when that state is here. The
 * state of a run at a seq is one and the same whoever read it, so a patch is computed once per
 * pair of states and shared by every poller. Bounded: a few states per run, for the runs polled
 * last; a state not here (evicted, answered by another node) means a whole answer.
 */
export class RecentStates {
  private readonly runs = new Map<string, State[]>();

  constructor(
    private readonly maxRuns = MAX_RUNS,
    private readonly statesPerRun = STATES_PER_RUN,
  ) {}

  /**
   * Remembers `now` (the run's state as a poll is answered with it) and answers the merge patch
   * to it from the state at `baseSeq`, or undefined when that state is not known here or no
   * merge patch can express the change.
   */
  patchTo(now: RunSnapshot, baseSeq: number | undefined): MergePatch | undefined {
    const states = this.touch(now.run_id);
    let current = states.find((state) => state.seq === now.seq);
    if (!current) {
      current = { seq: now.seq, snapshot: now, patchesFrom: undefined };
      states.push(current);
      // Oldest first: seqs only grow, but a slow poller's answer may be older than the rest.
      states.sort((a, b) => a.seq - b.seq);
      if (states.length > this.statesPerRun) states.shift();
    }
    if (baseSeq === undefined) return undefined;
    const memo = current.patchesFrom?.get(baseSeq);
    if (memo !== undefined) return memo ?? undefined;
    const base = states.find((state) => state.seq === baseSeq);
    if (!base) return undefined;
    const patch =
      mergePatchDiff(base.snapshot as unknown as JsonObject, current.snapshot as unknown as JsonObject) ??
      null;
    current.patchesFrom ??= new Map();
    current.patchesFrom.set(baseSeq, patch);
    return patch ?? undefined;
  }

  /** The run's states, the run moved to the end of the eviction order. */
  private touch(runId: string): State[] {
    let states = this.runs.get(runId);
    if (states) {
      this.runs.delete(runId);
    } else {
      states = [];
      if (this.runs.size >= this.maxRuns) {
        const oldest = this.runs.keys().next().value;
        if (oldest !== undefined) this.runs.delete(oldest);
      }
    }
    this.runs.set(runId, states);
    return states;
  }
}
