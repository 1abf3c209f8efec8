import { execFile, execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
} from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { CAN_PIN } from './bench-process.js';
import { cpuSeconds, reapedChildrenCpuSeconds } from './proc-stats.js';
import { freePort } from './runcast-server.js';
import { BenchError, sleep } from './time.js';

const execFileAsync = promisify(execFile);

/** Debian 12's PostgreSQL 15 (the test command installs the `postgresql` package). */
const POSTGRES_BIN = '/usr/lib/postgresql/15/bin';
/** PostgreSQL refuses to run as root: as root, its programs run as this user. */
const OS_USER = 'postgres';

/** A throwaway PostgreSQL 15 for one scenario: trust authentication on 127.0.0.1 only. */
export interface BenchPostgres {
  /** Connection URL of the `postgres` database. */
  readonly url: string;
  /** The postmaster's PID. */
  readonly pid: number;
  /** CPU seconds of the postmaster and every backend (live ones, and ended ones it reaped). */
  cpuSeconds(): number;
  /** The backend PID of the session, held by client process `clientPid`, that LISTENs for the bus. */
  listenerBackend(clientPid: number): Promise<number>;
  /** Fast shutdown by PID, then the directory is removed. */
  stop(): Promise<void>;
}

function postgresUser(): { uid: number; gid: number } {
  try {
    const id = (flag: string) => Number(execFileSync('id', [flag, OS_USER], { encoding: 'utf8' }).trim());
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    throw new BenchError('NO_POSTGRES', `user "${OS_USER}" is missing: apt-get install postgresql`);
  }
}

/** Runs a PostgreSQL program (as `postgres` when we are root), pinned to `cpu` when given. */
async function pgProgram(program: string, args: string[], cpu?: number): Promise<void> {
  const command = [
    ...(cpu !== undefined && CAN_PIN ? ['taskset', '-c', String(cpu)] : []),
    ...(process.getuid?.() === 0 ? ['runuser', '-u', OS_USER, '--'] : []),
    join(POSTGRES_BIN, program),
    ...args,
  ];
  try {
    await execFileAsync(command[0]!, command.slice(1), {
      env: { PATH: process.env.PATH, LANG: 'C', LC_ALL: 'C' },
    });
  } catch (err) {
    const { stderr, stdout } = err as { stderr?: string; stdout?: string };
    throw new BenchError('POSTGRES', `${program} failed: ${stderr || stdout || String(err)}`);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/** Local ports of the TCP connections that process `pid` holds open (IPv4 loopback only). */
function localPortsOf(pid: number): Set<number> {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
      if (inode) inodes.add(inode);
    } catch {
      // closed meanwhile
    }
  }
  const ports = new Set<number>();
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    const local = fields[1];
    const inode = fields[9];
    if (local && inode && inodes.has(inode)) ports.add(Number.parseInt(local.split(':')[1] ?? '', 16));
  }
  return ports;
}

/**
 * initdb in a new directory under /tmp and `pg_ctl start` on a free loopback port, the server
 * pinned to `cpu`; resolves once it accepts connections.
 */
export async function startPostgres(cpu?: number): Promise<BenchPostgres> {
  if (!existsSync(join(POSTGRES_BIN, 'initdb')))
    throw new BenchError('NO_POSTGRES', `${POSTGRES_BIN}/initdb is missing: apt-get install postgresql`);
  // Under /tmp, which the postgres user can reach; mkdtemp's 0700 is opened to traversal.
  const dir = mkdtempSync('/tmp/runcast-bench-pg-');
  chmodSync(dir, 0o755);
  if (process.getuid?.() === 0) {
    const { uid, gid } = postgresUser();
    chownSync(dir, uid, gid);
  }
  const dataDir = join(dir, 'data');
  const port = await freePort();
  // A throwaway cluster: trust on loopback only, and no fsync of initdb's files.
  const initdb = [`--pgdata=${dataDir}`, '--auth=trust', '--username=postgres', '--encoding=UTF8'];
  const server = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c max_connections=300`;
  try {
    await pgProgram('initdb', [...initdb, '--locale=C', '--no-sync']);
    const log = `--log=${join(dir, 'log')}`;
    await pgProgram(
      'pg_ctl',
      [`--pgdata=${dataDir}`, `--options=${server}`, log, '--wait', '--timeout=30', 'start'],
      cpu,
    );
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  // The first line of postmaster.pid is the postmaster's PID.
  const pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const url = `postgresql://postgres@127.0.0.1:${port}/postgres`;
  return {
    url,
    pid,
    cpuSeconds() {
      let total = cpuSeconds(pid) + reapedChildrenCpuSeconds(pid);
      for (const child of childrenOf(pid)) {
        try {
          total += cpuSeconds(child);
        } catch {
          // ended between the two reads: its time is in the postmaster's cutime next time
        }
      }
      return total;
    },
    async listenerBackend(clientPid) {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        // The bus asks for its backend PID right after LISTEN, so either is the session's last query.
        const { rows } = await client.query<{ pid: number; client_port: number }>(
          "SELECT pid, client_port FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' OR query ILIKE 'SELECT pg_backend_pid()%'",
        );
        const ports = localPortsOf(clientPid);
        const found = rows.filter((row) => ports.has(row.client_port));
        if (found.length !== 1) {
          throw new BenchError(
            'NO_LISTENER',
            `process ${clientPid} holds ${found.length} listening sessions (${rows.length} in all)`,
          );
        }
        return found[0]!.pid;
      } finally {
        await client.end();
      }
    },
    async stop() {
      // SIGINT is PostgreSQL's fast shutdown: sessions end, the cluster stops cleanly.
      if (alive(pid)) process.kill(pid, 'SIGINT');
      const deadline = Date.now() + 10_000;
      while (alive(pid) && Date.now() < deadline) await sleep(20);
      if (alive(pid)) process.kill(pid, 'SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
