import { BenchProcess, LOAD_CPU, SERVER_CPU } from '../bench-process.js';
import type { SubscriberTarget } from '../load/subscriber-clients.js';
import type { OpenArgs, OpenResult } from '../load/subscribers.js';
import { script } from '../paths.js';
import { baselineRunIds } from '../payload.js';
import { rssBytes } from '../proc-stats.js';
import type { Row, ScenarioResult, SystemName } from '../results.js';
import { RuncastServer } from '../runcast-server.js';
import { sleep } from '../time.js';

export interface IdleParams {
  id: string;
  title: string;
  scale: string;
  /** Connection counts measured one after another on the same server (cumulative). */
  steps: number[];
  settleMs: number;
}

type IdleSystem =
  | 'runcast-websocket'
  | 'runcast-websocket-deflate'
  | 'runcast-sse'
  | 'bare-socketio'
  | 'bare-ws'
  | 'bare-sse';

interface Step {
  connections: number;
  rssBytes: number;
  heapUsedBytes: number;
  rssPerConnectionKB: number;
  heapPerConnectionKB: number;
}

interface IdleMeasurement {
  system: IdleSystem;
  base: { rssBytes: number; heapUsedBytes: number };
  steps: Step[];
  problems: string[];
}

const BROADCASTER: Record<'bare-socketio' | 'bare-ws' | 'bare-sse', string> = {
  'bare-socketio': 'baselines/socketio-broadcaster.js',
  'bare-ws': 'baselines/ws-broadcaster.js',
  'bare-sse': 'baselines/sse-broadcaster.js',
};

async function startServer(system: IdleSystem): Promise<{
  pid: number;
  target: SubscriberTarget;
  runId: string;
  memory(): Promise<NodeJS.MemoryUsage>;
  stop(): Promise<void>;
}> {
  if (system === 'runcast-websocket' || system === 'runcast-websocket-deflate' || system === 'runcast-sse') {
    const deflate = system === 'runcast-websocket-deflate';
    const server = await RuncastServer.start(deflate ? { RUNCAST_WS_COMPRESSION: 'on' } : {});
    const [runId] = await server.createRuns(1);
    return {
      pid: server.pid,
      runId: runId!,
      target: {
        transport: system === 'runcast-sse' ? 'runcast-sse' : 'runcast-socketio',
        host: '127.0.0.1',
        port: server.port,
        token: server.token,
        resume: false,
        socketIoClient: 'lean',
        deflate,
      },
      memory: () => server.memory(),
      stop: () => server.stop(),
    };
  }
  const child = await BenchProcess.start({
    name: system,
    script: script(BROADCASTER[system]),
    nodeArgs: ['--expose-gc'],
    args: ['--port', '0'],
    cpu: SERVER_CPU,
  });
  return {
    pid: child.pid,
    runId: baselineRunIds(1)[0]!,
    target: {
      transport: system,
      host: '127.0.0.1',
      port: (child.readyInfo as { port: number }).port,
      resume: false,
      socketIoClient: 'lean',
    },
    memory: () => child.request<NodeJS.MemoryUsage>('memory'),
    stop: async () => {
      await child.stop();
    },
  };
}

async function measure(
  system: IdleSystem,
  params: IdleParams,
  log: (line: string) => void,
): Promise<IdleMeasurement> {
  const server = await startServer(system);
  let load: BenchProcess | undefined;
  try {
    load = await BenchProcess.start({
      name: 'subscribers',
      script: script('load/subscribers.js'),
      cpu: LOAD_CPU,
    });
    await sleep(params.settleMs);
    const baseHeap = (await server.memory()).heapUsed;
    const base = { rssBytes: rssBytes(server.pid), heapUsedBytes: baseHeap };
    const steps: Step[] = [];
    const problems: string[] = [];
    let open = 0;
    for (const connections of params.steps) {
      const args: OpenArgs = {
        target: server.target,
        runIds: [server.runId],
        perRun: connections - open,
        sampleSize: 0,
        concurrency: 200,
      };
      const opened = await load.request<OpenResult>('open', args, 300_000);
      open = connections;
      if (opened.failed > 0) {
        problems.push(
          `${system}: ${opened.failed} of ${connections} connections failed: ${opened.errors.join('; ')}`,
        );
        break;
      }
      await sleep(params.settleMs);
      const heapUsedBytes = (await server.memory()).heapUsed;
      const rss = rssBytes(server.pid);
      steps.push({
        connections,
        rssBytes: rss,
        heapUsedBytes,
        rssPerConnectionKB: (rss - base.rssBytes) / connections / 1000,
        heapPerConnectionKB: (heapUsedBytes - base.heapUsedBytes) / connections / 1000,
      });
      log(
        `  ${system}: ${connections} idle connections: ${((rss - base.rssBytes) / connections / 1000).toFixed(1)} KB RSS, ` +
          `${((heapUsedBytes - base.heapUsedBytes) / connections / 1000).toFixed(1)} KB heap each`,
      );
    }
    await load.request('close', undefined, 60_000);
    return { system, base, steps, problems };
  } finally {
    await load?.stop();
    await server.stop();
  }
}

/** Memory per idle subscriber connection, per transport, at growing connection counts. */
export async function runIdle(params: IdleParams, log: (line: string) => void): Promise<ScenarioResult> {
  const started = Date.now();
  log(`\n## ${params.title}`);
  const measured = new Map<IdleSystem, IdleMeasurement>();
  const problems: string[] = [];
  const systems: IdleSystem[] = [
    'runcast-websocket',
    'runcast-websocket-deflate',
    'bare-socketio',
    'bare-ws',
    'runcast-sse',
    'bare-sse',
  ];
  for (const system of systems) {
    try {
      const m = await measure(system, params, log);
      measured.set(system, m);
      problems.push(...m.problems);
    } catch (err) {
      problems.push(`${system}: the scenario failed: ${(err as Error).message}`);
      log(`  ${system}: FAILED ${(err as Error).message}`);
    }
  }
  const at = (system: IdleSystem, connections: number) =>
    measured.get(system)?.steps.find((s) => s.connections === connections);
  const rows: Row[] = [];
  const groups: { name: string; runcast: IdleSystem; baselines: (IdleSystem & SystemName)[] }[] = [
    { name: 'WebSocket', runcast: 'runcast-websocket', baselines: ['bare-socketio', 'bare-ws'] },
    {
      name: 'WebSocket with permessage-deflate',
      runcast: 'runcast-websocket-deflate',
      baselines: ['bare-socketio', 'bare-ws'],
    },
    { name: 'SSE', runcast: 'runcast-sse', baselines: ['bare-sse'] },
  ];
  for (const group of groups) {
    for (const connections of params.steps) {
      const label = connections >= 1000 ? `${connections / 1000}k` : String(connections);
      const rss = at(group.runcast, connections)?.rssPerConnectionKB;
      rows.push({
        figure: `${group.name}: RSS per idle connection at ${label} (KB)`,
        digits: 1,
        runcast: rss,
        baselines: group.baselines.map((system) => ({
          system,
          value: at(system, connections)?.rssPerConnectionKB,
        })),
        target: { text: '≤ 15 KB', holds: rss === undefined ? undefined : rss <= 15 },
      });
      rows.push({
        figure: `${group.name}: heap per idle connection at ${label} (KB)`,
        digits: 1,
        runcast: at(group.runcast, connections)?.heapPerConnectionKB,
        baselines: group.baselines.map((system) => ({
          system,
          value: at(system, connections)?.heapPerConnectionKB,
        })),
      });
    }
  }
  return {
    id: params.id,
    title: params.title,
    scale: params.scale,
    params: { ...params },
    systems: Object.fromEntries(measured),
    rows,
    problems,
    durationS: (Date.now() - started) / 1000,
  };
}
