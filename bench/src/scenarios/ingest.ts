import { BenchProcess, LOAD_CPU } from '../bench-process.js';
import type { LoadResult, OpenArgs } from '../load/http-load.js';
import { script } from '../paths.js';
import { cpuBetween, cpuMark } from '../proc-stats.js';
import type { Row, ScenarioResult } from '../results.js';
import { RuncastServer } from '../runcast-server.js';

export interface IngestParams {
  id: string;
  title: string;
  scale: string;
  /** Concurrent producers (one connection and one run each), measured one after another. */
  concurrency: number[];
  warmupMs: number;
  durationMs: number;
}

interface IngestStep extends LoadResult {
  producers: number;
  acknowledgedPerS: number;
  serverCpuUtilization: number;
  cpuUsPerUpdate: number;
}

const TARGET_PER_S = 20_000;

/** Acknowledged `PATCH …/progress` per second on SQLite: closed-loop producers, no baseline. */
export async function runIngest(params: IngestParams, log: (line: string) => void): Promise<ScenarioResult> {
  const started = Date.now();
  log(`\n## ${params.title}`);
  const problems: string[] = [];
  const steps: IngestStep[] = [];
  const server = await RuncastServer.start();
  try {
    const runIds = await server.createRuns(Math.max(...params.concurrency));
    for (const producers of params.concurrency) {
      const load = await BenchProcess.start({
        name: 'producers',
        script: script('load/http-load.js'),
        cpu: LOAD_CPU,
      });
      try {
        const spec: OpenArgs['spec'] = {
          kind: 'progress',
          runIds: runIds.slice(0, producers),
          token: server.token,
        };
        await load.request('open', { host: '127.0.0.1', port: server.port, connections: producers, spec });
        await load.request('closedLoop', { durationMs: params.warmupMs }, 120_000);
        const start = cpuMark(server.pid);
        const result = await load.request<LoadResult>(
          'closedLoop',
          { durationMs: params.durationMs },
          120_000,
        );
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
            `${producers} producers: ${result.requests - acknowledged} answers were not 200 (${JSON.stringify(result.statuses)}), ${result.errors} failed: ${result.errorExamples.join('; ')}`,
          );
        }
        log(
          `  ${producers} producers: ${Math.round(step.acknowledgedPerS)} acknowledged updates/s, ` +
            `p99 ${result.latency.p99.toFixed(1)} ms, ${step.cpuUsPerUpdate.toFixed(0)} µs CPU/update, ` +
            `server core ${(cpu.utilization * 100).toFixed(0)}%, load core ${(result.loadCpuUtilization * 100).toFixed(0)}%`,
        );
        await load.request('close');
      } finally {
        await load.stop();
      }
    }
    problems.push(...server.errorLines.slice(0, 5).map((line) => `server logged an error: ${line}`));
  } finally {
    await server.stop();
  }
  const rows: Row[] = [];
  for (const step of steps) {
    const producers = `${step.producers} producer${step.producers === 1 ? '' : 's'}`;
    rows.push({
      figure: `${producers}: acknowledged updates/s`,
      digits: 0,
      runcast: step.acknowledgedPerS,
      baselines: [],
    });
    rows.push({
      figure: `${producers}: ack latency p99 (ms)`,
      digits: 1,
      runcast: step.latency.p99,
      baselines: [],
    });
    rows.push({
      figure: `${producers}: server CPU per update (µs)`,
      digits: 0,
      runcast: step.cpuUsPerUpdate,
      baselines: [],
    });
  }
  const best = steps.length > 0 ? Math.max(...steps.map((s) => s.acknowledgedPerS)) : undefined;
  rows.push({
    figure: 'best acknowledged updates/s',
    digits: 0,
    runcast: best,
    baselines: [],
    target: { text: '≥ 20,000/s', holds: best === undefined ? undefined : best >= TARGET_PER_S },
  });
  return {
    id: params.id,
    title: params.title,
    scale: params.scale,
    params: { ...params },
    systems: { runcast: steps },
    rows,
    problems,
    durationS: (Date.now() - started) / 1000,
  };
}
