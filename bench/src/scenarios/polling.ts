import { BenchProcess, LOAD_CPU } from '../bench-process.js';
import type { LoadResult, OpenArgs } from '../load/http-load.js';
import { script } from '../paths.js';
import { cpuBetween, cpuMark } from '../proc-stats.js';
import type { Row, ScenarioResult } from '../results.js';
import { type HttpSystemName, startHttpSystem } from './http-systems.js';

export interface PollingParams {
  id: string;
  title: string;
  scale: string;
  pollers: number;
  ratePerPoller: number;
  warmupMs: number;
  pacedMs: number;
  /** Connections of the maximum-rate run, each sending its next request on the answer. */
  maxConnections: number;
  maxMs: number;
}

interface PhaseResult extends LoadResult {
  serverCpuS: number;
  serverCpuUtilization: number;
  cpuUsPerRequest: number;
}

interface PollingMeasurement {
  system: HttpSystemName;
  paced: PhaseResult;
  max: PhaseResult;
  problems: string[];
}

async function phase(load: BenchProcess, pid: number, cmd: string, args: unknown): Promise<PhaseResult> {
  const start = cpuMark(pid);
  const result = await load.request<LoadResult>(cmd, args, 300_000);
  const cpu = cpuBetween(start, cpuMark(pid));
  return {
    ...result,
    serverCpuS: cpu.cpuS,
    serverCpuUtilization: cpu.utilization,
    cpuUsPerRequest: result.requests > 0 ? (cpu.cpuS * 1e6) / result.requests : Number.NaN,
  };
}

async function measure(
  system: HttpSystemName,
  params: PollingParams,
  log: (line: string) => void,
): Promise<PollingMeasurement> {
  const server = await startHttpSystem(system, 1);
  let load: BenchProcess | undefined;
  try {
    load = await BenchProcess.start({ name: 'pollers', script: script('load/http-load.js'), cpu: LOAD_CPU });
    const spec: OpenArgs['spec'] = {
      kind: 'poll',
      runIds: server.runIds,
      etag: '"1"',
      ...(server.token ? { token: server.token } : {}),
    };
    await load.request(
      'open',
      { host: '127.0.0.1', port: server.port, connections: params.pollers, spec },
      120_000,
    );
    await load.request(
      'paced',
      { ratePerConnection: params.ratePerPoller, durationMs: params.warmupMs },
      120_000,
    );
    const paced = await phase(load, server.pid, 'paced', {
      ratePerConnection: params.ratePerPoller,
      durationMs: params.pacedMs,
    });
    await load.request('close');
    await load.request('open', {
      host: '127.0.0.1',
      port: server.port,
      connections: params.maxConnections,
      spec,
    });
    await load.request('closedLoop', { durationMs: params.warmupMs }, 120_000);
    const max = await phase(load, server.pid, 'closedLoop', { durationMs: params.maxMs });
    await load.request('close');
    const problems = server.problems();
    for (const [name, result] of [
      ['paced', paced],
      ['max rate', max],
    ] as const) {
      const other = Object.entries(result.statuses).filter(([status]) => status !== '304');
      if (other.length > 0)
        problems.push(`${name}: answers other than 304: ${JSON.stringify(result.statuses)}`);
      if (result.errors > 0)
        problems.push(`${name}: ${result.errors} failed requests: ${result.errorExamples.join('; ')}`);
    }
    log(
      `  ${system}: ${params.pollers} pollers ${Math.round(paced.requestsPerS)} req/s, ${paced.cpuUsPerRequest.toFixed(1)} µs CPU/req, ` +
        `p99 ${paced.latency.p99.toFixed(1)} ms; max rate ${Math.round(max.requestsPerS)} req/s, ${max.cpuUsPerRequest.toFixed(1)} µs CPU/req, ` +
        `server core ${(max.serverCpuUtilization * 100).toFixed(0)}%, load core ${(max.loadCpuUtilization * 100).toFixed(0)}%`,
    );
    return { system, paced, max, problems: problems.map((p) => `${system}: ${p}`) };
  } finally {
    await load?.stop();
    await server.stop();
  }
}

/** Conditional polling at a fixed rate from many pollers, then at the maximum rate. */
export async function runPolling(
  params: PollingParams,
  log: (line: string) => void,
): Promise<ScenarioResult> {
  const started = Date.now();
  log(`\n## ${params.title}`);
  const measured: PollingMeasurement[] = [];
  const problems: string[] = [];
  for (const system of ['runcast', 'bare-fastify'] as HttpSystemName[]) {
    try {
      measured.push(await measure(system, params, log));
    } catch (err) {
      problems.push(`${system}: the scenario failed: ${(err as Error).message}`);
      log(`  ${system}: FAILED ${(err as Error).message}`);
    }
  }
  const runcast = measured.find((m) => m.system === 'runcast');
  const baselines = measured.filter((m) => m.system !== 'runcast');
  const row = (figure: string, digits: number, pick: (m: PollingMeasurement) => number): Row => ({
    figure,
    digits,
    runcast: runcast ? pick(runcast) : undefined,
    baselines: baselines.map((m) => ({ system: m.system, value: pick(m) })),
  });
  const maxRow = row('max rate: requests/s', 0, (m) => m.max.requestsPerS);
  const bare = baselines[0];
  const ratio = runcast && bare ? runcast.max.requestsPerS / bare.max.requestsPerS : undefined;
  maxRow.target = { text: '≥ 0.9× bare Fastify 304', holds: ratio === undefined ? undefined : ratio >= 0.9 };
  const rows: Row[] = [
    row(
      `${params.pollers} pollers at ${params.ratePerPoller}/s: answered requests/s`,
      0,
      (m) => m.paced.requestsPerS,
    ),
    row(`${params.pollers} pollers: server CPU per request (µs)`, 1, (m) => m.paced.cpuUsPerRequest),
    row(`${params.pollers} pollers: server core busy (%)`, 0, (m) => m.paced.serverCpuUtilization * 100),
    row(`${params.pollers} pollers: latency p50 (ms)`, 1, (m) => m.paced.latency.p50),
    row(`${params.pollers} pollers: latency p99 (ms)`, 1, (m) => m.paced.latency.p99),
    maxRow,
    row('max rate: server CPU per request (µs)', 1, (m) => m.max.cpuUsPerRequest),
    row('max rate: server core busy (%)', 0, (m) => m.max.serverCpuUtilization * 100),
    row('max rate: load core busy (%)', 0, (m) => m.max.loadCpuUtilization * 100),
    row('max rate: latency p99 (ms)', 1, (m) => m.max.latency.p99),
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
