/**
 * Load process of the network scenario: viewers of runs, each behind its own proxy, watched
 * until their connection has been quiet for a while (or for a fixed time), then until their run
 * ends. Several viewers are watched at once.
 */
import { serveCommands } from '../ipc.js';
import { sleep } from '../time.js';
import { createViewer, type Viewer, type ViewerReport, type ViewerTarget } from './viewers.js';

export interface WatchArgs {
  id: string;
  target: ViewerTarget;
  /** Settled: connected on one method, with the first snapshot, this long without a change. */
  quietMs: number;
  /** Stop waiting for it to settle after this long. */
  capMs: number;
  /** Watch exactly this long instead (rates over a fixed period). */
  durationMs?: number;
}

export interface FinishArgs {
  id: string;
  /** How long to wait for the run's terminal status. */
  waitMs: number;
}

const POLL_MS = 20;
const viewers = new Map<string, { viewer: Viewer; quietMs: number }>();

async function watch(args: WatchArgs): Promise<ViewerReport> {
  const viewer = createViewer(args.target);
  viewers.set(args.id, { viewer, quietMs: args.quietMs });
  await viewer.start();
  const started = performance.now();
  const elapsed = () => performance.now() - started;
  if (args.durationMs !== undefined) await sleep(args.durationMs);
  else while (!viewer.stableFor(args.quietMs) && elapsed() < args.capMs) await sleep(POLL_MS);
  return viewer.report(args.quietMs);
}

async function finish(args: FinishArgs): Promise<ViewerReport> {
  const entry = viewers.get(args.id);
  if (!entry) throw new Error(`no viewer ${args.id}`);
  viewers.delete(args.id);
  const started = performance.now();
  while (!entry.viewer.terminal && performance.now() - started < args.waitMs) await sleep(POLL_MS);
  const report = entry.viewer.report(entry.quietMs);
  entry.viewer.close();
  return report;
}

serveCommands({
  watch: (args) => watch(args as WatchArgs),
  finish: (args) => finish(args as FinishArgs),
});
