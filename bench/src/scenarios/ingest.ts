import { BenchProcess, LOAD_CPU, SERVER_CPU } from '../bench-process.js';
import type { LoadResult, OpenArgs } from '../load/http-load.js';
import { script } from '../paths.js';
import { cpuBetween, cpuMark } from '../proc-stats.js';
import type { Row, ScenarioResult } from '../results.js';
import { type HttpSystem, type HttpSystemName, startHttpSystem } from './http-systems.js';

export interface IngestParams {
  id: string;
  title: string;
  scale: string;
  /** Concurrent producers (one connection and one run each), measured one after another. */
  concurrency: number[];
  warmupMs: number;
  durationMs: number;
}

export interface IngestStep extends LoadResult {
  producers: number;
  acknowledgedPerS: number;
  serverCpuUtilization: number;
  cpuUsPerUpdate: number;
}

const TARGET_PER_S = 20_000;
const SYSTEMS: HttpSystemName[] = ['runcast', 'bare-fastify'];

/** Each producer count in turn against one server: closed-loop `PATCH …/progress`. */
async function measure(
  system: HttpSystemName,
  params: IngestParams,
  problems: string[],
  log: (line: string) => void,
): Promise<IngestStep[]> {
  const server = await startHttpSystem(system, Math.max(...params.concurrency));
  try {
    const steps = await measureIngest(server, system, params, problems, log);
    problems.push(...server.problems());
    return steps;
  } finally {
    await server.stop();
  }
}

/**
 * Each producer count in turn against a started server (one run per producer among its
 * `runIds`): closed-loop `PATCH …/progress`, the server's CPU read over the measured window.
 */
export async function measureIngest(
  server: HttpSystem,
  label: string,
  params: Pick<IngestParams, 'concurrency' | 'warmupMs' | 'durationMs'>,
  problems: string[],
  log: (line: string) => void,
): Promise<IngestStep[]> {
  const steps: IngestStep[] = [];
  for (const producers of params.concurrency) {
    const load = await BenchProcess.start({
      name: 'producers',
      script: script('load/http-load.js'),
      cpu: LOAD_CPU,
    });
    try {
      const spec: OpenArgs['spec'] = {
        kind: 'progress',
        runIds: server.runIds.slice(0, producers),
        ...(server.token ? { token: server.token } : {}),
      };
      await load.request('open', { host: '127.0.0.1', port: server.port, connections: producers, spec });
      await load.request('closedLoop', { durationMs: params.warmupMs }, 120_000);
      const start = cpuMark(server.pid);
      const result = await load.request<LoadResult>('closedLoop', { durationMs: params.durationMs }, 120_000);
      const cpu = cpuBetween(start, cpuMark(server.pid));
      const acknowledged = result.statuses['200'] ?? 0;
      const step: IngestStep = {
        ...result,
        producers,
        acknowledgedPerS: acknowledged / (result.wallMs / 1000),
        serverCpuUtilization: cpu.utilization,
        cpuUsPerUpdate: acknowledged > 0 ? (cpu.cpuS * 1e6) / acknowledged : Number.NaN,
      };
      steps.push(step);
      if (acknowledged !== result.requests || result.errors > 0) {
        problems.push(
          `${label}, ${producers} producers: ${result.requests - acknowledged} answers were not 200 (${JSON.stringify(result.statuses)}), ${result.errors} failed: ${result.errorExamples.join('; ')}`,
        );
      }
      log(
        `  ${label}: ${producers} producers: ${Math.round(step.acknowledgedPerS)} acknowledged updates/s, ` +
          `p99 ${result.latency.p99.toFixed(1)} ms, ${step.cpuUsPerUpdate.toFixed(0)} µs CPU/update, ` +
          `server core ${(cpu.utilization * 100).toFixed(0)}%, load core ${(result.loadCpuUtilization * 100).toFixed(0)}%`,
      );
      await load.request('close');
    } finally {
      await load.stop();
    }
  }
  return steps;
}

interface InProcessResult {
  concurrency: number;
  updatesPerS: number;
  cpuUsPerUpdate: number;
}

/** RunService with the SQLite store in a process of its own: what an update costs below HTTP. */
async function measureInProcess(params: IngestParams, log: (line: string) => void): Promise<InProcessResult> {
  const concurrency = Math.max(...params.concurrency);
  const child = await BenchProcess.start({
    name: 'store-ingest',
    script: script('store-ingest.js'),
    cpu: SERVER_CPU,
  });
  try {
    const { updates, wallMs, cpuUs } = await child.request<{
      updates: number;
      wallMs: number;
      cpuUs: number;
    }>('measure', { concurrency, durationMs: params.durationMs }, 120_000);
    const result = { concurrency, updatesPerS: updates / (wallMs / 1000), cpuUsPerUpdate: cpuUs / updates };
    log(
      `  RunService + SQLite in process, ${concurrency} in flight: ${Math.round(result.updatesPerS)} updates/s, ${result.cpuUsPerUpdate.toFixed(0)} µs CPU/update`,
    );
    return result;
  } finally {
    await child.stop();
  }
}

/**
 * Acknowledged `PATCH …/progress` per second on SQLite, closed-loop producers. Beside it, the
 * bare Fastify route that parses the same body and answers a snapshot: the HTTP floor.
 */
export async function runIngest(params: IngestParams, log: (line: string) => void): Promise<ScenarioResult> {
  const started = Date.now();
  log(`\n## ${params.title}`);
  const problems: string[] = [];
  const measured = new Map<HttpSystemName, IngestStep[]>();
  for (const system of SYSTEMS) measured.set(system, await measure(system, params, problems, log));
  const inProcess = await measureInProcess(params, log);
  const runcast = measured.get('runcast') ?? [];
  const bare = measured.get('bare-fastify') ?? [];
  const rows: Row[] = [];
  const figure = (
    text: string,
    digits: number,
    pick: (step: IngestStep) => number,
    producers: number,
  ): Row => {
    const of = (steps: IngestStep[]) => {
      const step = steps.find((s) => s.producers === producers);
      return step && pick(step);
    };
    return {
      figure: text,
      digits,
      runcast: of(runcast),
      baselines: [{ system: 'bare-fastify', value: of(bare) }],
    };
  };
  for (const producers of params.concurrency) {
    const label = `${producers} producer${producers === 1 ? '' : 's'}`;
    rows.push(figure(`${label}: acknowledged updates/s`, 0, (s) => s.acknowledgedPerS, producers));
    rows.push(figure(`${label}: ack latency p99 (ms)`, 1, (s) => s.latency.p99, producers));
    rows.push(figure(`${label}: server CPU per update (µs)`, 0, (s) => s.cpuUsPerUpdate, producers));
  }
  const best = (steps: IngestStep[]) =>
    steps.length > 0 ? Math.max(...steps.map((s) => s.acknowledgedPerS)) : undefined;
  const runcastBest = best(runcast);
  rows.push({
    figure: 'best acknowledged updates/s',
    digits: 0,
    runcast: runcastBest,
    baselines: [{ system: 'bare-fastify', value: best(bare) }],
    target: {
      text: '≥ 20,000/s',
      holds: runcastBest === undefined ? undefined : runcastBest >= TARGET_PER_S,
    },
  });
  rows.push(
    {
      figure: `below HTTP (RunService + SQLite in process, ${inProcess.concurrency} in flight): updates/s`,
      digits: 0,
      runcast: inProcess.updatesPerS,
      baselines: [],
    },
    {
      figure: 'below HTTP: CPU per update (µs)',
      digits: 0,
      runcast: inProcess.cpuUsPerUpdate,
      baselines: [],
    },
  );
  return {
    id: params.id,
    title: params.title,
    scale: params.scale,
    params: { ...params },
    systems: { runcast, 'bare-fastify': bare, inProcess },
    rows,
    problems,
    durationS: (Date.now() - started) / 1000,
  };
}
