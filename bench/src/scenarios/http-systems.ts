import { BenchProcess, SERVER_CPU } from '../bench-process.js';
import { script } from '../paths.js';
import { baselineRunIds, progressUpdate } from '../payload.js';
import type { SystemName } from '../results.js';
import { RuncastServer } from '../runcast-server.js';

/** A server the HTTP scenarios (polling, ingest) send requests to. */
export interface HttpSystem {
  pid: number;
  port: number;
  token: string | undefined;
  /** Runs at seq 1 (a RUNNING update each). */
  runIds: string[];
  problems(): string[];
  stop(): Promise<void>;
}

/** The systems that answer Runcast's HTTP progress routes. */
export type HttpSystemName = Extract<SystemName, 'runcast' | 'bare-fastify'>;

/** A started Runcast server with `runs` new runs at seq 1; `stop` stops the server. */
export async function runcastHttpSystem(server: RuncastServer, runs: number): Promise<HttpSystem> {
  const runIds = await server.createRuns(runs);
  for (const runId of runIds)
    await server.api('PATCH', `/runs/${runId}/progress`, progressUpdate(Date.now(), 1));
  return {
    pid: server.pid,
    port: server.port,
    token: server.token,
    runIds,
    problems: () => [
      ...server.errorLines.slice(0, 5).map((line) => `server logged an error: ${line}`),
      ...(server.process.isRunning ? [] : [`the Runcast server exited\n${server.process.tail(20)}`]),
    ],
    stop: () => server.stop(),
  };
}

/** Runcast with `runs` runs, or the bare Fastify routes, on the server CPU. */
export async function startHttpSystem(system: HttpSystemName, runs: number): Promise<HttpSystem> {
  if (system === 'runcast') return runcastHttpSystem(await RuncastServer.start(), runs);
  const child = await BenchProcess.start({
    name: system,
    script: script('baselines/fastify.js'),
    nodeArgs: ['--expose-gc'],
    args: ['--port', '0'],
    cpu: SERVER_CPU,
  });
  return {
    pid: child.pid,
    port: (child.readyInfo as { port: number }).port,
    token: undefined,
    runIds: baselineRunIds(runs),
    problems: () => (child.isRunning ? [] : [`${system} exited\n${child.tail(20)}`]),
    stop: async () => {
      await child.stop();
    },
  };
}
