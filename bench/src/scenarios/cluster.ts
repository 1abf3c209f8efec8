import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import pg from 'pg';
import { BenchProcess, LOAD_CPU } from '../bench-process.js';
import { type BenchHaproxy, startHaproxy } from '../haproxy.js';
import type { ProducerFinishResult, ProducerStartArgs } from '../load/producer.js';
import type { SubscriberTarget } from '../load/subscriber-clients.js';
import type { OpenArgs, OpenResult, ProbeResult, VerifyResult } from '../load/subscribers.js';
import type { WindowReport } from '../load/tracker.js';
import { scratchDir, script } from '../paths.js';
import { type Percentiles, percentiles } from '../percentiles.js';
import { type BenchPostgres, startPostgres } from '../postgres.js';
import { cpuSeconds } from '../proc-stats.js';
import type { Row, ScenarioResult } from '../results.js';
import { RuncastServer } from '../runcast-server.js';
import { sleep } from '../time.js';
import { runcastHttpSystem } from './http-systems.js';
import { type IngestStep, measureIngest } from './ingest.js';

/** The cluster scenario of DESIGN §7: three nodes on PostgreSQL beside one node on SQLite. */
export interface ClusterParams {
  id: string;
  title: string;
  scale: string;
  /** Runs the producer writes to; each has one subscriber per audience. */
  runs: number;
  updatesPerSPerRun: number;
  logsPerSPerRun: number;
  producerConnections: number;
  warmupMs: number;
  measureMs: number;
  /**
   * Delivery windows of each topology, taken in turn (one node, three nodes, one node, …): the
   * CPU figures are their mean, so that neither topology alone meets a busy moment of the machine.
   */
  deliveryRounds: number;
  /** `kill -9` of a node behind HAProxy, B and C in turn (A takes the producer's requests). */
  failoverCycles: number;
  /** SIGSTOP of node C's LISTEN backend, then SIGCONT. */
  listenerCycles: number;
  /** `kill -9` of the node executing a git-mirror run, until another node takes the run over. */
  ownerCycles: number;
  /** Concurrent closed-loop producers of the ingest comparison. */
  ingestProducers: number;
  ingestWarmupMs: number;
  ingestMs: number;
  /** The CPU the cluster's processes are pinned to; undefined: any (they share the load's). */
  clusterCpu: number | undefined;
}

/**
 * 2,000 events/s over 200 runs with one WebSocket and one SSE subscriber each: what three nodes,
 * PostgreSQL and HAProxy sharing one core of a 2-CPU machine carry. Quick: 200 events/s, one
 * fault of each kind.
 */
export function clusterParams(quick: boolean): ClusterParams {
  return {
    id: 'cluster',
    title: quick
      ? 'Cluster: 3 nodes + PostgreSQL, 200 events/s'
      : 'Cluster: 3 nodes + PostgreSQL beside one SQLite node, 2,000 events/s',
    scale: quick
      ? 'quick mode: 20 runs, one fault of each kind; correctness only'
      : '200 WebSocket + 200 SSE subscribers (one of each per run): what fits a 2-CPU machine shared by 3 nodes, PostgreSQL, HAProxy and the load',
    runs: quick ? 20 : 200,
    updatesPerSPerRun: 8,
    logsPerSPerRun: 2,
    // One connection per run, as one producer per migration would have: a PostgreSQL commit
    // takes milliseconds, and 32 connections in all capped the cluster near 1,340 events/s.
    producerConnections: quick ? 20 : 200,
    warmupMs: quick ? 1000 : 3000,
    measureMs: quick ? 2000 : 15_000,
    deliveryRounds: quick ? 1 : 3,
    failoverCycles: quick ? 1 : 4,
    listenerCycles: quick ? 1 : 3,
    ownerCycles: quick ? 1 : 3,
    ingestProducers: 64,
    ingestWarmupMs: quick ? 300 : 1000,
    ingestMs: quick ? 1000 : 8000,
    // Pinned to one core the cluster did not carry 2,000 events/s (its core 91% busy at 1,340).
    clusterCpu: undefined,
  };
}

/** Subscribers of one transport on one address, in a load process of their own. */
interface Audience {
  name: string;
  target: SubscriberTarget;
}

/** What one delivery phase measured: a window of steady load, then the subscribers' verdict. */
interface Delivery {
  offeredEventsPerS: number;
  open: Record<string, OpenResult>;
  windows: Record<string, WindowReport>;
  /** Server-side processes' CPU seconds over the window, by name. */
  cpuS: Record<string, number>;
  windowS: number;
  producer: ProducerFinishResult;
  verify: Record<string, VerifyResult>;
}

const SECRET = 'bench-cluster-signing-key-0123456789abcdef';
const NODE_NAMES = ['A', 'B', 'C'];
const PROBE_TIMEOUT_MS = 20_000;
// deploy/haproxy.cfg's `check` keeps HAProxy's defaults: a check every 2 s, up after 2 passes.
const HAPROXY_RISE_MS = 4500;
const DETECT_TARGET_S = 5;
/**
 * The nodes' run lease (`RUNCAST_RUN_LEASE_MS`), short so that an owner's failover is measured in
 * seconds; the target is the lease and 1 s.
 */
const LEASE_MS = 2000;
const OWNER_TARGET_MS = LEASE_MS + 1000;
const P99_TARGET_MS = 50;
const CPU_TARGET_RATIO = 1.2;

/** A node's settings: the cluster's, and its own id (the owner of the runs it executes). */
function nodeEnv(env: Record<string, string>, name: string): Record<string, string> {
  return { ...env, RUNCAST_NODE_ID: `node-${name}` };
}

/** Three Runcast nodes on one PostgreSQL, the same RUNCAST_SECRET, HAProxy round-robin in front. */
class Cluster {
  private constructor(
    readonly postgres: BenchPostgres,
    readonly nodes: RuncastServer[],
    readonly haproxy: BenchHaproxy,
    private readonly env: Record<string, string>,
    private readonly cpu: number | undefined,
  ) {}

  static async start(cpu: number | undefined): Promise<Cluster> {
    const postgres = await startPostgres(cpu);
    const env = {
      RUNCAST_DATABASE_URL: postgres.url,
      RUNCAST_SECRET: SECRET,
      RUNCAST_TRUST_PROXY: 'loopback',
      RUNCAST_RUN_LEASE_MS: String(LEASE_MS),
    };
    const nodes: RuncastServer[] = [];
    try {
      // Started together, as an operator would: the migrations and the bootstrap admin race.
      const started = await Promise.allSettled(
        NODE_NAMES.map((name) => RuncastServer.start(nodeEnv(env, name), { cpu: cpu ?? null })),
      );
      for (const result of started) if (result.status === 'fulfilled') nodes.push(result.value);
      const failed = started.find((result) => result.status === 'rejected');
      if (failed) throw failed.reason;
      const haproxy = await startHaproxy(
        join(scratchDir(), 'haproxy'),
        nodes.map((node) => `127.0.0.1:${node.port}`),
        cpu,
      );
      return new Cluster(postgres, nodes, haproxy, env, cpu);
    } catch (err) {
      for (const node of nodes) await node.stop();
      await postgres.stop();
      throw err;
    }
  }

  /** `kill -9` of node `index`; resolves once it is gone. */
  async kill(index: number): Promise<void> {
    const node = this.nodes[index]!;
    process.kill(node.pid, 'SIGKILL');
    await node.stop();
  }

  /** Starts node `index` again on its port (HAProxy's server line stays valid). */
  async restart(index: number): Promise<void> {
    const old = this.nodes[index]!;
    this.nodes[index] = await RuncastServer.start(nodeEnv(this.env, NODE_NAMES[index]!), {
      port: old.port,
      cpu: this.cpu ?? null,
    });
  }

  problems(): string[] {
    return this.nodes.flatMap((node, i) => [
      ...node.errorLines.slice(0, 5).map((line) => `node ${NODE_NAMES[i]} logged an error: ${line}`),
      ...(node.process.isRunning ? [] : [`node ${NODE_NAMES[i]} exited\n${node.process.tail(20)}`]),
    ]);
  }

  async stop(): Promise<void> {
    await this.haproxy.stop();
    for (const node of this.nodes) await node.stop();
    await this.postgres.stop();
  }
}

/**
 * Open-loop load on `producerNode` (updates and log lines over `params.runs` new runs), each
 * audience subscribed to every run; a window of `measureMs` reads the subscribers' latencies and
 * the `cpu` processes' CPU; `during` then injects faults under the same load; at the end every
 * subscriber must have every log line once and the terminal update.
 */
async function deliver(
  producerNode: RuncastServer,
  audiences: Audience[],
  cpu: Record<string, () => number>,
  params: ClusterParams,
  problems: string[],
  during?: (loads: Map<string, BenchProcess>) => Promise<void>,
): Promise<Delivery> {
  const runIds = await producerNode.createRuns(params.runs);
  const loads = new Map<string, BenchProcess>();
  let producer: BenchProcess | undefined;
  try {
    const open: Delivery['open'] = {};
    for (const audience of audiences) {
      const load = await BenchProcess.start({
        name: `subscribers ${audience.name}`,
        script: script('load/subscribers.js'),
        cpu: LOAD_CPU,
      });
      loads.set(audience.name, load);
      // Every subscriber measures: a few hundred fit on the load core with their JSON parsed.
      const args: OpenArgs = {
        target: audience.target,
        runIds,
        perRun: 1,
        sampleSize: runIds.length,
        concurrency: 50,
      };
      open[audience.name] = await load.request<OpenResult>('open', args, 120_000);
      const opened = open[audience.name]!;
      if (opened.failed > 0)
        problems.push(
          `${audience.name}: ${opened.failed} subscribers failed to open: ${opened.errors.join('; ')}`,
        );
    }
    producer = await BenchProcess.start({
      name: 'producer',
      script: script('load/producer.js'),
      cpu: LOAD_CPU,
    });
    const start: ProducerStartArgs = {
      host: '127.0.0.1',
      port: producerNode.port,
      token: producerNode.token,
      runIds,
      updatesPerSPerRun: params.updatesPerSPerRun,
      logsPerSPerRun: params.logsPerSPerRun,
      connections: params.producerConnections,
    };
    await producer.request('start', start, 60_000);
    await sleep(params.warmupMs);
    for (const load of loads.values()) await load.request('reset');
    const read = () => Object.fromEntries(Object.entries(cpu).map(([name, seconds]) => [name, seconds()]));
    const before = read();
    const startedMs = Date.now();
    await sleep(params.measureMs);
    const after = read();
    const windowS = (Date.now() - startedMs) / 1000;
    const windows: Delivery['windows'] = {};
    for (const [name, load] of loads) windows[name] = await load.request<WindowReport>('window');
    await during?.(loads);
    const finished = await producer.request<ProducerFinishResult>('finish', { waitMs: 30_000 }, 120_000);
    if (finished.errors > 0)
      problems.push(`producer: ${finished.errors} failed requests: ${finished.errorExamples.join('; ')}`);
    const verify: Delivery['verify'] = {};
    for (const [name, load] of loads) {
      const result = await load.request<VerifyResult>(
        'verify',
        { runs: finished.runs, waitMs: 30_000 },
        60_000,
      );
      verify[name] = result;
      if (result.lostLogs > 0) problems.push(`${name}: ${result.lostLogs} log events lost`);
      if (result.duplicateLogs > 0)
        problems.push(`${name}: ${result.duplicateLogs} log events delivered twice`);
      if (result.staleUpdates > 0) problems.push(`${name}: ${result.staleUpdates} updates out of seq order`);
      if (result.notTerminal > 0) {
        problems.push(
          `${name}: ${result.notTerminal} subscribers did not end on the terminal update: ${result.examples.join('; ')}`,
        );
      }
      await load.request('close', undefined, 30_000);
    }
    return {
      offeredEventsPerS: params.runs * (params.updatesPerSPerRun + params.logsPerSPerRun),
      open,
      windows,
      cpuS: Object.fromEntries(Object.keys(cpu).map((name) => [name, after[name]! - before[name]!])),
      windowS,
      producer: finished,
      verify,
    };
  } finally {
    await producer?.stop();
    for (const load of loads.values()) await load.stop();
  }
}

/** Sets a probe at a moment just ahead, runs `fault` at that moment, and waits for every subscriber. */
async function probeFault(load: BenchProcess, fault: () => void): Promise<ProbeResult> {
  const sinceMs = Date.now() + 20;
  await load.request('probe', { sinceMs });
  await sleep(Math.max(0, sinceMs - Date.now()));
  fault();
  const deadline = Date.now() + PROBE_TIMEOUT_MS;
  for (;;) {
    const result = await load.request<ProbeResult>('probed');
    if (result.waiting === 0 || Date.now() > deadline) return result;
    await sleep(50);
  }
}

function audiencesOn(ws: RuncastServer, sse: RuncastServer): Audience[] {
  const target = (server: RuncastServer, transport: SubscriberTarget['transport']): SubscriberTarget => ({
    transport,
    host: '127.0.0.1',
    port: server.port,
    token: server.token,
    resume: true,
    socketIoClient: 'lean',
  });
  return [
    { name: 'websocket', target: target(ws, 'runcast-socketio') },
    { name: 'sse', target: target(sse, 'runcast-sse') },
  ];
}

/** Delivered events over the window, every audience together. */
function delivered(delivery: Delivery): number {
  return Object.values(delivery.windows).reduce((sum, window) => sum + window.events, 0);
}

function cpuUsPerEvent(delivery: Delivery, names: string[]): number {
  const cpuS = names.reduce((sum, name) => sum + (delivery.cpuS[name] ?? 0), 0);
  const events = delivered(delivery);
  return events > 0 ? (cpuS * 1e6) / events : Number.NaN;
}

function describe(delivery: Delivery): string {
  const events = Math.round(delivered(delivery) / delivery.windowS);
  const latency = Object.entries(delivery.windows)
    .map(
      ([name, w]) =>
        `${name} p50 ${w.commitLatency.p50.toFixed(1)} / p99 ${w.commitLatency.p99.toFixed(1)} ms`,
    )
    .join(', ');
  const cores = Object.entries(delivery.cpuS)
    .map(([name, s]) => `${name} ${Math.round((100 * s) / delivery.windowS)}%`)
    .join(', ');
  return `${events} events/s delivered; commit-to-delivery ${latency}; CPU ${cores}`;
}

/** The ingest scenario's measurement on `server`: closed-loop producers, one run each. */
async function ingestOn(
  server: RuncastServer,
  label: string,
  params: ClusterParams,
  problems: string[],
  log: (line: string) => void,
): Promise<IngestStep[]> {
  const system = await runcastHttpSystem(server, params.ingestProducers);
  const timing = { warmupMs: params.ingestWarmupMs, durationMs: params.ingestMs };
  return measureIngest(system, label, { concurrency: [params.ingestProducers], ...timing }, problems, log);
}

interface SingleNode {
  /** One delivery window per round. */
  deliveries: Delivery[];
  ingest: IngestStep[];
}

interface ListenerCycle {
  /** From SIGSTOP to node C's first delivery of an event committed (on node A) after it. */
  detectedMs: number | undefined;
  /** Until every subscriber on node C had such an event. */
  allCaughtUpMs: number | undefined;
  waiting: number;
}

interface FailoverCycle {
  node: string;
  /** Subscribers that were on the killed node (they reconnected through HAProxy). */
  moved: number;
  movedDelaysMs: number[];
  othersP99Ms: number;
  waiting: number;
}

interface ClusterRun {
  /** One delivery window per round. */
  deliveries: Delivery[];
  owners: OwnerCycle[];
  listener: ListenerCycle[];
  failoverDelivery: Delivery;
  failover: FailoverCycle[];
  ingest: IngestStep[];
}

/** The CPU each of the cluster's processes used so far, by name. */
function clusterCpu(cluster: Cluster): Record<string, () => number> {
  const nodeCpu = (index: number) => () => cpuSeconds(cluster.nodes[index]!.pid);
  return {
    'node A': nodeCpu(0),
    'node B': nodeCpu(1),
    'node C': nodeCpu(2),
    PostgreSQL: () => cluster.postgres.cpuSeconds(),
  };
}

/**
 * A delivery window across the nodes: producer on A, WebSocket subscribers on B and SSE
 * subscribers on C, so that every event crosses the bus; then, when `listener` is given, node C's
 * bus listener is frozen `listenerCycles` times under the same load.
 */
async function deliverAcross(
  cluster: Cluster,
  params: ClusterParams,
  problems: string[],
  log: (line: string) => void,
  listener: ListenerCycle[] | undefined,
): Promise<Delivery> {
  const [a, b, c] = cluster.nodes as [RuncastServer, RuncastServer, RuncastServer];
  return deliver(a, audiencesOn(b, c), clusterCpu(cluster), params, problems, async (loads) => {
    if (!listener) return;
    const onC = loads.get('sse')!;
    for (let cycle = 0; cycle < params.listenerCycles; cycle++) {
      const backend = await cluster.postgres.listenerBackend(cluster.nodes[2]!.pid);
      let result: ProbeResult;
      try {
        result = await probeFault(onC, () => process.kill(backend, 'SIGSTOP'));
      } finally {
        process.kill(backend, 'SIGCONT');
      }
      const delays = result.otherDelaysMs;
      const entry: ListenerCycle = {
        detectedMs: delays.length > 0 ? Math.min(...delays) : undefined,
        allCaughtUpMs: result.waiting === 0 && delays.length > 0 ? Math.max(...delays) : undefined,
        waiting: result.waiting,
      };
      listener.push(entry);
      if (result.waiting > 0)
        problems.push(
          `dead listener: ${result.waiting} subscribers on node C got nothing in ${PROBE_TIMEOUT_MS} ms`,
        );
      log(
        `  dead listener on node C (backend ${backend} stopped): first delivery after ${entry.detectedMs?.toFixed(0)} ms, all ${delays.length} subscribers after ${entry.allCaughtUpMs?.toFixed(0)} ms`,
      );
      await sleep(1000);
    }
  });
}

/** Subscribers through HAProxy while nodes B and C are killed in turn; then the ingest on node A. */
async function failoverAndIngest(
  cluster: Cluster,
  params: ClusterParams,
  problems: string[],
  log: (line: string) => void,
): Promise<Pick<ClusterRun, 'failoverDelivery' | 'failover' | 'ingest'>> {
  const a = cluster.nodes[0]!;
  const failover: FailoverCycle[] = [];
  const throughBalancer: Audience = {
    name: 'websocket via HAProxy',
    target: {
      transport: 'runcast-socketio',
      host: '127.0.0.1',
      port: cluster.haproxy.port,
      token: a.token,
      resume: true,
      socketIoClient: 'lean',
    },
  };
  const cpu = clusterCpu(cluster);
  const failoverDelivery = await deliver(a, [throughBalancer], cpu, params, problems, async (loads) => {
    const load = loads.get(throughBalancer.name)!;
    for (let cycle = 0; cycle < params.failoverCycles; cycle++) {
      const victim = 1 + (cycle % 2);
      let killed: Promise<void> | undefined;
      const result = await probeFault(load, () => {
        killed = cluster.kill(victim);
      });
      await killed;
      const entry: FailoverCycle = {
        node: NODE_NAMES[victim]!,
        moved: result.reconnected,
        movedDelaysMs: result.reconnectedDelaysMs,
        othersP99Ms: percentiles([...result.otherDelaysMs]).p99,
        waiting: result.waiting,
      };
      failover.push(entry);
      if (result.waiting > 0)
        problems.push(`failover: ${result.waiting} subscribers got nothing in ${PROBE_TIMEOUT_MS} ms`);
      const moved = percentiles([...result.reconnectedDelaysMs]);
      log(
        `  kill -9 of node ${entry.node}: ${entry.moved} subscribers moved, next event after p50 ${moved.p50.toFixed(0)} / max ${moved.max.toFixed(0)} ms`,
      );
      await cluster.restart(victim);
      if (cycle + 1 < params.failoverCycles) await sleep(HAPROXY_RISE_MS);
    }
  });
  log(`  through HAProxy: ${describe(failoverDelivery)}`);
  const ingest = await ingestOn(cluster.nodes[0]!, 'node A on PostgreSQL', params, problems, log);
  return { failoverDelivery, failover, ingest };
}

interface OwnerCycle {
  node: string;
  /** From `kill -9` of the run's owner to the run ended INTERRUPTED by another node. */
  takeoverMs: number | undefined;
}

/** Processes whose command line holds `text` (the git a node started in its data dir). */
function processesMentioning(text: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(text)) pids.push(Number(entry));
    } catch {
      // ended meanwhile
    }
  }
  return pids;
}

/**
 * Run ownership failover: a git-mirror run whose source never answers (a loopback server that
 * accepts and stays silent) stays RUNNING on the node that claimed it; that node is killed with
 * SIGKILL (and its git with it, as a supervisor ending its cgroup would), and the figure runs
 * until another node, its lease over, has claimed the run and ended it FAILED/INTERRUPTED. The
 * killed node is restarted on its port.
 */
async function ownerFailover(
  cluster: Cluster,
  params: ClusterParams,
  problems: string[],
  log: (line: string) => void,
): Promise<OwnerCycle[]> {
  const held = new Set<Socket>();
  const silent = createServer((socket) => {
    held.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => held.delete(socket));
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const port = (silent.address() as { port: number }).port;
  const db = new pg.Client({ connectionString: cluster.postgres.url });
  await db.connect();
  const row = async (runId: string) =>
    (
      await db.query<{ owner: string | null; status: string; stage: string | null; error: string | null }>(
        'SELECT owner, status, stage, error FROM runs WHERE run_id = $1',
        [runId],
      )
    ).rows[0];
  const cycles: OwnerCycle[] = [];
  try {
    const project = await cluster.nodes[0]!.api<{ project_id: string }>('POST', '/projects', {
      name: 'owner failover',
    });
    for (let cycle = 0; cycle < params.ownerCycles; cycle++) {
      // Node A may be the one restarted last: asked through its current process.
      const run = await cluster.nodes[0]!.api<{ run_id: string }>('POST', '/runs', {
        project_id: project.project_id,
        kind: 'git-mirror',
        config: {
          repositories: [
            { source: `git://127.0.0.1:${port}/silent.git`, target: `git://127.0.0.1:${port}/target.git` },
          ],
        },
      });
      let owner = -1;
      let seen: Awaited<ReturnType<typeof row>>;
      for (const deadline = Date.now() + 20_000; owner < 0 && Date.now() < deadline; await sleep(50)) {
        seen = await row(run.run_id);
        const stored = seen;
        if (stored?.status === 'RUNNING' && stored.owner) {
          owner = NODE_NAMES.findIndex((name) => stored.owner === `node-${name}`);
        }
      }
      if (owner < 0) {
        problems.push(
          `owner failover: run ${run.run_id} was not executed by a node within 20 s (${JSON.stringify(seen)})`,
        );
        break;
      }
      const victim = cluster.nodes[owner]!;
      const killedAt = Date.now();
      await cluster.kill(owner);
      for (const pid of processesMentioning(`${victim.dataDir}/`)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone already
        }
      }
      let takeoverMs: number | undefined;
      for (const deadline = killedAt + OWNER_TARGET_MS + 15_000; Date.now() < deadline; await sleep(20)) {
        const stored = await row(run.run_id);
        if (stored && stored.status !== 'RUNNING') {
          takeoverMs = Date.now() - killedAt;
          if (stored.status !== 'FAILED' || !stored.error?.includes('INTERRUPTED')) {
            problems.push(
              `owner failover: run ${run.run_id} ended ${stored.status} (${stored.error}), not INTERRUPTED`,
            );
          }
          break;
        }
      }
      if (takeoverMs === undefined) problems.push(`owner failover: run ${run.run_id} was never taken over`);
      cycles.push({ node: NODE_NAMES[owner]!, takeoverMs });
      log(
        `  kill -9 of node ${NODE_NAMES[owner]}, owner of a git-mirror run: taken over after ${takeoverMs} ms`,
      );
      await cluster.restart(owner);
    }
  } finally {
    await db.end();
    for (const socket of held) socket.destroy();
    silent.close();
  }
  return cycles;
}

/**
 * Both topologies up side by side: delivery windows in turn (one node on SQLite, then the
 * cluster, `deliveryRounds` times), then the single node's ingest, then the cluster's faults and
 * ingest.
 */
async function measure(
  params: ClusterParams,
  problems: string[],
  log: (line: string) => void,
): Promise<{ single: SingleNode; cluster: ClusterRun }> {
  const server = await RuncastServer.start();
  let cluster: Cluster | undefined;
  try {
    cluster = await Cluster.start(params.clusterCpu);
    const singleDeliveries: Delivery[] = [];
    const deliveries: Delivery[] = [];
    const listener: ListenerCycle[] = [];
    for (let round = 0; round < params.deliveryRounds; round++) {
      const single = await deliver(
        server,
        audiencesOn(server, server),
        { node: () => cpuSeconds(server.pid) },
        params,
        problems,
      );
      singleDeliveries.push(single);
      log(`  round ${round + 1}, one node on SQLite: ${describe(single)}`);
      const across = await deliverAcross(cluster, params, problems, log, round === 0 ? listener : undefined);
      deliveries.push(across);
      log(`  round ${round + 1}, three nodes on PostgreSQL: ${describe(across)}`);
    }
    const singleIngest = await ingestOn(server, 'one node on SQLite', params, problems, log);
    problems.push(
      ...server.errorLines.slice(0, 5).map((line) => `one node on SQLite: server logged an error: ${line}`),
    );
    const rest = await failoverAndIngest(cluster, params, problems, log);
    const owners = await ownerFailover(cluster, params, problems, log);
    problems.push(...cluster.problems());
    return {
      single: { deliveries: singleDeliveries, ingest: singleIngest },
      cluster: { deliveries, listener, owners, ...rest },
    };
  } finally {
    await cluster?.stop();
    await server.stop();
  }
}

function holds(value: number | undefined, limit: number): boolean | undefined {
  return value === undefined || Number.isNaN(value) ? undefined : value <= limit;
}

function rows(params: ClusterParams, cluster: ClusterRun, single: SingleNode): Row[] {
  const versus = (value: number | undefined) => [{ system: 'runcast-sqlite' as const, value }];
  const p = (delivery: Delivery, audience: string, pick: (latency: Percentiles) => number) => {
    const window = delivery.windows[audience];
    return window ? pick(window.commitLatency) : undefined;
  };
  /** The worst of the rounds' latencies. */
  const worst = (deliveries: Delivery[], audience: string, pick: (latency: Percentiles) => number) => {
    const values = deliveries.flatMap((delivery) => p(delivery, audience, pick) ?? []);
    return values.length > 0 ? Math.max(...values) : undefined;
  };
  const meanOf = (deliveries: Delivery[], figure: (delivery: Delivery) => number) =>
    deliveries.reduce((sum, delivery) => sum + figure(delivery), 0) / deliveries.length;
  const rounds = cluster.deliveries.length;
  const out: Row[] = [
    {
      figure: 'offered events/s (updates + log lines, producer on node A)',
      digits: 0,
      runcast: cluster.deliveries[0]?.offeredEventsPerS,
      baselines: versus(single.deliveries[0]?.offeredEventsPerS),
    },
    {
      figure: `delivered events/s${rounds > 1 ? `, mean of ${rounds} rounds` : ''}`,
      digits: 0,
      runcast: meanOf(cluster.deliveries, (d) => delivered(d) / d.windowS),
      baselines: versus(meanOf(single.deliveries, (d) => delivered(d) / d.windowS)),
    },
  ];
  const ofRounds = rounds > 1 ? `, worst of ${rounds} rounds` : '';
  for (const [audience, where] of [
    ['websocket', 'WebSocket on node B'],
    ['sse', 'SSE on node C'],
  ] as const) {
    out.push(
      {
        figure: `commit-to-delivery p50, ${where} (ms)${ofRounds}`,
        digits: 1,
        runcast: worst(cluster.deliveries, audience, (l) => l.p50),
        baselines: versus(worst(single.deliveries, audience, (l) => l.p50)),
      },
      {
        figure: `commit-to-delivery p99, ${where} (ms)${ofRounds}`,
        digits: 1,
        runcast: worst(cluster.deliveries, audience, (l) => l.p99),
        baselines: versus(worst(single.deliveries, audience, (l) => l.p99)),
        target: {
          text: `≤ ${P99_TARGET_MS} ms`,
          holds: holds(
            worst(cluster.deliveries, audience, (l) => l.p99),
            P99_TARGET_MS,
          ),
        },
      },
    );
  }
  const sendP99 = (deliveries: Delivery[]) =>
    Math.max(
      ...deliveries.flatMap((delivery) =>
        Object.values(delivery.windows).map((window) => window.updateLatency.p99),
      ),
    );
  out.push({
    figure: `scheduled send to delivery p99 (ms): grows when ingest falls behind the producer${ofRounds}`,
    digits: 1,
    runcast: sendP99(cluster.deliveries),
    baselines: versus(sendP99(single.deliveries)),
  });
  const nodes = ['node A', 'node B', 'node C'];
  const clusterRounds = cluster.deliveries.map((d) => cpuUsPerEvent(d, nodes));
  const singleRounds = single.deliveries.map((d) => cpuUsPerEvent(d, ['node']));
  const clusterCpu = meanOf(cluster.deliveries, (d) => cpuUsPerEvent(d, nodes));
  const singleCpu = meanOf(single.deliveries, (d) => cpuUsPerEvent(d, ['node']));
  const each = (values: number[]) => values.map((value) => value.toFixed(1)).join(', ');
  out.push({
    figure:
      rounds > 1
        ? `server CPU per delivered event, three nodes together (µs), mean of ${rounds} rounds (three nodes ${each(clusterRounds)}; one node ${each(singleRounds)})`
        : 'server CPU per delivered event, three nodes together (µs)',
    digits: 2,
    runcast: clusterCpu,
    baselines: versus(singleCpu),
    target: {
      text: `≤ ${CPU_TARGET_RATIO}× runcast-sqlite`,
      holds: holds(clusterCpu / singleCpu, CPU_TARGET_RATIO),
    },
  });
  for (const node of nodes) {
    const busy = meanOf(cluster.deliveries, (d) => (100 * (d.cpuS[node] ?? 0)) / d.windowS);
    out.push({
      figure: `〃 node ${node.slice(-1)}'s share (µs), its core busy ${Math.round(busy)}%`,
      digits: 2,
      runcast: meanOf(cluster.deliveries, (d) => cpuUsPerEvent(d, [node])),
      baselines: [],
    });
  }
  out.push({
    figure: 'PostgreSQL CPU per delivered event (µs), not in the figure above',
    digits: 2,
    runcast: meanOf(cluster.deliveries, (d) => cpuUsPerEvent(d, ['PostgreSQL'])),
    baselines: [],
  });
  const ingest = (steps: IngestStep[]) => steps[0]?.acknowledgedPerS;
  out.push(
    {
      figure: `acknowledged updates/s, ${params.ingestProducers} producers on node A (PostgreSQL)`,
      digits: 0,
      runcast: ingest(cluster.ingest),
      baselines: versus(ingest(single.ingest)),
    },
    {
      figure: 'ack latency p99 of those updates (ms)',
      digits: 1,
      runcast: cluster.ingest[0]?.latency.p99,
      baselines: versus(single.ingest[0]?.latency.p99),
    },
  );
  const moved = cluster.failover.flatMap((cycle) => cycle.movedDelaysMs);
  const failover = percentiles([...moved]);
  out.push(
    {
      figure: `subscriber failover after kill -9, to the next event through HAProxy: p50 (ms), ${moved.length} subscribers over ${cluster.failover.length} kills`,
      digits: 0,
      runcast: failover.p50,
      baselines: [],
    },
    { figure: '〃 p99 (ms)', digits: 0, runcast: failover.p99, baselines: [] },
    { figure: '〃 max (ms)', digits: 0, runcast: failover.max, baselines: [] },
    {
      figure: 'commit-to-delivery p99 through HAProxy, before the kills (ms)',
      digits: 1,
      runcast: p(cluster.failoverDelivery, 'websocket via HAProxy', (l) => l.p99),
      baselines: [],
    },
  );
  const detected = cluster.listener.map((cycle) => cycle.detectedMs ?? Number.NaN);
  const caughtUp = cluster.listener.map((cycle) => cycle.allCaughtUpMs ?? Number.NaN);
  const worstDetected = detected.length > 0 ? Math.max(...detected) / 1000 : undefined;
  out.push(
    {
      figure: `dead bus listener: SIGSTOP to node C's first delivery of a new event, worst of ${detected.length} (s)`,
      digits: 2,
      runcast: worstDetected,
      baselines: [],
      target: { text: `≤ ${DETECT_TARGET_S} s`, holds: holds(worstDetected, DETECT_TARGET_S) },
    },
    {
      figure: '〃 until every subscriber on node C had one, worst (s)',
      digits: 2,
      runcast: caughtUp.length > 0 ? Math.max(...caughtUp) / 1000 : undefined,
      baselines: [],
    },
  );
  const takeovers = cluster.owners.map((cycle) => cycle.takeoverMs ?? Number.NaN);
  const worstTakeover = takeovers.length > 0 ? Math.max(...takeovers) : undefined;
  out.push({
    figure: `run owner failover: kill -9 of the node executing a git-mirror run to another node ending it INTERRUPTED, worst of ${takeovers.length} (ms), lease ${LEASE_MS} ms`,
    digits: 0,
    runcast: worstTakeover,
    baselines: [],
    target: { text: `≤ lease + 1 s (${OWNER_TARGET_MS} ms)`, holds: holds(worstTakeover, OWNER_TARGET_MS) },
  });
  const verifies = [...cluster.deliveries, cluster.failoverDelivery].flatMap((d) => Object.values(d.verify));
  const lost = verifies.reduce((sum, v) => sum + v.lostLogs + v.duplicateLogs, 0);
  out.push({
    figure: `log events lost or duplicated (all cluster subscribers, through the faults)`,
    digits: 0,
    runcast: lost,
    baselines: versus(
      single.deliveries
        .flatMap((d) => Object.values(d.verify))
        .reduce((sum, v) => sum + v.lostLogs + v.duplicateLogs, 0),
    ),
    target: { text: '0', holds: lost === 0 },
  });
  return out;
}

/**
 * Three Runcast nodes on PostgreSQL 15 against one node on SQLite, under the same producer load:
 * cross-node delivery latency and CPU per delivered event, ingest, subscriber failover after
 * `kill -9`, and the time to detect a dead bus listener.
 */
export async function runCluster(
  params: ClusterParams,
  log: (line: string) => void,
): Promise<ScenarioResult> {
  const started = Date.now();
  log(`\n## ${params.title}`);
  const problems: string[] = [];
  const { single, cluster } = await measure(params, problems, log);
  return {
    id: params.id,
    title: params.title,
    scale: params.scale,
    params: { ...params },
    systems: { cluster, 'runcast-sqlite': single },
    rows: rows(params, cluster, single),
    problems,
    durationS: (Date.now() - started) / 1000,
    notes: [
      `Both topologies take the same open-loop producer (${params.runs} runs × ${params.updatesPerSPerRun} updates/s + ${params.logsPerSPerRun} log lines/s) and the same ${params.runs} WebSocket + ${params.runs} SSE subscribers, one of each per run. In the cluster the producer writes to node A, the WebSocket subscribers are on node B and the SSE subscribers on node C, so every event crosses the bus.`,
      'The single node is pinned to CPU 0 and the load to CPU 1, as in the other scenarios. The cluster (three nodes, PostgreSQL, HAProxy) is not pinned: on CPU 0 alone it carried about 1,340 events/s, its core 91% busy, so here it shares both cores with the load, and its latencies include that contention.',
      'Producers: one keep-alive connection per run. PostgreSQL runs with its defaults (synchronous_commit on), SQLite with Runcast’s (WAL, synchronous NORMAL).',
      `Delivery windows are taken in turn, one node then the cluster, ${params.deliveryRounds} time${params.deliveryRounds > 1 ? 's' : ''}, with both topologies up (the one not measured is idle): CPU figures and delivered events/s are the rounds’ mean, latencies the worst round’s.`,
      'Commit-to-delivery is receipt time minus the event’s `at` (set by the node that committed it, ms precision), measured on every subscriber; CPU per delivered event is the nodes’ utime+stime over the window ÷ events received; PostgreSQL’s (postmaster and backends) is shown apart.',
      `Subscriber failover: the WebSocket subscribers connect through HAProxy (deploy/haproxy.cfg as shipped, round-robin, three server lines); node B or C is killed with SIGKILL in turn and restarted on its port; the figure runs from the kill to the first event committed after it that a subscriber of the killed node received (it reconnects after 100–500 ms and resumes by seq). With ${params.updatesPerSPerRun + params.logsPerSPerRun} events/s per run it includes up to ${Math.round(1000 / (params.updatesPerSPerRun + params.logsPerSPerRun))} ms of waiting for that event.`,
      `Run owner failover: the nodes run with RUNCAST_RUN_LEASE_MS=${LEASE_MS} (renewed every third of it; other nodes look for claimable runs every second). A git-mirror run whose source is a loopback server that accepts and never answers stays RUNNING on the node that claimed it (its git waits on the source); that node and its git are killed with SIGKILL, and the figure runs until PostgreSQL shows the run ended FAILED/INTERRUPTED by the node that took it over.`,
      'The failover tail comes in steps of about 3 s: until its health checks fail (`check` with HAProxy’s defaults: every 2 s, down after 3 failures) HAProxy still sends a third of the new connections to the dead node, retries a refused connect there three times a second apart without `option redispatch`, then answers 503, and the subscriber tries again.',
      'Dead bus listener: the PostgreSQL backend of node C’s LISTEN session is stopped with SIGSTOP (found through pg_stat_activity and the node’s sockets); the figure runs from the stop to node C’s first delivery of an event committed after it on node A. The bus hears its own heartbeat every 1 s and replaces a listener silent for 3 s, then resyncs from the store.',
      `Ingest: ${params.ingestProducers} closed-loop producers, one run each, PATCH …/progress to node A (PostgreSQL) and to the SQLite node, as the ingest scenario does.`,
    ],
  };
}
