/**
 * Load process: N subscribers of one transport. Counts events, checks that every log line
 * arrives once and that every subscriber ends on the terminal update, and measures delivery
 * latency (receive time minus the send time in the payload) on a sample of the subscribers.
 */
import { serveCommands } from '../ipc.js';
import { sleep } from '../time.js';
import { createSubscriber, type Subscriber, type SubscriberTarget } from './subscriber-clients.js';
import { ClientState, LoadStats } from './tracker.js';

/** Arguments of `open`: adds subscribers (it may be called again to add more). */
export interface OpenArgs {
  target: SubscriberTarget;
  runIds: string[];
  perRun: number;
  /** About this many subscribers (spread over the runs) measure latency. */
  sampleSize: number;
  /** Connections being opened at once. */
  concurrency: number;
}

export interface OpenResult {
  opened: number;
  failed: number;
  total: number;
  ms: number;
  errors: string[];
}

/** Expected end state of each run, from the producer. */
export interface VerifyArgs {
  runs: Record<string, { finalSeq: number; logs: number }>;
  /** How long to wait for every subscriber to reach the terminal update. */
  waitMs: number;
}

export interface VerifyResult {
  clients: number;
  /** Ended on the run's terminal update with its final seq. */
  terminal: number;
  notTerminal: number;
  lostLogs: number;
  duplicateLogs: number;
  staleUpdates: number;
  updates: number;
  reconnects: number;
  drops: number;
  waitedMs: number;
  examples: string[];
}

/** Where each subscriber stands on the probe set by `probe`. */
export interface ProbeResult {
  clients: number;
  /** Subscribers that reconnected since the probe was set (they lost their node). */
  reconnected: number;
  /** Subscribers that have not received an event committed since the probe was set. */
  waiting: number;
  /** Per subscriber that received one: receipt minus the probe's time, reconnected ones apart. */
  reconnectedDelaysMs: number[];
  otherDelaysMs: number[];
}

const stats = new LoadStats();
const clients: { state: ClientState; subscriber: Subscriber }[] = [];

async function open(args: OpenArgs): Promise<OpenResult> {
  const started = Date.now();
  const total = args.runIds.length * args.perRun;
  const step = Math.max(1, Math.floor(total / Math.max(1, args.sampleSize)));
  const fresh: { state: ClientState; subscriber: Subscriber }[] = [];
  for (let k = 0; k < args.perRun; k++) {
    for (const runId of args.runIds) {
      const index = fresh.length;
      const state = new ClientState(runId, args.sampleSize > 0 && index % step === 0, stats);
      fresh.push({ state, subscriber: createSubscriber(args.target, state) });
    }
  }
  clients.push(...fresh);
  let next = 0;
  let failed = 0;
  const errors: string[] = [];
  const worker = async () => {
    while (next < fresh.length) {
      const client = fresh[next++]!;
      try {
        await client.subscriber.open();
      } catch (err) {
        failed++;
        if (errors.length < 5) errors.push((err as Error).message);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(args.concurrency, fresh.length) }, worker));
  return { opened: fresh.length - failed, failed, total: clients.length, ms: Date.now() - started, errors };
}

async function verify(args: VerifyArgs): Promise<VerifyResult> {
  const started = Date.now();
  const done = (state: ClientState) => {
    const expected = args.runs[state.runId];
    return state.finished || (expected !== undefined && state.terminalSeq === expected.finalSeq);
  };
  while (Date.now() - started < args.waitMs && !clients.every(({ state }) => done(state))) await sleep(100);
  const result: VerifyResult = {
    clients: clients.length,
    terminal: 0,
    notTerminal: 0,
    lostLogs: 0,
    duplicateLogs: 0,
    staleUpdates: 0,
    updates: 0,
    reconnects: 0,
    drops: 0,
    waitedMs: Date.now() - started,
    examples: [],
  };
  for (const { state } of clients) {
    const expected = args.runs[state.runId];
    const lost = Math.max(0, (expected?.logs ?? 0) - state.logs);
    const terminal = expected !== undefined && state.terminalSeq === expected.finalSeq;
    if (terminal) result.terminal++;
    else result.notTerminal++;
    result.lostLogs += lost;
    result.duplicateLogs += state.duplicateLogs;
    result.staleUpdates += state.staleUpdates;
    result.updates += state.updates;
    result.reconnects += state.reconnects;
    result.drops += state.drops;
    if ((!terminal || lost > 0) && result.examples.length < 5) {
      result.examples.push(
        `${state.runId}: logs ${state.logs}/${expected?.logs}, last seq ${state.lastSeq}, terminal seq ${state.terminalSeq ?? 'none'}/${expected?.finalSeq}, reconnects ${state.reconnects}, drops ${state.drops}, error ${state.lastError ?? 'none'}`,
      );
    }
  }
  return result;
}

/** Every subscriber now waits for the first event committed at or after `sinceMs`. */
function probe(args: { sinceMs: number }): void {
  for (const { state } of clients) state.probe = { sinceMs: args.sinceMs, reconnects: state.reconnects };
}

function probed(): ProbeResult {
  const result: ProbeResult = {
    clients: clients.length,
    reconnected: 0,
    waiting: 0,
    reconnectedDelaysMs: [],
    otherDelaysMs: [],
  };
  for (const { state } of clients) {
    const { probe } = state;
    if (!probe) continue;
    const reconnected = state.reconnects > probe.reconnects;
    if (reconnected) result.reconnected++;
    if (probe.receivedAtMs === undefined) {
      result.waiting++;
      continue;
    }
    (reconnected ? result.reconnectedDelaysMs : result.otherDelaysMs).push(
      probe.receivedAtMs - probe.sinceMs,
    );
  }
  return result;
}

serveCommands({
  probe: (args) => probe(args as { sinceMs: number }),
  probed: () => probed(),
  open: (args) => open(args as OpenArgs),
  reset: () => stats.reset(),
  window: () => stats.window(),
  verify: (args) => verify(args as VerifyArgs),
  close: async () => {
    for (const { subscriber } of clients) subscriber.close();
    // Let the closes reach the server before the harness reads its memory or stops it.
    await sleep(200);
    return { closed: clients.length };
  },
});
