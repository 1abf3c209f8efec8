import type { RunStatus } from '@runcast/protocol';
import { memoryAfterGc, serveCommands } from '../ipc.js';
import { Pacer } from '../pacer.js';
import { updateEvent } from '../payload.js';

/** One event a baseline broadcasts: the object, and its JSON computed once when first needed. */
export class Outgoing {
  private text: string | undefined;
  constructor(
    readonly event: ReturnType<typeof updateEvent>,
    readonly terminal: boolean,
  ) {}

  get seq(): number {
    return this.event.seq;
  }

  get json(): string {
    this.text ??= JSON.stringify(this.event);
    return this.text;
  }
}

/** How one baseline server reaches its subscribers. */
export interface BroadcastTransport {
  /** Open subscriber connections. */
  clients(): number;
  /** Sends `event` to every subscriber of `runId`, encoding it once. */
  publish(runId: string, event: Outgoing): void;
}

/** Arguments of the `start` command: runs to publish to and the rate per run. */
export interface StartArgs {
  runIds: string[];
  updatesPerSPerRun: number;
}

/** What `finish` answers: the final seq of every run (baselines publish no logs). */
export interface FinishResult {
  runs: Record<string, { finalSeq: number; logs: number }>;
  published: number;
}

/**
 * The state every baseline shares: each run's latest event (what a new subscriber gets first, as
 * Runcast's opening snapshot) and the publishing schedule the harness starts and finishes.
 */
export class Rooms {
  private readonly latest = new Map<string, Outgoing>();
  published = 0;

  /** The opening snapshot of a run for a new subscriber. */
  opening(runId: string): Outgoing {
    const last = this.latest.get(runId);
    const event = last?.event ?? updateEvent(runId, 0, Date.now(), 'snapshot', 'CREATED');
    return new Outgoing({ ...event, type: 'snapshot' }, last?.terminal ?? false);
  }

  next(runId: string, sentAtMs: number, status: RunStatus): Outgoing {
    const seq = (this.latest.get(runId)?.seq ?? 0) + 1;
    const out = new Outgoing(updateEvent(runId, seq, sentAtMs, 'update', status), status === 'COMPLETED');
    this.latest.set(runId, out);
    this.published++;
    return out;
  }
}

/**
 * Serves the harness's commands for a baseline: `start` publishes updates to every run at a rate
 * from an internal timer, `finish` publishes each run's terminal update, `stats` and `memory`
 * report. The send time travels in the payload.
 */
export function serveBroadcaster(transport: BroadcastTransport, rooms: Rooms, port: number): void {
  let pacer: Pacer | undefined;
  let runIds: string[] = [];
  serveCommands(
    {
      start: (args) => {
        const { runIds: ids, updatesPerSPerRun } = args as StartArgs;
        runIds = ids;
        pacer?.stop();
        pacer = new Pacer(updatesPerSPerRun * ids.length, (index, scheduledMs) => {
          const runId = ids[index % ids.length]!;
          transport.publish(runId, rooms.next(runId, scheduledMs, 'RUNNING'));
        });
        pacer.start();
        return { published: rooms.published };
      },
      finish: (): FinishResult => {
        pacer?.stop();
        const runs: FinishResult['runs'] = {};
        for (const runId of runIds) {
          const out = rooms.next(runId, Date.now(), 'COMPLETED');
          transport.publish(runId, out);
          runs[runId] = { finalSeq: out.seq, logs: 0 };
        }
        return { runs, published: rooms.published };
      },
      stats: () => ({ clients: transport.clients(), published: rooms.published }),
      memory: () => memoryAfterGc(),
    },
    { info: { port } },
  );
}

/** The port a baseline was asked to listen on (`--port N`, 0 for any). */
export function portArg(): number {
  const index = process.argv.indexOf('--port');
  return index >= 0 ? Number(process.argv[index + 1]) : 0;
}
