import type { FinishResult, StartArgs } from '../baselines/broadcaster.js';
import { BenchProcess, LOAD_CPU, SERVER_CPU } from '../bench-process.js';
import type { ProducerFinishResult, ProducerStartArgs } from '../load/producer.js';
import type { SubscriberTarget } from '../load/subscriber-clients.js';
import type { OpenArgs, OpenResult, VerifyArgs, VerifyResult } from '../load/subscribers.js';
import type { WindowReport } from '../load/tracker.js';
import { script } from '../paths.js';
import { baselineRunIds } from '../payload.js';
import { cpuBetween, cpuMark, rssBytes } from '../proc-stats.js';
import type { Row, ScenarioResult, SystemName } from '../results.js';
import { RuncastServer } from '../runcast-server.js';
import { sleep } from '../time.js';

export type BroadcastBaseline = 'bare-socketio' | 'bare-ws' | 'bare-sse';

/** One fan-out scenario: subscribers of runs receiving updates (and, on Runcast, log lines). */
export interface FanoutParams {
  id: string;
  title: string;
  scale: string;
  runs: number;
  perRun: number;
  updatesPerSPerRun: number;
  /** Log lines per run and second (Runcast only; each must reach every subscriber). */
  logsPerSPerRun: number;
  runcastTransport: 'websocket' | 'sse';
  baselines: BroadcastBaseline[];
  warmupMs: number;
  measureMs: number;
  sampleSize: number;
  socketIoClient: 'lean' | 'official';
  producerConnections: number;
  /** Targets checked against Runcast's figures. */
  targets: { p99Ms?: number; cpuVs?: BroadcastBaseline };
  /** How Runcast's subscribers ask for their events (default: whole snapshots, no compression). */
  encoding?: Pick<SubscriberTarget, 'delta' | 'gzip' | 'deflate'>;
  /** Settings of the Runcast server (`RUNCAST_…`). */
  serverEnv?: Record<string, string>;
}

/** What one system did in a fan-out scenario. */
export interface FanoutMeasurement {
  system: SystemName;
  open: OpenResult;
  window: WindowReport;
  offeredEventsPerS: number;
  eventsPerS: number;
  serverCpuS: number;
  serverCpuUtilization: number;
  cpuUsPerEvent: number;
  producerCpuUtilization: number | undefined;
  rssMiB: number;
  verify: VerifyResult;
  producer: ProducerFinishResult | undefined;
  metrics: { conflated: number; slowDisconnects: number; delivered: number } | undefined;
  problems: string[];
}

/** The server side of a fan-out: Runcast with its producer, or a baseline broadcaster. */
interface Publisher {
  serverPid: number;
  /** Load processes besides the subscribers (Runcast's producer), whose CPU is reported. */
  producerPid: number | undefined;
  target: SubscriberTarget;
  runIds: string[];
  start(): Promise<void>;
  finish(): Promise<{ runs: VerifyArgs['runs']; producer?: ProducerFinishResult }>;
  metrics(): Promise<FanoutMeasurement['metrics']>;
  problems(): string[];
  stop(): Promise<void>;
}

const BROADCASTER_SCRIPT: Record<BroadcastBaseline, string> = {
  'bare-socketio': 'baselines/socketio-broadcaster.js',
  'bare-ws': 'baselines/ws-broadcaster.js',
  'bare-sse': 'baselines/sse-broadcaster.js',
};

async function runcastPublisher(params: FanoutParams): Promise<Publisher> {
  const server = await RuncastServer.start(params.serverEnv);
  let producer: BenchProcess | undefined;
  try {
    const runIds = await server.createRuns(params.runs);
    producer = await BenchProcess.start({
      name: 'producer',
      script: script('load/producer.js'),
      cpu: LOAD_CPU,
    });
    const started = producer;
    return {
      serverPid: server.pid,
      producerPid: started.pid,
      runIds,
      target: {
        transport: params.runcastTransport === 'sse' ? 'runcast-sse' : 'runcast-socketio',
        host: '127.0.0.1',
        port: server.port,
        token: server.token,
        resume: true,
        socketIoClient: params.socketIoClient,
        ...params.encoding,
      },
      async start() {
        const args: ProducerStartArgs = {
          host: '127.0.0.1',
          port: server.port,
          token: server.token,
          runIds,
          updatesPerSPerRun: params.updatesPerSPerRun,
          logsPerSPerRun: params.logsPerSPerRun,
          connections: params.producerConnections,
        };
        await started.request('start', args, 60_000);
      },
      async finish() {
        const result = await started.request<ProducerFinishResult>('finish', { waitMs: 30_000 }, 120_000);
        return { runs: result.runs, producer: result };
      },
      async metrics() {
        const m = await server.metrics();
        return {
          conflated: m.runcast_updates_conflated_total ?? 0,
          slowDisconnects: m.runcast_subscribers_disconnected_slow_total ?? 0,
          delivered: m.runcast_events_delivered_total ?? 0,
        };
      },
      problems() {
        const problems = server.errorLines.slice(0, 5).map((line) => `server logged an error: ${line}`);
        if (!server.process.isRunning) {
          problems.push(
            `the Runcast server exited (${JSON.stringify(server.process.exit)})\n${server.process.tail(20)}`,
          );
        }
        return problems;
      },
      async stop() {
        await started.stop();
        await server.stop();
      },
    };
  } catch (err) {
    await producer?.stop();
    await server.stop();
    throw err;
  }
}

async function baselinePublisher(system: BroadcastBaseline, params: FanoutParams): Promise<Publisher> {
  const child = await BenchProcess.start({
    name: system,
    script: script(BROADCASTER_SCRIPT[system]),
    nodeArgs: ['--expose-gc'],
    args: ['--port', '0'],
    cpu: SERVER_CPU,
  });
  const port = (child.readyInfo as { port: number }).port;
  const runIds = baselineRunIds(params.runs);
  return {
    serverPid: child.pid,
    producerPid: undefined,
    runIds,
    target: {
      transport: system,
      host: '127.0.0.1',
      port,
      resume: false,
      socketIoClient: params.socketIoClient,
    },
    async start() {
      const args: StartArgs = { runIds, updatesPerSPerRun: params.updatesPerSPerRun };
      await child.request('start', args);
    },
    async finish() {
      const result = await child.request<FinishResult>('finish');
      return { runs: result.runs };
    },
    metrics: async () => undefined,
    problems: () =>
      child.isRunning ? [] : [`${system} exited (${JSON.stringify(child.exit)})\n${child.tail(20)}`],
    stop: async () => {
      await child.stop();
    },
  };
}

/** Runs one system through the scenario: subscribe, publish, measure a window, finish, verify. */
export async function measureFanout(
  system: SystemName,
  params: FanoutParams,
  log: (line: string) => void,
): Promise<FanoutMeasurement> {
  const publisher =
    system === 'runcast'
      ? await runcastPublisher(params)
      : await baselinePublisher(system as BroadcastBaseline, params);
  let load: BenchProcess | undefined;
  try {
    load = await BenchProcess.start({
      name: 'subscribers',
      script: script('load/subscribers.js'),
      cpu: LOAD_CPU,
    });
    const openArgs: OpenArgs = {
      target: publisher.target,
      runIds: publisher.runIds,
      perRun: params.perRun,
      sampleSize: params.sampleSize,
      concurrency: 200,
    };
    const open = await load.request<OpenResult>('open', openArgs, 180_000);
    log(
      `  ${system}: ${open.opened} subscribers open in ${(open.ms / 1000).toFixed(1)} s (${open.failed} failed)`,
    );
    await publisher.start();
    await sleep(params.warmupMs);
    await load.request('reset');
    const serverStart = cpuMark(publisher.serverPid);
    const producerStart = publisher.producerPid === undefined ? undefined : cpuMark(publisher.producerPid);
    await sleep(params.measureMs);
    const serverEnd = cpuMark(publisher.serverPid);
    const producerEnd = publisher.producerPid === undefined ? undefined : cpuMark(publisher.producerPid);
    const window = await load.request<WindowReport>('window');
    const rssMiB = rssBytes(publisher.serverPid) / 2 ** 20;
    const finished = await publisher.finish();
    const verifyArgs: VerifyArgs = { runs: finished.runs, waitMs: 30_000 };
    const verify = await load.request<VerifyResult>('verify', verifyArgs, 60_000);
    const metrics = await publisher.metrics();
    const cpu = cpuBetween(serverStart, serverEnd);
    const eventsPerS = window.events / (window.wallMs / 1000);
    const problems = publisher.problems();
    if (open.failed > 0)
      problems.push(`${open.failed} subscribers failed to open: ${open.errors.join('; ')}`);
    if (finished.producer && finished.producer.errors > 0) {
      problems.push(
        `producer: ${finished.producer.errors} failed requests: ${finished.producer.errorExamples.join('; ')}`,
      );
    }
    // The delivery contract is Runcast's; a baseline that falls behind only shows it in its figures.
    if (system === 'runcast') {
      if (verify.lostLogs > 0) problems.push(`${verify.lostLogs} log events lost`);
      if (verify.duplicateLogs > 0) problems.push(`${verify.duplicateLogs} log events delivered twice`);
      if (verify.staleUpdates > 0) problems.push(`${verify.staleUpdates} updates arrived out of seq order`);
      if (verify.notTerminal > 0) {
        problems.push(
          `${verify.notTerminal} subscribers did not end on the terminal update: ${verify.examples.join('; ')}`,
        );
      }
    }
    const measurement: FanoutMeasurement = {
      system,
      open,
      window,
      offeredEventsPerS:
        params.runs *
        params.perRun *
        (params.updatesPerSPerRun + (system === 'runcast' ? params.logsPerSPerRun : 0)),
      eventsPerS,
      serverCpuS: cpu.cpuS,
      serverCpuUtilization: cpu.utilization,
      cpuUsPerEvent: window.events > 0 ? (cpu.cpuS * 1e6) / window.events : Number.NaN,
      producerCpuUtilization:
        producerStart && producerEnd ? cpuBetween(producerStart, producerEnd).utilization : undefined,
      rssMiB,
      verify,
      producer: finished.producer,
      metrics,
      problems: problems.map((p) => `${system}: ${p}`),
    };
    log(
      `  ${system}: ${Math.round(eventsPerS)} events/s, ${measurement.cpuUsPerEvent.toFixed(2)} µs CPU/event, ` +
        `p99 ${window.updateLatency.p99.toFixed(1)} ms, server core ${(cpu.utilization * 100).toFixed(0)}%, ` +
        `load core ${(window.loadCpuUtilization * 100).toFixed(0)}%, lost logs ${verify.lostLogs}, not terminal ${verify.notTerminal}`,
    );
    await load.request('close', undefined, 30_000);
    return measurement;
  } finally {
    await load?.stop();
    await publisher.stop();
  }
}

function holds(value: number | undefined, limit: number): boolean | undefined {
  return value === undefined || Number.isNaN(value) ? undefined : value <= limit;
}

/** Runs Runcast, then each baseline, and tabulates the figures. */
export async function runFanout(params: FanoutParams, log: (line: string) => void): Promise<ScenarioResult> {
  const started = Date.now();
  log(`\n## ${params.title}`);
  const measured: FanoutMeasurement[] = [];
  const problems: string[] = [];
  for (const system of ['runcast', ...params.baselines] as SystemName[]) {
    try {
      measured.push(await measureFanout(system, params, log));
    } catch (err) {
      problems.push(`${system}: the scenario failed: ${(err as Error).message}`);
      log(`  ${system}: FAILED ${(err as Error).message}`);
    }
  }
  const runcast = measured.find((m) => m.system === 'runcast');
  const baselines = measured.filter((m) => m.system !== 'runcast');
  const row = (figure: string, digits: number, pick: (m: FanoutMeasurement) => number | undefined): Row => ({
    figure,
    digits,
    runcast: runcast ? pick(runcast) : undefined,
    baselines: baselines.map((m) => ({ system: m.system, value: pick(m) })),
  });
  const cpuRow = row('server CPU per delivered event (µs)', 2, (m) => m.cpuUsPerEvent);
  const cpuBaseline = baselines.find((m) => m.system === params.targets.cpuVs);
  if (params.targets.cpuVs) {
    const ratio = runcast && cpuBaseline ? runcast.cpuUsPerEvent / cpuBaseline.cpuUsPerEvent : undefined;
    cpuRow.target = { text: `≤ 1.0× ${params.targets.cpuVs}`, holds: holds(ratio, 1.0) };
  }
  const p99Row = row('delivery latency p99 (ms)', 1, (m) => m.window.updateLatency.p99);
  if (params.targets.p99Ms !== undefined) {
    p99Row.target = {
      text: `≤ ${params.targets.p99Ms} ms`,
      holds: holds(runcast?.window.updateLatency.p99, params.targets.p99Ms),
    };
  }
  const lostRow = row('log events lost', 0, (m) => (m.system === 'runcast' ? m.verify.lostLogs : undefined));
  lostRow.target = {
    text: '0',
    holds: runcast ? runcast.verify.lostLogs === 0 && runcast.verify.duplicateLogs === 0 : undefined,
  };
  const rows: Row[] = [
    row('offered events/s', 0, (m) => m.offeredEventsPerS),
    row('delivered events/s', 0, (m) => m.eventsPerS),
    cpuRow,
    row('server core busy (%)', 0, (m) => m.serverCpuUtilization * 100),
    row('delivery latency p50 (ms)', 1, (m) => m.window.updateLatency.p50),
    p99Row,
    row('delivery latency p999 (ms)', 1, (m) => m.window.updateLatency.p999),
    row('log line latency p99 (ms)', 1, (m) =>
      m.system === 'runcast' ? m.window.logLatency.p99 : undefined,
    ),
    row('server RSS (MiB)', 0, (m) => m.rssMiB),
    lostRow,
    row('subscribers not on the terminal update', 0, (m) => m.verify.notTerminal),
    row('updates conflated', 0, (m) => m.metrics?.conflated),
    row('slow-consumer disconnects / reconnects', 0, (m) => m.metrics?.slowDisconnects ?? m.verify.drops),
    row(
      'load core busy (%)',
      0,
      (m) => (m.window.loadCpuUtilization + (m.producerCpuUtilization ?? 0)) * 100,
    ),
  ];
  for (const m of measured) problems.push(...m.problems);
  return {
    id: params.id,
    title: params.title,
    scale: params.scale,
    params: { ...params },
    systems: Object.fromEntries(measured.map((m) => [m.system, m])),
    rows,
    problems,
    durationS: (Date.now() - started) / 1000,
  };
}
