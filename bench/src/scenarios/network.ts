import { BenchProcess, LOAD_CPU } from '../bench-process.js';
import type { FinishArgs, WatchArgs } from '../load/network-viewers.js';
import type { ViewerReport, ViewerSubject } from '../load/viewers.js';
import { type NetworkBehaviour, NetworkProxy, type NetworkProxyStats } from '../network-proxy.js';
import { script } from '../paths.js';
import { logEntry, progressUpdate } from '../payload.js';
import { percentiles } from '../percentiles.js';
import type { Row, ScenarioResult, Table } from '../results.js';
import { RuncastServer } from '../runcast-server.js';

/** A network between the viewer and the server. */
interface NetworkClass {
  id: string;
  label: string;
  /** Absent: the viewer talks to the server directly. */
  behaviour: NetworkBehaviour | undefined;
  /** Served by a server whose heartbeats come every 2 s (a proxy that cuts idle connections). */
  shortHeartbeats: boolean;
}

const SSE_BUFFER_BYTES = 32 * 1024;
const IDLE_TIMEOUT_MS = 5000;

const CLASSES: NetworkClass[] = [
  { id: 'direct', label: 'direct', behaviour: undefined, shortHeartbeats: false },
  {
    id: 'ws-refused',
    label: 'WebSocket refused (403)',
    behaviour: { webSocket: 'refuse' },
    shortHeartbeats: false,
  },
  {
    id: 'ws-closed',
    label: 'WebSocket closed after the upgrade',
    behaviour: { webSocket: 'close-after-upgrade' },
    shortHeartbeats: false,
  },
  {
    id: 'ws-black-hole',
    label: 'WebSocket black-holed',
    behaviour: { webSocket: 'black-hole' },
    shortHeartbeats: false,
  },
  {
    id: 'sse-buffered',
    label: `WebSocket refused + SSE buffered (${SSE_BUFFER_BYTES / 1024} KB)`,
    behaviour: { webSocket: 'refuse', bufferEventStreamBytes: SSE_BUFFER_BYTES },
    shortHeartbeats: false,
  },
  {
    id: 'idle-timeout',
    label: `${IDLE_TIMEOUT_MS / 1000} s idle-timeout proxy`,
    behaviour: { webSocket: 'relay', idleTimeoutMs: IDLE_TIMEOUT_MS },
    shortHeartbeats: true,
  },
];

/**
 * A period under the idle-timeout proxy over which reconnects and fallbacks are counted: a busy
 * run on a server configured for such a proxy, and a quiet one on a server that is not (its
 * heartbeats are longer than the proxy allows, so only the client can keep its method).
 */
interface RatePhase {
  id: string;
  label: string;
  shortHeartbeats: boolean;
  /** Absent: the run stays silent while it is watched. */
  logIntervalMs: number | undefined;
}

const RATE_PHASES: RatePhase[] = [
  {
    id: 'logging',
    label: 'a log line every 1 s, 2 s heartbeats',
    shortHeartbeats: true,
    logIntervalMs: 1000,
  },
  {
    id: 'quiet',
    label: 'no log lines, default heartbeats (25 s ping, 15 s keepalive)',
    shortHeartbeats: false,
    logIntervalMs: undefined,
  },
];

/** Heartbeats within the idle-timeout proxy's limit (DESIGN §6: the settings a proxy needs). */
const SHORT_HEARTBEATS = { RUNCAST_WS_PING_INTERVAL_MS: '2000', RUNCAST_SSE_KEEPALIVE_MS: '2000' };

/** One column of the tables. */
interface Subject {
  key: string;
  label: string;
  viewer: ViewerSubject;
  clientModule?: string;
  /** Its delivery is asserted (every log once, the terminal status). */
  asserted: boolean;
}

export interface NetworkParams {
  id: string;
  title: string;
  scale: string;
  quick: boolean;
  repetitions: number;
  /** Settled: connected on one method for this long without a change. */
  quietMs: number;
  /** How long the ProgressService, and a baseline, may take to settle before the repetition ends. */
  capMs: number;
  baselineCapMs: number;
  /** The period over which reconnects and fallbacks under the idle-timeout proxy are counted. */
  ratePeriodMs: number;
  /** A log line this often while a run is watched on each network. */
  logIntervalMs: number;
  /** An older build of the client, measured as one more column ('before'). */
  before?: { module: string; label: string };
}

/** What one viewer did in one repetition. */
interface Observation {
  subject: string;
  network: string;
  /** At the end of the watch: timings and connection counts. */
  watched: ViewerReport;
  /** After the run completed: what was delivered. */
  finished: ViewerReport;
  expectedLogs: number[];
  lostLogs: number;
  repeatedLogs: number;
  proxy: NetworkProxyStats | undefined;
}

/** Posts a log line to a run at a fixed interval and keeps the seqs the server gave them. */
class LogFeed {
  readonly seqs: number[] = [];
  private readonly timer: NodeJS.Timeout | undefined;
  private readonly inFlight = new Set<Promise<void>>();
  private index = 0;
  readonly errors: string[] = [];

  constructor(
    private readonly server: RuncastServer,
    private readonly runId: string,
    intervalMs: number | undefined,
  ) {
    if (intervalMs !== undefined) this.timer = setInterval(() => this.post(), intervalMs);
  }

  private post(): void {
    const sent = this.server
      .api<{ first_seq: number; last_seq: number }>(
        'POST',
        `/runs/${this.runId}/logs`,
        logEntry(Date.now(), this.index++),
      )
      .then(
        (answer) => {
          for (let seq = answer.first_seq; seq <= answer.last_seq; seq++) this.seqs.push(seq);
        },
        (err: unknown) => {
          this.errors.push((err as Error).message);
        },
      )
      .finally(() => this.inFlight.delete(sent));
    this.inFlight.add(sent);
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await Promise.all(this.inFlight);
  }
}

interface Context {
  params: NetworkParams;
  viewers: BenchProcess;
  server(shortHeartbeats: boolean): Promise<RuncastServer>;
  problems: string[];
}

let nextViewerId = 1;

/** One viewer of a fresh run through a fresh proxy: watched, then the run completes. */
async function observe(
  ctx: Context,
  network: NetworkClass,
  subject: Subject,
  watch: Pick<WatchArgs, 'quietMs' | 'capMs' | 'durationMs'>,
  logIntervalMs: number | undefined,
  label = network.id,
): Promise<Observation> {
  const server = await ctx.server(network.shortHeartbeats);
  const [runId] = await server.createRuns(1);
  if (!runId) throw new Error('no run created');
  await server.api('PATCH', `/runs/${runId}/progress`, progressUpdate(Date.now(), 0));
  const proxy = network.behaviour ? await NetworkProxy.start(server.port, network.behaviour) : undefined;
  const feed = new LogFeed(server, runId, logIntervalMs);
  const id = `viewer-${nextViewerId++}`;
  try {
    const args: WatchArgs = {
      id,
      target: {
        subject: subject.viewer,
        ...(subject.clientModule ? { clientModule: subject.clientModule } : {}),
        url: proxy?.url ?? server.url,
        token: server.token,
        runId,
      },
      ...watch,
    };
    const limitMs = (watch.durationMs ?? watch.capMs) + 30_000;
    const watched = await ctx.viewers.request<ViewerReport>('watch', args, limitMs);
    await feed.stop();
    await server.api('PATCH', `/runs/${runId}/progress`, progressUpdate(Date.now(), 1, 'COMPLETED'));
    const finishArgs: FinishArgs = { id, waitMs: watched.firstSnapshotMs === undefined ? 0 : 15_000 };
    const finished = await ctx.viewers.request<ViewerReport>('finish', finishArgs, 60_000);
    const firstSeq = finished.firstSnapshotSeq;
    const expectedLogs = firstSeq === undefined ? [] : feed.seqs.filter((seq) => seq > firstSeq);
    const delivered = new Map<number, number>();
    for (const seq of finished.logSeqs) delivered.set(seq, (delivered.get(seq) ?? 0) + 1);
    const observation: Observation = {
      subject: subject.key,
      network: label,
      watched,
      finished,
      expectedLogs,
      lostLogs: expectedLogs.filter((seq) => !delivered.has(seq)).length,
      repeatedLogs: [...delivered.values()].reduce((sum, n) => sum + n - 1, 0),
      proxy: proxy ? { ...proxy.stats } : undefined,
    };
    if (feed.errors.length > 0) ctx.problems.push(`log feed: ${feed.errors.slice(0, 3).join('; ')}`);
    if (subject.asserted) ctx.problems.push(...deliveryProblems(observation, subject, network));
    return observation;
  } finally {
    await feed.stop();
    await proxy?.close();
  }
}

/** An observation as the results file keeps it: counts instead of every log seq. */
function stored(o: Observation): Record<string, unknown> {
  const { logSeqs: _watchedSeqs, ...watched } = o.watched;
  const { logSeqs, ...finished } = o.finished;
  return {
    ...o,
    watched,
    finished: { ...finished, logs: logSeqs.length },
    expectedLogs: o.expectedLogs.length,
  };
}

/** What the ProgressService must do on every network: first data, every log once, the end. */
function deliveryProblems(o: Observation, subject: Subject, network: NetworkClass): string[] {
  const where = `${subject.label}, ${network.label}`;
  const problems: string[] = [];
  const timeline = o.finished.timeline.slice(0, 12).join('; ');
  if (o.finished.firstSnapshotMs === undefined) problems.push(`${where}: no snapshot at all (${timeline})`);
  if (o.lostLogs > 0) problems.push(`${where}: ${o.lostLogs} of ${o.expectedLogs.length} log lines lost`);
  if (o.repeatedLogs > 0) problems.push(`${where}: ${o.repeatedLogs} log lines delivered twice`);
  if (o.finished.finalStatus !== 'COMPLETED') {
    problems.push(`${where}: ends on ${o.finished.finalStatus ?? 'nothing'}, not COMPLETED (${timeline})`);
  }
  return problems;
}

const ms = (value: number) => Math.round(value).toLocaleString('en-US');

function median(values: number[]): number {
  return percentiles([...values]).p50;
}

function present<T>(value: T | undefined): value is T {
  return value !== undefined;
}

/** The most frequent value. */
function mode(values: string[]): string | undefined {
  const counts = new Map<string, number>();
  for (const value of values) counts.set(value, (counts.get(value) ?? 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1])[0]?.[0];
}

/** Median over repetitions, with how many failed; 'fails' when none succeeded. */
function timeCell(values: (number | undefined)[], missing: string): string {
  const ok = values.filter(present);
  if (ok.length === 0) return missing;
  const failed = values.length - ok.length;
  return `${ms(median(ok))}${failed > 0 ? ` (${failed}/${values.length} ${missing})` : ''}`;
}

function deliveryCell(observations: Observation[]): string {
  const lost = observations.reduce((sum, o) => sum + o.lostLogs, 0);
  const repeated = observations.reduce((sum, o) => sum + o.repeatedLogs, 0);
  const unfinished = observations.filter((o) => o.finished.finalStatus !== 'COMPLETED').length;
  // A buffered stream lets everything through when the run ends: that is not delivery.
  if (observations.every((o) => o.watched.firstSnapshotMs === undefined)) return 'no data while watched';
  const parts = [
    lost > 0 ? `${lost} lost` : '',
    repeated > 0 ? `${repeated} repeated` : '',
    unfinished > 0 ? `${unfinished}/${observations.length} not on COMPLETED` : '',
  ].filter(Boolean);
  return parts.length === 0 ? 'ok' : parts.join(', ');
}

/** The median of every repetition within `limitMs`: a repetition without a figure misses it. */
function medianWithin(values: (number | undefined)[], limitMs: number): string {
  const ok = values.filter(present);
  return ok.length === values.length && ok.length > 0 && median(ok) <= limitMs ? 'holds' : 'MISSED';
}

/** `network` scenario: first data and settling on six networks, then rates under idle cuts. */
export async function runNetwork(
  params: NetworkParams,
  log: (line: string) => void,
): Promise<ScenarioResult> {
  const started = Date.now();
  log(`\n## ${params.title}`);
  const subjects: Subject[] = [
    ...(params.before
      ? [
          {
            key: 'before',
            label: params.before.label,
            viewer: 'progress-service' as const,
            clientModule: params.before.module,
            asserted: false,
          },
        ]
      : []),
    { key: 'progress-service', label: 'ProgressService', viewer: 'progress-service', asserted: true },
    { key: 'socketio', label: 'socket.io-client', viewer: 'socketio', asserted: false },
    { key: 'eventsource', label: 'EventSource', viewer: 'eventsource', asserted: false },
  ];
  const problems: string[] = [];
  const servers = new Map<boolean, Promise<RuncastServer>>();
  const viewers = await BenchProcess.start({
    name: 'network viewers',
    script: script('load/network-viewers.js'),
    cpu: LOAD_CPU,
  });
  const ctx: Context = {
    params,
    viewers,
    problems,
    server(shortHeartbeats) {
      let server = servers.get(shortHeartbeats);
      if (!server) {
        server = RuncastServer.start(shortHeartbeats ? SHORT_HEARTBEATS : {});
        servers.set(shortHeartbeats, server);
      }
      return server;
    },
  };
  const observations: Observation[] = [];
  const rates: Observation[] = [];
  let pollingFirst: Observation | undefined;
  try {
    const capOf = (subject: Subject) =>
      subject.viewer === 'progress-service' ? params.capMs : params.baselineCapMs;
    for (const network of CLASSES) {
      for (let rep = 0; rep < params.repetitions; rep++) {
        const round = await Promise.all(
          subjects.map((subject) =>
            observe(
              ctx,
              network,
              subject,
              { quietMs: params.quietMs, capMs: capOf(subject) },
              params.logIntervalMs,
            ),
          ),
        );
        observations.push(...round);
      }
      const line = subjects.map((subject) => {
        const mine = observations.filter((o) => o.network === network.id && o.subject === subject.key);
        const first = timeCell(
          mine.map((o) => o.watched.firstSnapshotMs),
          'fails',
        );
        const settled = timeCell(
          mine.map((o) => o.watched.settledMs),
          'unsettled',
        );
        return `${subject.label} ${first} / ${settled} ms ${mode(mine.map((o) => o.watched.method ?? '')) ?? ''}`;
      });
      log(`  ${network.label}: first snapshot / settled: ${line.join('; ')}`);
    }
    // Socket.IO's own default starts with long-polling, which this server does not accept.
    const direct = CLASSES[0];
    if (direct) {
      pollingFirst = await observe(
        ctx,
        direct,
        {
          key: 'socketio-defaults',
          label: 'socket.io-client defaults',
          viewer: 'socketio-defaults',
          asserted: false,
        },
        { quietMs: params.quietMs, capMs: params.baselineCapMs },
        params.logIntervalMs,
      );
    }
    const idle = CLASSES.find((c) => c.id === 'idle-timeout');
    for (const phase of idle ? RATE_PHASES : []) {
      const network = { ...(idle as NetworkClass), shortHeartbeats: phase.shortHeartbeats };
      const period = { quietMs: params.quietMs, capMs: params.ratePeriodMs, durationMs: params.ratePeriodMs };
      const round = await Promise.all(
        subjects.map((subject) => observe(ctx, network, subject, period, phase.logIntervalMs, phase.id)),
      );
      rates.push(...round);
      const perMin = (n: number) => ((n * 60_000) / params.ratePeriodMs).toFixed(1);
      const line = round.map(
        (o) =>
          `${o.subject} ${perMin(o.watched.losses)} reconnects, ${perMin(o.watched.fallbacks ?? 0)} fallbacks, ${perMin(o.proxy?.idleCuts ?? 0)} idle cuts`,
      );
      log(`  ${network.label}, ${phase.label}, per minute: ${line.join('; ')}`);
    }
  } finally {
    await viewers.stop();
    for (const server of servers.values()) {
      const s = await server.catch(() => undefined);
      if (!s) continue;
      problems.push(...s.errorLines.slice(0, 5).map((line) => `server logged an error: ${line}`));
      if (!s.process.isRunning)
        problems.push(`the Runcast server exited (${JSON.stringify(s.process.exit)})`);
      await s.stop();
    }
  }
  const of = (subject: string, network: string) =>
    observations.filter((o) => o.subject === subject && o.network === network);
  const medianOf = (subject: string, pick: (o: Observation) => number | undefined) =>
    CLASSES.map((network) => {
      const values = of(subject, network.id).map(pick);
      return values.every(present) && values.length > 0 ? median(values) : undefined;
    });
  const firstMedians = medianOf('progress-service', (o) => o.watched.firstSnapshotMs);
  const settledMedians = medianOf('progress-service', (o) => o.watched.settledMs);
  const worst = (values: (number | undefined)[]) =>
    values.every(present) ? Math.max(...values) : Number.NaN;
  const idleFallbacks = [
    ...of('progress-service', 'idle-timeout'),
    ...rates.filter((o) => o.subject === 'progress-service'),
  ].reduce((sum, o) => sum + (o.finished.fallbacks ?? 0), 0);
  const asserted = [...observations, ...rates].filter((o) => o.subject === 'progress-service');
  const wrongLogs = asserted.reduce((sum, o) => sum + o.lostLogs + o.repeatedLogs, 0);
  const firstWorst = worst(firstMedians);
  const settledWorst = worst(settledMedians);
  const rows: Row[] = [
    {
      figure: 'ProgressService: first snapshot, slowest network (median ms)',
      runcast: firstWorst,
      baselines: [],
      digits: 0,
      target: { text: '≤ 1,000 ms on every network', holds: firstWorst <= 1000 },
    },
    {
      figure: 'ProgressService: settled on the final method, slowest network (median ms)',
      runcast: settledWorst,
      baselines: [],
      digits: 0,
      target: { text: '≤ 3,000 ms on every network', holds: settledWorst <= 3000 },
    },
    {
      figure: `ProgressService: fallbacks under the ${IDLE_TIMEOUT_MS / 1000} s idle-timeout proxy`,
      runcast: idleFallbacks,
      baselines: [],
      digits: 0,
      target: { text: '0', holds: idleFallbacks === 0 },
    },
    {
      figure: 'ProgressService: log lines lost or repeated, every network',
      runcast: wrongLogs,
      baselines: [],
      digits: 0,
      target: { text: '0', holds: wrongLogs === 0 },
    },
  ];
  const tables = networkTables(params, subjects, observations, rates);
  const notes = networkNotes(params, pollingFirst);
  return {
    id: params.id,
    title: params.title,
    scale: params.scale,
    params: { ...params, classes: CLASSES },
    systems: {
      observations: observations.map(stored),
      rates: rates.map(stored),
      pollingFirst: pollingFirst && stored(pollingFirst),
    },
    rows,
    tables,
    notes,
    problems,
    durationS: (Date.now() - started) / 1000,
  };
}

function networkTables(
  params: NetworkParams,
  subjects: Subject[],
  observations: Observation[],
  rates: Observation[],
): Table[] {
  const of = (subject: string, network: string) =>
    observations.filter((o) => o.subject === subject && o.network === network);
  const targets = !params.quick;
  const header = (target: string) => [
    'network',
    ...subjects.map((s) => s.label),
    ...(targets ? [`ProgressService ${target}`] : []),
  ];
  const reps = params.repetitions === 1 ? 'one run' : `median of ${params.repetitions}`;
  const first: Table = {
    caption: `Time to first snapshot (ms from subscribing, ${reps})`,
    header: header('≤ 1,000 ms'),
    rows: CLASSES.map((network) => {
      const mine = of('progress-service', network.id).map((o) => o.watched.firstSnapshotMs);
      return [
        network.label,
        ...subjects.map((s) =>
          timeCell(
            of(s.key, network.id).map((o) => o.watched.firstSnapshotMs),
            'fails',
          ),
        ),
        ...(targets ? [medianWithin(mine, 1000)] : []),
      ];
    }),
  };
  const settled: Table = {
    caption: `Time to settle on the final method (ms from subscribing to the last connection before ${params.quietMs / 1000} s without a change, ${reps}) and that method`,
    header: header('≤ 3,000 ms'),
    rows: CLASSES.map((network) => {
      const mine = of('progress-service', network.id).map((o) => o.watched.settledMs);
      return [
        network.label,
        ...subjects.map((s) => {
          const list = of(s.key, network.id);
          const noData = list.every((o) => o.watched.firstSnapshotMs === undefined);
          const cell = noData
            ? 'fails'
            : timeCell(
                list.map((o) => o.watched.settledMs),
                'unsettled',
              );
          const method = mode(list.map((o) => o.watched.method).filter(present));
          return method && !noData ? `${cell} · ${method}` : cell;
        }),
        ...(targets ? [medianWithin(mine, 3000)] : []),
      ];
    }),
  };
  const delivery: Table = {
    caption: 'Delivery: every log line after the first snapshot exactly once, ending on COMPLETED',
    header: ['network', ...subjects.map((s) => s.label)],
    rows: CLASSES.map((network) => [
      network.label,
      ...subjects.map((s) => deliveryCell(of(s.key, network.id))),
    ]),
  };
  const tables = [first, settled, delivery];
  if (rates.length > 0) {
    const perMin = (n: number | undefined) =>
      n === undefined ? '—' : ((n * 60_000) / params.ratePeriodMs).toFixed(1);
    tables.push({
      caption: `Under the ${IDLE_TIMEOUT_MS / 1000} s idle-timeout proxy for ${params.ratePeriodMs / 1000} s`,
      header: [
        'run and server',
        'viewer',
        'reconnects / min',
        'fallbacks / min',
        'idle cuts by the proxy / min',
        'method at the end',
        'delivery',
      ],
      rows: RATE_PHASES.flatMap((phase) =>
        subjects.map((s) => {
          const o = rates.find((r) => r.subject === s.key && r.network === phase.id);
          if (!o) return [phase.label, s.label, '—', '—', '—', '—', '—'];
          return [
            phase.label,
            s.label,
            perMin(o.watched.losses),
            perMin(o.watched.fallbacks),
            perMin(o.proxy?.idleCuts),
            o.watched.method ?? 'none',
            deliveryCell([o]),
          ];
        }),
      ),
    });
  }
  return tables;
}

function networkNotes(params: NetworkParams, pollingFirst: Observation | undefined): string[] {
  const notes = [
    'Each viewer follows its own run through its own proxy on loopback; the viewers of one repetition run at once in one process, the Runcast server in another. Every run gets a log line each second while it is watched (except the quiet run of the idle-timeout table), then completes.',
    `A viewer has settled when it has been connected on one method, its first snapshot received, for ${params.quietMs / 1000} s; "settled" is the time of that last connection (for the ProgressService its last change to the \`connected\` state or to another method while connected; for socket.io-client its last acknowledged \`subscribe\`; for EventSource the snapshot after its last (re)open). Repetitions end there or after ${params.capMs / 1000} s (ProgressService) / ${params.baselineCapMs / 1000} s (baselines); "unsettled" means not settled by then, "fails" no first snapshot by then.`,
    "The ProgressService runs with default options and a bearer token. socket.io-client runs with `transports: ['websocket']` and otherwise its defaults, subscribing on every (re)connection from its last seq; its first snapshot is the `subscribe` acknowledgement. EventSource is the `eventsource` package on `/api/v1/runs/{id}/stream` with the token in an Authorization header, reconnecting by itself.",
    `The idle-timeout network is served with RUNCAST_WS_PING_INTERVAL_MS=${SHORT_HEARTBEATS.RUNCAST_WS_PING_INTERVAL_MS} and RUNCAST_SSE_KEEPALIVE_MS=${SHORT_HEARTBEATS.RUNCAST_SSE_KEEPALIVE_MS}, the heartbeats such a proxy needs; the other networks with the defaults. The proxy answers a request idle for 5 s with 504 and closes a stream or WebSocket idle for 5 s. Its rate table adds a quiet run on a server left at the default heartbeats, which such a proxy cuts: there only the client can keep its method.`,
    'Delivery is asserted for the ProgressService only: a baseline that loses lines shows it in the delivery table.',
  ];
  if (pollingFirst) {
    const first = pollingFirst.watched.firstSnapshotMs;
    const errors = pollingFirst.watched.timeline.filter((line) => line.includes('connect_error')).length;
    notes.push(
      first === undefined
        ? `socket.io-client with all its defaults (long-polling first, then the upgrade) got no data within ${params.baselineCapMs / 1000} s even directly: the server accepts only the WebSocket transport for Socket.IO, so the polling handshake is refused (${errors} connect errors). The baseline above is therefore socket.io-client limited to WebSocket.`
        : `socket.io-client with all its defaults (long-polling first) got its first snapshot directly in ${ms(first)} ms.`,
    );
  }
  return notes;
}
