import { committedAtOf, sentAtOf } from '../payload.js';
import { type Percentiles, percentiles } from '../percentiles.js';

export type EventKind = 'update' | 'log' | 'snapshot' | 'other';

export interface ScannedEvent {
  seq: number;
  kind: EventKind;
  terminal: boolean;
}

const STATUS = '"status":"';
const TERMINAL_STATUSES = ['COMPLETED"', 'FAILED"', 'CANCELED"'];

function kindOf(code: number): EventKind {
  if (code === 117) return 'update'; // u
  if (code === 108) return 'log'; // l
  if (code === 115) return 'snapshot'; // s
  return 'other';
}

/** True when `text` holds a terminal status between `from` and `to`. */
function hasTerminalStatus(text: string, from: number, to: number): boolean {
  const at = text.indexOf(STATUS, from);
  if (at < 0 || at >= to) return false;
  return TERMINAL_STATUSES.some((status) => text.startsWith(status, at + STATUS.length));
}

/**
 * Reads seq, type and terminal status of the event JSON that starts at `from` in `text`, without
 * parsing it: Runcast writes `run_id`, `seq`, `type` first. Only sampled clients parse the JSON
 * (for the send time), so that 5,000 subscribers fit on one load core.
 */
export function scanEvent(text: string, from = 0, to = text.length): ScannedEvent | undefined {
  const seqAt = text.indexOf('"seq":', from);
  if (seqAt < 0 || seqAt >= to) return undefined;
  let seq = 0;
  let i = seqAt + 6;
  for (let code = text.charCodeAt(i); code >= 48 && code <= 57; code = text.charCodeAt(++i)) {
    seq = seq * 10 + (code - 48);
  }
  const typeAt = text.indexOf('"type":"', i);
  if (typeAt < 0 || typeAt >= to) return undefined;
  const kind = kindOf(text.charCodeAt(typeAt + 8));
  const terminal = kind !== 'log' && hasTerminalStatus(text, typeAt, to);
  return { seq, kind, terminal };
}

/** Counters of the whole load process, reset at the start of each measured window. */
export class LoadStats {
  events = 0;
  updates = 0;
  logs = 0;
  updateLatencyMs: number[] = [];
  logLatencyMs: number[] = [];
  /** From the event's commit (`at`) to its receipt, updates and log lines alike. */
  commitLatencyMs: number[] = [];
  private cpuAtReset = process.cpuUsage();
  private resetAtMs = Date.now();

  reset(): void {
    this.events = 0;
    this.updates = 0;
    this.logs = 0;
    this.updateLatencyMs = [];
    this.logLatencyMs = [];
    this.commitLatencyMs = [];
    this.cpuAtReset = process.cpuUsage();
    this.resetAtMs = Date.now();
  }

  /** The window since `reset`: counts, latencies and this process's share of its core. */
  window(): WindowReport {
    const cpu = process.cpuUsage(this.cpuAtReset);
    const wallMs = Date.now() - this.resetAtMs;
    return {
      wallMs,
      events: this.events,
      updates: this.updates,
      logs: this.logs,
      updateLatency: percentiles([...this.updateLatencyMs]),
      logLatency: percentiles([...this.logLatencyMs]),
      commitLatency: percentiles([...this.commitLatencyMs]),
      loadCpuUtilization: wallMs > 0 ? (cpu.user + cpu.system) / 1000 / wallMs : 0,
    };
  }
}

export interface WindowReport {
  wallMs: number;
  events: number;
  updates: number;
  logs: number;
  updateLatency: Percentiles;
  logLatency: Percentiles;
  commitLatency: Percentiles;
  loadCpuUtilization: number;
}

/** A fault probe: the first event committed at or after `sinceMs` that a subscriber received. */
export interface Probe {
  sinceMs: number;
  /** The subscriber's reconnects when the probe was set: a larger count later means it lost its node. */
  reconnects: number;
  receivedAtMs?: number;
}

/**
 * What one subscriber has seen: the last seq (seq only grows within a subscription), log lines
 * counted once each, and the terminal update. Transports feed it every event they decode.
 */
export class ClientState {
  lastSeq = -1;
  logs = 0;
  updates = 0;
  duplicateLogs = 0;
  staleUpdates = 0;
  terminalSeq: number | undefined;
  reconnects = 0;
  /** Connections lost without a resume (baselines, or resume disabled). */
  drops = 0;
  /** Set once the subscriber will receive nothing more. */
  finished = false;
  lastError: string | undefined;
  probe: Probe | undefined;

  constructor(
    readonly runId: string,
    readonly sampled: boolean,
    private readonly stats: LoadStats,
  ) {}

  /** The opening snapshot (or a resume's): the cursor moves to its seq. */
  onSnapshot(seq: number, terminal: boolean): void {
    if (seq > this.lastSeq) this.lastSeq = seq;
    if (terminal) this.terminalSeq = seq;
  }

  /**
   * One live or replayed event, received at `receivedAtMs`; `parse` decodes its JSON and is called
   * only for sampled clients and for a probe still waiting.
   */
  onEvent(scanned: ScannedEvent, receivedAtMs: number, parse: () => unknown): void {
    const { seq, kind } = scanned;
    if (kind === 'snapshot') {
      this.onSnapshot(seq, scanned.terminal);
      return;
    }
    if (kind === 'other') return;
    if (seq <= this.lastSeq) {
      if (kind === 'log') this.duplicateLogs++;
      else this.staleUpdates++;
      return;
    }
    this.lastSeq = seq;
    this.stats.events++;
    if (kind === 'log') {
      this.logs++;
      this.stats.logs++;
    } else {
      this.updates++;
      this.stats.updates++;
      if (scanned.terminal) this.terminalSeq = seq;
    }
    const probe = this.probe?.receivedAtMs === undefined ? this.probe : undefined;
    if (!this.sampled && !probe) return;
    const event = parse();
    const committedAt = committedAtOf(event);
    if (this.sampled) {
      const sentAt = sentAtOf(event);
      if (sentAt !== undefined) {
        (kind === 'log' ? this.stats.logLatencyMs : this.stats.updateLatencyMs).push(receivedAtMs - sentAt);
      }
      if (committedAt !== undefined) this.stats.commitLatencyMs.push(receivedAtMs - committedAt);
    }
    if (probe && committedAt !== undefined && committedAt >= probe.sinceMs) probe.receivedAtMs = receivedAtMs;
  }
}
