import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { type PostgresServer, startPostgres } from './postgres.js';
import { DEPLOY, fillTemplate, type ProxyProcess, startHaproxy } from './real-proxies.js';
import { freePort, ServerProcess } from './server-process.js';

// Runcast nodes on one PostgreSQL behind HAProxy round-robin with no sticky sessions, as the
// cluster suites start them: every process stopped by PID when the suite ends.

export const CLUSTER_SECRET = 'cluster-test-signing-key-0123456789abcdef';

/** A started cluster. */
export interface Cluster {
  postgres: PostgresServer;
  databaseUrl: string;
  /** Node `i` (replaced when it is started again). */
  nodes: ServerProcess[];
  balancerUrl: string;
  /** Each node's data dir. */
  dataDir(index: number): string;
  /** Starts node `index` (again, after a kill) on its own data dir, on `port` or a free one. */
  startNode(index: number, port?: number): Promise<ServerProcess>;
  stop(): Promise<void>;
}

/**
 * PostgreSQL, `count` nodes started together (as an operator would: migrations and the bootstrap
 * admin race) with `env` added to their settings, and HAProxy in front of them.
 */
export async function startCluster(
  name: string,
  count = 3,
  env: Record<string, string> = {},
): Promise<Cluster> {
  const scratch = mkdtempSync(join(tmpdir(), `runcast-${name}-`));
  const postgres = await startPostgres();
  const databaseUrl = await postgres.createDatabase(name.replaceAll('-', '_'));
  const nodes: ServerProcess[] = [];
  let balancer: ProxyProcess | undefined;
  const dataDir = (index: number) => join(scratch, `node${index}`);
  const startNode = async (index: number, port?: number) => {
    const node = await ServerProcess.start(dataDir(index), port ?? (await freePort()), {
      RUNCAST_DATABASE_URL: databaseUrl,
      RUNCAST_SECRET: CLUSTER_SECRET,
      RUNCAST_TRUST_PROXY: 'loopback',
      // Fixed per node, so that a test can tell which node owns a run.
      RUNCAST_NODE_ID: `node${index}`,
      LOG_LEVEL: 'info',
      ...env,
    });
    nodes[index] = node;
    return node;
  };
  await Promise.all(Array.from({ length: count }, (_, index) => startNode(index)));
  const port = await freePort();
  const config = fillTemplate(DEPLOY.haproxy, {
    BIND: `127.0.0.1:${port}`,
    RUNCAST_UPSTREAM: new URL(nodes[0]!.url).host,
    BASE_PATH: '',
  }).replace(/^(\s*)server runcast1 (\S+) check$/m, (_line, indent: string) =>
    nodes
      .map(
        (node, i) =>
          `${indent}server runcast${i + 1} ${new URL(node.url).host} check inter 500 fall 2 rise 1`,
      )
      .join('\n'),
  );
  balancer = await startHaproxy(join(scratch, 'haproxy'), config, [port]);
  return {
    postgres,
    databaseUrl,
    nodes,
    balancerUrl: `http://127.0.0.1:${port}`,
    dataDir,
    startNode,
    async stop() {
      await balancer?.stop();
      for (const node of nodes) await node?.kill();
      await postgres.stop();
      rmSync(scratch, { recursive: true, force: true });
    },
  };
}

/** Waits for `check` to hold, polling every 50 ms. */
export async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** One row of `runs` as PostgreSQL holds it, read straight from the database. */
export async function storedRow<R extends pg.QueryResultRow>(
  databaseUrl: string,
  runId: string,
  columns: string,
): Promise<R> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query<R>(`SELECT ${columns} FROM runs WHERE run_id = $1`, [runId]);
    const row = rows[0];
    if (!row) throw new Error(`run ${runId} is not in PostgreSQL`);
    return row;
  } finally {
    await client.end();
  }
}
