/**
 * Load process: HTTP request load over keep-alive connections, one connection per poller.
 * `paced` sends from every connection at a fixed rate (pollers at 1 request/s); `closedLoop`
 * sends the next request as soon as the answer arrived (the maximum rate, and producer ingest).
 */
import { serveCommands } from '../ipc.js';
import { progressUpdate } from '../payload.js';
import { type Percentiles, percentiles } from '../percentiles.js';
import { RawHttpConnection, requestText } from '../raw-http.js';
import { nowMs, sleep } from '../time.js';

/** What each request is: a conditional poll, or an acknowledged progress update. */
export type RequestSpec =
  | { kind: 'poll'; runIds: string[]; token?: string; etag: string }
  | { kind: 'progress'; runIds: string[]; token?: string };

export interface OpenArgs {
  host: string;
  port: number;
  connections: number;
  spec: RequestSpec;
}

export interface LoadResult {
  wallMs: number;
  requests: number;
  requestsPerS: number;
  statuses: Record<string, number>;
  errors: number;
  errorExamples: string[];
  /** From the scheduled (paced) or actual (closed loop) send to the answer. */
  latency: Percentiles;
  loadCpuUtilization: number;
}

interface Poller {
  connection: RawHttpConnection;
  runId: string;
  index: number;
}

let pollers: Poller[] = [];
let spec: RequestSpec | undefined;

function build(poller: Poller, dueMs: number): string {
  const s = spec!;
  const auth: Record<string, string> = s.token ? { authorization: `Bearer ${s.token}` } : {};
  if (s.kind === 'poll') {
    return requestText('GET', `/api/v1/runs/${poller.runId}/progress`, { ...auth, 'if-none-match': s.etag });
  }
  poller.index++;
  return requestText(
    'PATCH',
    `/api/v1/runs/${poller.runId}/progress`,
    auth,
    JSON.stringify(progressUpdate(dueMs, poller.index)),
  );
}

async function open(args: OpenArgs): Promise<{ opened: number }> {
  spec = args.spec;
  const fresh: Poller[] = [];
  for (let i = 0; i < args.connections; i += 200) {
    const batch = Math.min(200, args.connections - i);
    const connections = await Promise.all(
      Array.from({ length: batch }, () => RawHttpConnection.connect(args.host, args.port)),
    );
    for (const connection of connections) {
      const index = pollers.length + fresh.length;
      fresh.push({ connection, runId: args.spec.runIds[index % args.spec.runIds.length]!, index: 0 });
    }
  }
  pollers = [...pollers, ...fresh];
  return { opened: pollers.length };
}

class Tally {
  requests = 0;
  errors = 0;
  errorExamples: string[] = [];
  statuses: Record<string, number> = {};
  latency: number[] = [];
  private readonly cpu = process.cpuUsage();
  private readonly startedMs = Date.now();

  answered(status: number, latencyMs: number): void {
    this.requests++;
    this.statuses[status] = (this.statuses[status] ?? 0) + 1;
    this.latency.push(latencyMs);
  }

  failed(err: Error): void {
    this.errors++;
    if (this.errorExamples.length < 5) this.errorExamples.push(err.message);
  }

  result(): LoadResult {
    const wallMs = Date.now() - this.startedMs;
    const cpu = process.cpuUsage(this.cpu);
    return {
      wallMs,
      requests: this.requests,
      requestsPerS: this.requests / (wallMs / 1000),
      statuses: this.statuses,
      errors: this.errors,
      errorExamples: this.errorExamples,
      latency: percentiles(this.latency),
      loadCpuUtilization: (cpu.user + cpu.system) / 1000 / wallMs,
    };
  }
}

/** Every poller sends `ratePerConnection` requests/s for `durationMs`, phases spread evenly. */
async function paced(args: { ratePerConnection: number; durationMs: number }): Promise<LoadResult> {
  const tally = new Tally();
  const intervalMs = 1000 / args.ratePerConnection;
  const startMs = nowMs();
  const endMs = startMs + args.durationMs;
  const loops = pollers.map(async (poller, i) => {
    let dueMs = startMs + (intervalMs * i) / pollers.length;
    while (dueMs < endMs) {
      const wait = dueMs - nowMs();
      if (wait > 0) await sleep(wait);
      // Timers may fire up to a millisecond early: count from the actual send then, and from the
      // schedule when the poller is late (so a slow server shows as latency).
      const fromMs = Math.min(dueMs, nowMs());
      try {
        const response = await poller.connection.send(build(poller, dueMs));
        tally.answered(response.status, nowMs() - fromMs);
      } catch (err) {
        tally.failed(err as Error);
        return;
      }
      dueMs += intervalMs;
    }
  });
  await Promise.all(loops);
  return tally.result();
}

/** Every connection sends its next request as soon as the previous one was answered. */
async function closedLoop(args: { durationMs: number }): Promise<LoadResult> {
  const tally = new Tally();
  const endMs = nowMs() + args.durationMs;
  const loops = pollers.map(async (poller) => {
    for (let sentMs = nowMs(); sentMs < endMs; sentMs = nowMs()) {
      try {
        const response = await poller.connection.send(build(poller, sentMs));
        tally.answered(response.status, nowMs() - sentMs);
      } catch (err) {
        tally.failed(err as Error);
        return;
      }
    }
  });
  await Promise.all(loops);
  return tally.result();
}

serveCommands({
  open: (args) => open(args as OpenArgs),
  paced: (args) => paced(args as { ratePerConnection: number; durationMs: number }),
  closedLoop: (args) => closedLoop(args as { durationMs: number }),
  close: () => {
    for (const poller of pollers) poller.connection.close();
    const closed = pollers.length;
    pollers = [];
    return { closed };
  },
});
