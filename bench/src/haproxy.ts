import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { CAN_PIN } from './bench-process.js';
import { REPO_ROOT } from './paths.js';
import { freePort } from './runcast-server.js';
import { BenchError, sleep } from './time.js';

/** HAProxy started by the bench in front of Runcast nodes, stopped by its PID. */
export interface BenchHaproxy {
  readonly port: number;
  readonly pid: number;
  stop(): Promise<void>;
}

/**
 * deploy/haproxy.cfg as shipped, its placeholders filled and its one `server` line repeated for
 * every upstream (`host:port`), as an operator would.
 */
export function haproxyConfig(bind: string, upstreams: string[]): string {
  let text = readFileSync(join(REPO_ROOT, 'deploy/haproxy.cfg'), 'utf8')
    .replaceAll('__BIND__', bind)
    .replaceAll('__BASE_PATH__', '');
  text = text.replace(
    /^(\s*)server runcast1 __RUNCAST_UPSTREAM__(.*)$/m,
    (_line, indent: string, rest: string) =>
      upstreams.map((upstream, i) => `${indent}server runcast${i + 1} ${upstream}${rest}`).join('\n'),
  );
  // The header's mention of the placeholder is filled as the template says: with a node.
  text = text.replaceAll('__RUNCAST_UPSTREAM__', upstreams[0] ?? '');
  const left = /__[A-Z][A-Z0-9_]*__/.exec(text);
  if (left) throw new BenchError('HAPROXY', `deploy/haproxy.cfg: placeholder ${left[0]} has no value`);
  return text;
}

function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/** HAProxy in the foreground (`-db`) on a free loopback port, pinned to `cpu` when given. */
export async function startHaproxy(dir: string, upstreams: string[], cpu?: number): Promise<BenchHaproxy> {
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const file = join(dir, 'haproxy.cfg');
  writeFileSync(file, haproxyConfig(`127.0.0.1:${port}`, upstreams));
  // Debian installs it in /usr/sbin, which a user's PATH may lack.
  const binary = existsSync('/usr/sbin/haproxy') ? '/usr/sbin/haproxy' : 'haproxy';
  const command = [...(cpu !== undefined && CAN_PIN ? ['taskset', '-c', String(cpu)] : []), binary];
  const child: ChildProcess = spawn(command[0]!, [...command.slice(1), '-f', file, '-db'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const running = () => child.exitCode === null && child.signalCode === null;
  const stop = async () => {
    if (running() && child.pid !== undefined) process.kill(child.pid, 'SIGTERM');
    await exited;
  };
  const deadline = Date.now() + 10_000;
  while (!(await listening(port))) {
    if (!running() || Date.now() > deadline) {
      await stop();
      throw new BenchError('HAPROXY', `haproxy did not listen on ${port}:\n${stderr}`);
    }
    await sleep(50);
  }
  return { port, pid: child.pid ?? -1, stop };
}
