import { execFile } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll } from 'vitest';
import { freePort } from './server-process.js';

// A real PostgreSQL 15 for the tests, from Debian's `postgresql` package (the test command
// installs it): initdb in a temp dir, one server per test file on a loopback port, stopped by PID.

const run = promisify(execFile);

/** Debian's PostgreSQL 15 binaries. */
export const POSTGRES_BIN = '/usr/lib/postgresql/15/bin';
/** PostgreSQL refuses to run as root: as root, its commands run as this user. */
const OS_USER = 'postgres';
const START_TIMEOUT_S = 30;

/** A started PostgreSQL server and what a test needs to reach it. */
export interface PostgresServer {
  port: number;
  /** Connection URL of a new, empty database on this server. */
  createDatabase(name: string): Promise<string>;
  /** Connection URL of the `postgres` database. */
  readonly adminUrl: string;
  /** PID of the postmaster. */
  readonly pid: number;
  /** Stops the server by its PID (fast shutdown) and starts it again on the same port and data. */
  restart(): Promise<void>;
  /** Stops the server by its PID (fast shutdown) and removes its directory. */
  stop(): Promise<void>;
}

/** The uid and gid of the `postgres` user, read from /etc/passwd. */
function osUser(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((entry) => entry.startsWith(`${OS_USER}:`));
  const [, , uid, gid] = line?.split(':') ?? [];
  if (uid === undefined || gid === undefined) {
    throw new Error(`user "${OS_USER}" is missing: install PostgreSQL (apt-get install postgresql)`);
  }
  return { uid: Number(uid), gid: Number(gid) };
}

/** Runs a PostgreSQL program, as the `postgres` user when this process is root. */
async function pgCommand(program: string, args: string[]): Promise<void> {
  const binary = join(POSTGRES_BIN, program);
  const [command, commandArgs] =
    process.getuid?.() === 0 ? ['runuser', ['-u', OS_USER, '--', binary, ...args]] : [binary, args];
  try {
    await run(command, commandArgs, { env: { PATH: process.env.PATH, LANG: 'C', LC_ALL: 'C' } });
  } catch (err) {
    const { stderr, stdout } = err as { stderr?: string; stdout?: string };
    throw new Error(`${program} ${args.join(' ')} failed: ${stderr || stdout || String(err)}`);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitForExit(pid: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (isAlive(pid)) {
    if (Date.now() > deadline) {
      process.kill(pid, 'SIGKILL');
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** `pg_ctl start` of the cluster in `dataDir`, listening on 127.0.0.1:`port` and a socket in `dir`. */
async function pgStart(dataDir: string, dir: string, port: number): Promise<void> {
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=200`;
  await pgCommand('pg_ctl', [
    '-D',
    dataDir,
    '-o',
    options,
    '-l',
    join(dir, 'log'),
    '-w',
    '-t',
    String(START_TIMEOUT_S),
    'start',
  ]);
}

/**
 * Starts PostgreSQL 15 in a new temp dir on a free loopback port; resolves once it accepts
 * connections. Trust authentication: it listens on 127.0.0.1 and a socket in that dir only.
 */
export async function startPostgres(): Promise<PostgresServer> {
  if (!existsSync(join(POSTGRES_BIN, 'initdb'))) {
    throw new Error(`${POSTGRES_BIN}/initdb is missing: install PostgreSQL 15 (apt-get install postgresql)`);
  }
  // Under /tmp, whose parents the postgres user can traverse; mkdtemp makes it 0700, so open it up
  // to traversal and hand it over.
  const dir = mkdtempSync('/tmp/runcast-pg-');
  chmodSync(dir, 0o755);
  if (process.getuid?.() === 0) {
    const { uid, gid } = osUser();
    chownSync(dir, uid, gid);
  }
  const dataDir = join(dir, 'data');
  const port = await freePort();
  try {
    // --no-sync: a throwaway cluster need not wait for initdb's files to reach the disk.
    await pgCommand('initdb', [
      '-D',
      dataDir,
      '-A',
      'trust',
      '-U',
      'postgres',
      '-E',
      'UTF8',
      '--locale=C',
      '--no-sync',
    ]);
    await pgStart(dataDir, dir, port);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  // The first line of postmaster.pid is the postmaster's PID.
  const postmasterPid = () => Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  let pid = postmasterPid();
  const url = (database: string) => `postgresql://postgres@127.0.0.1:${port}/${database}`;
  return {
    port,
    get pid() {
      return pid;
    },
    adminUrl: url('postgres'),
    async createDatabase(name) {
      if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`bad database name "${name}"`);
      const client = new pg.Client({ connectionString: url('postgres') });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE ${name}`);
      } finally {
        await client.end();
      }
      return url(name);
    },
    async restart() {
      if (isAlive(pid)) process.kill(pid, 'SIGINT');
      await waitForExit(pid, 10_000);
      await pgStart(dataDir, dir, port);
      pid = postmasterPid();
    },
    async stop() {
      // SIGINT is PostgreSQL's fast shutdown: sessions are ended, the cluster is left clean.
      if (isAlive(pid)) process.kill(pid, 'SIGINT');
      await waitForExit(pid, 10_000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * One PostgreSQL server for the calling test file, started before its tests and stopped after
 * them; answers a function that creates a new, empty database on it (`<prefix>_<n>`) and its URL.
 */
export function postgresForFile(prefix: string): () => Promise<string> {
  let server: PostgresServer | undefined;
  let databases = 0;
  beforeAll(async () => {
    server = await startPostgres();
  });
  afterAll(async () => {
    await server?.stop();
  });
  return () => {
    if (!server) throw new Error('PostgreSQL is not started yet: create databases inside tests');
    return server.createDatabase(`${prefix}_${++databases}`);
  };
}
