import { request } from 'node:http';
import { type ConnectionMethod, type ProgressEvent, ProgressService } from '@runcast/client';
import { BenchProcess, SERVER_CPU } from '../bench-process.js';
import { type ByteCount, ByteRelay } from '../byte-relay.js';
import { createSubscriber, type SubscriberTarget } from '../load/subscriber-clients.js';
import { ClientState, LoadStats } from '../load/tracker.js';
import { script } from '../paths.js';
import { baselineRunIds, logEntry, progressUpdate } from '../payload.js';
import type { Row, ScenarioResult, SystemName, Table } from '../results.js';
import { RuncastServer } from '../runcast-server.js';
import { sleep } from '../time.js';
import { type FanoutMeasurement, type FanoutParams, measureFanout } from './fanout.js';

/**
 * Bytes on the wire: what one viewer costs per progress update and per log line on each
 * transport, with and without delta updates and compression, counted by a relay at the socket
 * (headers and framing included); what replays cost with and without gzip; and what the chosen
 * encodings cost the server at fan-out scale and per idle connection.
 */
export interface BytesParams {
  id: string;
  title: string;
  scale: string;
  /** Progress updates, then log lines, published to the watched run at `ratePerS`. */
  updates: number;
  logs: number;
  ratePerS: number;
  /** The fan-outs measured for CPU per delivered event (WebSocket, SSE), today's encoding first. */
  fanout: Omit<FanoutParams, 'id' | 'title' | 'scale' | 'runcastTransport' | 'baselines' | 'targets'>;
  /** Idle SSE connections opened to measure memory per connection, plain and gzip. */
  idleConnections: number;
  /** Times each fan-out encoding is measured, in turn with the others; CPU is their mean. */
  fanoutRounds: number;
}

/** How one viewer asks for its events. */
interface Encoding {
  transport: ConnectionMethod;
  label: string;
  delta: boolean;
  /** What the viewer's requests send as Accept-Encoding. */
  acceptEncoding: 'identity' | 'gzip, deflate, br';
  /**
   * Served by a server whose RUNCAST_WS_COMPRESSION is on (socket.io-client offers
   * permessage-deflate; a server with it off declines).
   */
  deflate: boolean;
}

const TODAY = 'whole snapshots, uncompressed (today)';
const PLAIN = 'identity';
const ANY = 'gzip, deflate, br';
const encoding = (
  transport: ConnectionMethod,
  label: string,
  delta: boolean,
  acceptEncoding: Encoding['acceptEncoding'],
  deflate = false,
): Encoding => ({ transport, label, delta, acceptEncoding, deflate });
const ENCODINGS: Encoding[] = [
  encoding('websocket', TODAY, false, PLAIN),
  encoding('websocket', 'delta', true, PLAIN),
  encoding('websocket', 'delta + permessage-deflate', true, PLAIN, true),
  encoding('sse', TODAY, false, PLAIN),
  encoding('sse', 'delta', true, PLAIN),
  encoding('sse', 'gzip', false, ANY),
  encoding('sse', 'delta + gzip', true, ANY),
  encoding('polling', TODAY, false, PLAIN),
  encoding('polling', 'delta', true, PLAIN),
  encoding('polling', 'delta + gzip', true, ANY),
];

/** What one viewer's traffic came to. */
interface ViewerBytes {
  transport: ConnectionMethod;
  encoding: string;
  perUpdate: ByteCount;
  perLog: ByteCount;
  updatesSeen: number;
  logsSeen: number;
  /** The application got whole snapshots equal to the server's at the end. */
  finalStateMatches: boolean;
}

const WAIT_MS = 30_000;

/** Waits until `done` holds, checking every 20 ms; false after `timeoutMs`. */
async function until(done: () => boolean, timeoutMs = WAIT_MS): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!done()) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

/** Runs `publish(i)` for i in 0..count-1 at `ratePerS`, each when its time comes. */
async function paced(count: number, ratePerS: number, publish: (index: number) => Promise<unknown>) {
  const start = Date.now();
  for (let i = 0; i < count; i++) {
    const due = start + (i * 1000) / ratePerS;
    if (due > Date.now()) await sleep(due - Date.now());
    await publish(i);
  }
}

function perEvent(count: ByteCount, events: number): ByteCount {
  const n = Math.max(1, events);
  return { down: count.down / n, up: count.up / n, requests: count.requests / n };
}

/** One viewer (the client library, as an application uses it) through the relay, on a new run. */
async function measureViewer(
  server: RuncastServer,
  relay: ByteRelay,
  encoding: Encoding,
  params: BytesParams,
  problems: string[],
): Promise<ViewerBytes> {
  const [runId] = await server.createRuns(1);
  if (!runId) throw new Error('no run created');
  const patch = (body: unknown) => server.api<{ seq: number }>('PATCH', `/runs/${runId}/progress`, body);
  await patch(progressUpdate(Date.now(), 0));
  const service = new ProgressService({
    baseUrl: `http://127.0.0.1:${relay.port}`,
    token: server.token,
    transports: [encoding.transport],
    deltaUpdates: encoding.delta,
    // Today's client answered each long-poll at its first event: no linger.
    ...(encoding.label === TODAY ? { pollLingerMs: 0 } : {}),
    env: {
      fetch: (input, init) => {
        const headers = new Headers(init?.headers);
        headers.set('accept-encoding', encoding.acceptEncoding);
        return globalThis.fetch(input, { ...init, headers });
      },
    },
  });
  let lastStateSeq = 0;
  let logs = 0;
  let latest: ProgressEvent | undefined;
  const unsubscribe = service.subscribeToRun(runId, (event) => {
    latest = event;
    if (event.type === 'log') logs++;
    else if (event.type === 'snapshot' || event.type === 'update') lastStateSeq = event.seq;
  });
  try {
    const opened = await until(() => lastStateSeq >= 1);
    if (!opened) throw new Error(`${encoding.transport} (${encoding.label}): no opening snapshot`);
    // The opening (REST snapshot, handshake, first long-poll) is not what is measured.
    await sleep(500);
    relay.take();

    let lastSeq = 0;
    await paced(params.updates, params.ratePerS, async (i) => {
      lastSeq = (await patch(progressUpdate(Date.now(), i + 1))).seq;
    });
    if (!(await until(() => lastStateSeq >= lastSeq)))
      problems.push(`${encoding.transport} (${encoding.label}): missed updates up to seq ${lastSeq}`);
    await sleep(200);
    const updatesCount = relay.take();

    await paced(params.logs, params.ratePerS, (i) =>
      server.api('POST', `/runs/${runId}/logs`, logEntry(Date.now(), i)),
    );
    if (!(await until(() => logs >= params.logs)))
      problems.push(`${encoding.transport} (${encoding.label}): got ${logs} of ${params.logs} log lines`);
    await sleep(200);
    const logsCount = relay.take();

    const final = await patch({ ...progressUpdate(Date.now(), params.updates + 1), status: 'COMPLETED' });
    await until(() => lastStateSeq >= final.seq);
    const stored = await server.api<{ seq: number; status: string; progress: unknown }>(
      'GET',
      `/runs/${runId}/progress`,
    );
    const seen = latest?.type === 'update' || latest?.type === 'snapshot' ? latest.snapshot : undefined;
    const finalStateMatches = JSON.stringify(seen) === JSON.stringify(stored);
    if (!finalStateMatches)
      problems.push(`${encoding.transport} (${encoding.label}): the last state differs from the server's`);
    if (logs !== params.logs)
      problems.push(`${encoding.transport} (${encoding.label}): ${logs} log lines for ${params.logs}`);
    return {
      transport: encoding.transport,
      encoding: encoding.label,
      perUpdate: perEvent(updatesCount, params.updates),
      perLog: perEvent(logsCount, params.logs),
      updatesSeen: params.updates,
      logsSeen: logs,
      finalStateMatches,
    };
  } finally {
    unsubscribe();
    service.close();
    relay.take();
  }
}

/** The bytes one request's answer took on the wire (head included), on a connection of its own. */
async function answerBytes(
  relay: ByteRelay,
  path: string,
  headers: Record<string, string>,
): Promise<{ bytes: number; encoding: string; status: number }> {
  relay.take();
  const { status, encoding } = await new Promise<{ status: number; encoding: string }>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: relay.port, path, headers, agent: false }, (res) => {
      res.resume();
      const timer = setTimeout(() => res.destroy(), 5000);
      res.on('close', () => {
        clearTimeout(timer);
        resolve({
          status: res.statusCode ?? 0,
          encoding: String(res.headers['content-encoding'] ?? 'identity'),
        });
      });
    });
    req.on('error', reject);
    req.end();
  });
  await sleep(50);
  return { bytes: relay.take().down, encoding, status };
}

interface ReplayBytes {
  answer: string;
  identity: number;
  gzip: number;
  gzipEncoding: string;
}

/** The run's history (its logs) as each way of reading it answers, without and with gzip. */
async function measureReplays(
  server: RuncastServer,
  relay: ByteRelay,
  events: number,
): Promise<ReplayBytes[]> {
  const [runId] = await server.createRuns(1);
  await server.api('PATCH', `/runs/${runId}/progress`, progressUpdate(Date.now(), 0));
  for (let i = 0; i < events; i += 50) {
    const entries = Array.from({ length: Math.min(50, events - i) }, (_, j) => logEntry(Date.now(), i + j));
    await server.api('POST', `/runs/${runId}/logs`, { entries });
  }
  await server.api('PATCH', `/runs/${runId}/progress`, { status: 'COMPLETED' });
  const auth = { authorization: `Bearer ${server.token}` };
  const answers: [string, string, Record<string, string>][] = [
    [`/events?since=0 (${events} logs)`, `/api/v1/runs/${runId}/events?since=0`, {}],
    [`/progress?since=0 (${events} logs)`, `/api/v1/runs/${runId}/progress?since=0`, {}],
    [
      `SSE replay from Last-Event-ID 0 (${events} logs)`,
      `/api/v1/runs/${runId}/stream`,
      { accept: 'text/event-stream', 'last-event-id': '0' },
    ],
    ['run list (`GET /runs`)', '/api/v1/runs?limit=100', {}],
  ];
  const measured: ReplayBytes[] = [];
  for (const [answer, path, headers] of answers) {
    const identity = await answerBytes(relay, path, { ...auth, ...headers, 'accept-encoding': 'identity' });
    const gzip = await answerBytes(relay, path, { ...auth, ...headers, 'accept-encoding': 'gzip' });
    measured.push({ answer, identity: identity.bytes, gzip: gzip.bytes, gzipEncoding: gzip.encoding });
  }
  return measured;
}

interface BaselineBytes {
  system: SystemName;
  transport: string;
  perUpdate: ByteCount;
}

/** A bare broadcaster's bytes per update (the same whole snapshot JSON), through a relay. */
async function measureBroadcaster(
  system: 'bare-socketio' | 'bare-sse',
  params: BytesParams,
): Promise<BaselineBytes> {
  const child = await BenchProcess.start({
    name: system,
    script: script(
      system === 'bare-sse' ? 'baselines/sse-broadcaster.js' : 'baselines/socketio-broadcaster.js',
    ),
    args: ['--port', '0'],
    cpu: SERVER_CPU,
  });
  const relay = await ByteRelay.start((child.readyInfo as { port: number }).port);
  try {
    const [runId] = baselineRunIds(1) as [string];
    const state = new ClientState(runId, false, new LoadStats());
    const target: SubscriberTarget = {
      transport: system,
      host: '127.0.0.1',
      port: relay.port,
      resume: false,
      socketIoClient: 'lean',
    };
    const subscriber = createSubscriber(target, state);
    await subscriber.open();
    await sleep(300);
    relay.take();
    await child.request('start', { runIds: [runId], updatesPerSPerRun: params.ratePerS });
    await until(() => state.updates >= params.updates);
    const count = relay.take();
    const seen = state.updates;
    await child.request('finish');
    subscriber.close();
    return {
      system,
      transport: system === 'bare-sse' ? 'sse' : 'websocket',
      perUpdate: perEvent(count, seen),
    };
  } finally {
    await relay.stop();
    await child.stop();
  }
}

/** One poll of bare Fastify answering the same snapshot: what a poll cycle costs at the floor. */
async function measureBareFastifyPoll(): Promise<BaselineBytes> {
  const child = await BenchProcess.start({
    name: 'bare-fastify',
    script: script('baselines/fastify.js'),
    args: ['--port', '0'],
    cpu: SERVER_CPU,
  });
  const relay = await ByteRelay.start((child.readyInfo as { port: number }).port);
  try {
    const [runId] = baselineRunIds(1) as [string];
    const cycles = 20;
    relay.take();
    for (let i = 0; i < cycles; i++) {
      // The same request a viewer makes (a bearer token as long as Runcast's), answered 200.
      const response = await fetch(
        `http://127.0.0.1:${relay.port}/api/v1/runs/${runId}/progress?since=${i}`,
        {
          headers: { authorization: `Bearer ${'x'.repeat(180)}`, 'accept-encoding': 'identity' },
        },
      );
      await response.text();
    }
    await sleep(50);
    return { system: 'bare-fastify', transport: 'polling', perUpdate: perEvent(relay.take(), cycles) };
  } finally {
    await relay.stop();
    await child.stop();
  }
}

interface IdleMemory {
  encoding: string;
  connections: number;
  bytesPerConnection: number;
}

/** Server memory per idle SSE connection, plain and gzip, `count` connections each. */
async function measureIdleSse(count: number, problems: string[]): Promise<IdleMemory[]> {
  const results: IdleMemory[] = [];
  for (const gzip of [false, true]) {
    const server = await RuncastServer.start();
    try {
      const runIds = await server.createRuns(10);
      const before = (await server.memory()).rss;
      const stats = new LoadStats();
      const subscribers = runIds.flatMap((runId) =>
        Array.from({ length: Math.ceil(count / runIds.length) }, () =>
          createSubscriber(
            {
              transport: 'runcast-sse',
              host: '127.0.0.1',
              port: server.port,
              token: server.token,
              resume: false,
              socketIoClient: 'lean',
              delta: true,
              gzip,
            },
            new ClientState(runId, false, stats),
          ),
        ),
      );
      for (let i = 0; i < subscribers.length; i += 200) {
        await Promise.all(subscribers.slice(i, i + 200).map((subscriber) => subscriber.open()));
      }
      await sleep(500);
      const after = (await server.memory()).rss;
      results.push({
        encoding: gzip ? 'delta + gzip' : 'delta',
        connections: subscribers.length,
        bytesPerConnection: (after - before) / subscribers.length,
      });
      for (const subscriber of subscribers) subscriber.close();
    } catch (err) {
      problems.push(`idle SSE (${gzip ? 'gzip' : 'plain'}): ${(err as Error).message}`);
    } finally {
      await server.stop();
    }
  }
  return results;
}

interface FanoutVariant {
  transport: 'websocket' | 'sse';
  label: string;
  encoding: FanoutParams['encoding'];
  serverEnv?: Record<string, string>;
}

const WS_DEFLATE = 'delta + permessage-deflate';

function fanoutVariants(): FanoutVariant[] {
  return [
    { transport: 'websocket', label: TODAY, encoding: {} },
    { transport: 'websocket', label: 'delta', encoding: { delta: true } },
    {
      transport: 'websocket',
      label: WS_DEFLATE,
      encoding: { delta: true, deflate: true },
      serverEnv: { RUNCAST_WS_COMPRESSION: 'on' },
    },
    { transport: 'sse', label: TODAY, encoding: {} },
    { transport: 'sse', label: 'delta', encoding: { delta: true } },
    { transport: 'sse', label: 'delta + gzip', encoding: { delta: true, gzip: true } },
  ];
}

/** A variant's rounds as one: CPU per event averaged, the worst p99, every loss counted. */
function meanOfRounds(measured: FanoutMeasurement[]): { measured: FanoutMeasurement; roundsUs: number[] } {
  const first = measured[0] as FanoutMeasurement;
  const roundsUs = measured.map((m) => m.cpuUsPerEvent);
  const worst = measured.reduce((a, b) => (b.window.updateLatency.p99 > a.window.updateLatency.p99 ? b : a));
  return {
    roundsUs,
    measured: {
      ...first,
      cpuUsPerEvent: roundsUs.reduce((a, b) => a + b, 0) / roundsUs.length,
      eventsPerS: measured.reduce((a, m) => a + m.eventsPerS, 0) / measured.length,
      window: worst.window,
      rssMiB: Math.max(...measured.map((m) => m.rssMiB)),
      verify: {
        ...first.verify,
        lostLogs: measured.reduce((a, m) => a + m.verify.lostLogs, 0),
        duplicateLogs: measured.reduce((a, m) => a + m.verify.duplicateLogs, 0),
      },
    },
  };
}

const fmt = (value: number, digits = 0): string =>
  value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
const ratio = (value: number, base: number | undefined): string =>
  base ? `${(value / base).toFixed(2)}×` : '—';

export async function runBytes(params: BytesParams, log: (line: string) => void): Promise<ScenarioResult> {
  const started = Date.now();
  log(`\n## ${params.title}`);
  const problems: string[] = [];

  // 1. One viewer per transport and encoding, through the counting relay.
  const viewers: ViewerBytes[] = [];
  let replays: ReplayBytes[] = [];
  for (const deflate of [false, true]) {
    const server = await RuncastServer.start(
      { RUNCAST_WS_COMPRESSION: deflate ? 'on' : 'off' },
      { cpu: null },
    );
    const relay = await ByteRelay.start(server.port);
    try {
      for (const encoding of ENCODINGS.filter((e) => e.deflate === deflate)) {
        try {
          const measured = await measureViewer(server, relay, encoding, params, problems);
          viewers.push(measured);
          log(
            `  ${encoding.transport} ${encoding.label}: ${fmt(measured.perUpdate.down)} B down + ${fmt(measured.perUpdate.up)} B up per update, ${fmt(measured.perLog.down)} + ${fmt(measured.perLog.up)} per log`,
          );
        } catch (err) {
          problems.push(`${encoding.transport} (${encoding.label}): ${(err as Error).message}`);
          log(`  ${encoding.transport} ${encoding.label}: FAILED ${(err as Error).message}`);
        }
      }
      if (!deflate) replays = await measureReplays(server, relay, 100);
      problems.push(...server.errorLines.slice(0, 3).map((line) => `server logged an error: ${line}`));
    } finally {
      await relay.stop();
      await server.stop();
    }
  }
  for (const replay of replays) {
    log(`  ${replay.answer}: ${fmt(replay.identity)} B, gzip ${fmt(replay.gzip)} B (${replay.gzipEncoding})`);
  }

  // 2. The bare baselines: the same whole snapshot on each transport.
  const baselines: BaselineBytes[] = [];
  for (const system of ['bare-socketio', 'bare-sse'] as const) {
    try {
      baselines.push(await measureBroadcaster(system, params));
    } catch (err) {
      problems.push(`${system}: ${(err as Error).message}`);
    }
  }
  try {
    baselines.push(await measureBareFastifyPoll());
  } catch (err) {
    problems.push(`bare-fastify: ${(err as Error).message}`);
  }

  // 3. CPU per delivered event and p99 at fan-out scale, each encoding on a fresh server, the
  // encodings in turn and then again (the machine drifts between runs more than encodings differ).
  // Every other round takes them in reverse order, so that a drift over the rounds weighs on
  // every encoding alike rather than most on the last of a round.
  const variants = fanoutVariants();
  const rounds = new Map<FanoutVariant, FanoutMeasurement[]>();
  for (let round = 0; round < params.fanoutRounds; round++) {
    for (const variant of round % 2 === 0 ? variants : [...variants].reverse()) {
      const fanoutParams: FanoutParams = {
        ...params.fanout,
        id: `bytes-${variant.transport}`,
        title: `${variant.transport} ${variant.label}`,
        scale: '',
        runcastTransport: variant.transport,
        baselines: [],
        targets: {},
        encoding: variant.encoding,
        serverEnv: variant.serverEnv,
      };
      try {
        const measured = await measureFanout('runcast', fanoutParams, log);
        rounds.set(variant, [...(rounds.get(variant) ?? []), measured]);
        problems.push(...measured.problems.map((p) => `fan-out ${variant.transport} ${variant.label}: ${p}`));
      } catch (err) {
        problems.push(`fan-out ${variant.transport} ${variant.label}: ${(err as Error).message}`);
      }
    }
  }
  const fanouts = [...rounds].map(([variant, measured]) => ({ variant, ...meanOfRounds(measured) }));

  // 4. Memory per idle SSE connection, plain and gzip.
  const idle = await measureIdleSse(params.idleConnections, problems);

  const viewer = (transport: ConnectionMethod, label: string) =>
    viewers.find((v) => v.transport === transport && v.encoding === label);
  const fanout = (transport: string, label: string) =>
    fanouts.find((f) => f.variant.transport === transport && f.variant.label === label)?.measured;
  const bare = (transport: string) => baselines.find((b) => b.transport === transport);
  /** Today's encoding, measured beside a variant. */
  const todayOf = (variant: FanoutVariant) => fanout(variant.transport, TODAY);

  const rows: Row[] = [];
  const bytesTarget = (transport: ConnectionMethod, label: string, limit: number, what: string) => {
    const today = viewer(transport, TODAY);
    const chosen = viewer(transport, label);
    const cycle = (v: ViewerBytes | undefined) => (v ? v.perUpdate.down + v.perUpdate.up : undefined);
    const value = transport === 'polling' ? cycle(chosen) : chosen?.perUpdate.down;
    const base = transport === 'polling' ? cycle(today) : today?.perUpdate.down;
    const bareBytes = bare(transport);
    rows.push({
      figure: `${what}, ${label} (today: ${base === undefined ? '—' : fmt(base)} B)`,
      runcast: value,
      baselines: bareBytes
        ? [
            {
              system: bareBytes.system,
              value:
                transport === 'polling'
                  ? bareBytes.perUpdate.down + bareBytes.perUpdate.up
                  : bareBytes.perUpdate.down,
            },
          ]
        : [],
      digits: 0,
      target: {
        text: `≤ ${limit}× today's`,
        holds: value === undefined || base === undefined ? undefined : value <= limit * base,
      },
    });
  };
  // What @runcast/client gets with the server's defaults: deltas everywhere, per-message deflate
  // on the WebSocket, gzip where the client accepts it (browsers and Node's fetch do).
  bytesTarget('websocket', WS_DEFLATE, 0.25, 'WebSocket: bytes down per progress update');
  bytesTarget('sse', 'delta + gzip', 0.25, 'SSE: bytes down per progress update');
  bytesTarget('polling', 'delta + gzip', 0.5, 'Polling: bytes down + up per progress update');
  for (const replay of replays) {
    rows.push({
      figure: `${replay.answer}: bytes with gzip (identity: ${fmt(replay.identity)} B)`,
      runcast: replay.gzip,
      baselines: [],
      digits: 0,
      target: replay.answer.startsWith('run list')
        ? undefined
        : { text: '≤ 0.2× identity', holds: replay.gzip <= 0.2 * replay.identity },
    });
  }
  for (const variant of variants) {
    if (variant.label === TODAY) continue;
    const measured = fanout(variant.transport, variant.label);
    if (!measured) continue;
    const today = todayOf(variant);
    rows.push({
      figure: `${fmt(params.fanout.perRun)}-subscriber ${variant.transport} fan-out: server CPU per delivered event (µs), ${variant.label} (today: ${today ? today.cpuUsPerEvent.toFixed(2) : '—'})`,
      runcast: measured.cpuUsPerEvent,
      baselines: [],
      digits: 2,
      target: {
        text: "within 1.1× today's",
        holds: today ? measured.cpuUsPerEvent <= 1.1 * today.cpuUsPerEvent : undefined,
      },
    });
  }
  for (const memory of idle) {
    rows.push({
      figure: `RSS per idle SSE connection, ${memory.encoding} (KB, ${memory.connections} connections)`,
      runcast: memory.bytesPerConnection / 1024,
      baselines: [],
      digits: 1,
      target: { text: '≤ 15 KB', holds: memory.bytesPerConnection <= 15 * 1024 },
    });
  }
  const lost = fanouts.reduce(
    (sum, f) => sum + f.measured.verify.lostLogs + f.measured.verify.duplicateLogs,
    0,
  );
  rows.push({
    figure: 'log lines lost or duplicated (every viewer and fan-out subscriber)',
    runcast: lost + viewers.reduce((sum, v) => sum + Math.abs(params.logs - v.logsSeen), 0),
    baselines: [],
    digits: 0,
    target: { text: '0', holds: lost === 0 && viewers.every((v) => v.logsSeen === params.logs) },
  });

  const tables: Table[] = [
    {
      caption: `One viewer (@runcast/client in Node) per transport and encoding: bytes per event at the socket, ${params.updates} progress updates then ${params.logs} log lines at ${params.ratePerS}/s`,
      header: [
        'transport',
        'encoding',
        'update: down',
        'update: up',
        'log: down',
        'log: up',
        'requests per event',
        'update down vs today',
      ],
      rows: viewers.map((v) => [
        v.transport,
        v.encoding,
        fmt(v.perUpdate.down),
        fmt(v.perUpdate.up),
        fmt(v.perLog.down),
        fmt(v.perLog.up),
        v.transport === 'polling' ? fmt((v.perUpdate.requests + v.perLog.requests) / 2, 2) : '—',
        ratio(v.perUpdate.down, viewer(v.transport, TODAY)?.perUpdate.down),
      ]),
    },
    {
      caption: 'Bare baselines: the same whole snapshot (about 700 B of JSON) per update',
      header: ['system', 'transport', 'update: down', 'update: up'],
      rows: baselines.map((b) => [b.system, b.transport, fmt(b.perUpdate.down), fmt(b.perUpdate.up)]),
    },
    {
      caption: 'A finished run’s history, one request each, answer bytes on the wire (head included)',
      header: ['answer', 'identity (B)', 'gzip (B)', 'ratio', 'Content-Encoding'],
      rows: replays.map((r) => [
        r.answer,
        fmt(r.identity),
        fmt(r.gzip),
        ratio(r.gzip, r.identity),
        r.gzipEncoding,
      ]),
    },
    {
      caption: `Fan-out: one run × N subscribers × ${params.fanout.updatesPerSPerRun} updates/s (+ ${params.fanout.logsPerSPerRun} log lines/s), each encoding on a fresh server`,
      header: [
        'transport',
        'encoding',
        'subscribers',
        'events/s delivered',
        'server CPU per delivered event (µs)',
        'each round (µs)',
        'vs today',
        'update p99 (ms)',
        'server RSS (MiB)',
      ],
      rows: fanouts.map(({ variant, measured, roundsUs }) => [
        variant.transport,
        variant.label,
        fmt(params.fanout.perRun),
        fmt(measured.eventsPerS),
        measured.cpuUsPerEvent.toFixed(2),
        roundsUs.map((us) => us.toFixed(2)).join(', '),
        ratio(measured.cpuUsPerEvent, todayOf(variant)?.cpuUsPerEvent),
        measured.window.updateLatency.p99.toFixed(1),
        measured.rssMiB.toFixed(0),
      ]),
    },
  ];

  return {
    id: params.id,
    title: params.title,
    scale: params.scale,
    params: { ...params },
    systems: { viewers, baselines, replays, fanouts, idle },
    rows,
    tables,
    notes: [
      'Bytes are counted by a TCP relay between the client and the server: HTTP heads, chunk framing, WebSocket frames and compression as they cross the socket. The viewer is `@runcast/client` with one transport allowed; its Accept-Encoding is set for each row (Node’s fetch would send `gzip, deflate`); the opening (snapshot, handshake) is not counted.',
      '“Today” is the encoding every viewer got before delta updates and compression: whole snapshots, no Content-Encoding. It is still what a client that does not ask for deltas and does not accept gzip gets.',
      'Polling rows count the request going up too: a poll cycle is the request and its answer. The client asks the long-poll to linger 100 ms after the first event, so events that follow at once share an answer; the “today” row does not linger, as the client did not.',
      `Fan-out subscribers are the bench’s lean clients (raw SSE over TCP, the Socket.IO protocol over \`ws\`), asking for the encoding of their row; CPU per delivered event is the server’s utime+stime over the window divided by the events received. Each encoding is measured on a fresh server, all of them in turn, ${params.fanoutRounds} times over, every other round in reverse order (the machine drifts between runs by more than the encodings differ: one configuration measured 10.1 and 13.6 µs in two rounds of one run): the CPU figure is the rounds’ mean, p99 the worst round’s.`,
      'Compressed fan-out subscribers inflate through shared results (`bench/src/load/shared-inflate.ts`): each unit is inflated alone, or after the connection’s last message, and the result serves every connection that received the same bytes after the same message — exactly what its own inflater would give, or an error. Without it one load core could not inflate 5,000 streams and the server’s figures measured a load that had fallen behind.',
    ],
    problems,
    durationS: (Date.now() - started) / 1000,
  };
}
