import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The shipped configurations the suites run. */
export const DEPLOY = {
  nginx: fileURLToPath(new URL('../../deploy/nginx.conf', import.meta.url)),
  haproxy: fileURLToPath(new URL('../../deploy/haproxy.cfg', import.meta.url)),
};

/**
 * A shipped configuration with its `__PLACEHOLDERS__` filled in; fails when one is left, so that
 * a placeholder added to the file cannot go untested.
 */
export function fillTemplate(file: string, values: Record<string, string | number>): string {
  let text = readFileSync(file, 'utf8');
  for (const [name, value] of Object.entries(values)) text = text.replaceAll(`__${name}__`, String(value));
  const left = /__[A-Z][A-Z0-9_]*__/.exec(text);
  if (left) throw new Error(`${file}: placeholder ${left[0]} has no value`);
  return text;
}

/** Debian installs the daemons in /usr/sbin, which a user's PATH may lack. */
const sbin = (name: string) => (existsSync(`/usr/sbin/${name}`) ? `/usr/sbin/${name}` : name);

/** A self-signed certificate for localhost, valid one day. */
export function selfSignedCertificate(dir: string): { cert: string; key: string } {
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-subj',
      '/CN=localhost',
      '-days',
      '1',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: 'ignore' },
  );
  return { cert, key };
}

/** A proxy process started by a test, stopped by its PID. */
export interface ProxyProcess {
  readonly pid: number;
  /** What it wrote to stderr (and, for nginx, its error log). */
  output(): string;
  stop(): Promise<void>;
}

function waitForPort(
  port: number,
  child: ChildProcess,
  output: () => string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (child.exitCode !== null || child.signalCode !== null) {
        reject(new Error(`the proxy exited (${child.exitCode ?? child.signalCode}):\n${output()}`));
        return;
      }
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve();
      });
      socket.once('error', () => {
        socket.destroy();
        if (Date.now() > deadline) reject(new Error(`the proxy did not listen on ${port}:\n${output()}`));
        else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

function track(
  command: string,
  args: string[],
  ports: number[],
  extraOutput: () => string,
): Promise<ProxyProcess> {
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const output = () => `${stderr}${extraOutput()}`;
  const process: ProxyProcess = {
    pid: child.pid ?? -1,
    output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
  return Promise.all(ports.map((port) => waitForPort(port, child, output))).then(
    () => process,
    async (err: unknown) => {
      await process.stop();
      throw err;
    },
  );
}

/**
 * nginx in the foreground with `siteConfig` (http-level, as deploy/nginx.conf is) included in a
 * main configuration whose pid, logs and temp files stay in `dir`; resolves once every port
 * listens.
 */
export function startNginx(dir: string, siteConfig: string, ports: number[]): Promise<ProxyProcess> {
  mkdirSync(dir, { recursive: true });
  const site = join(dir, 'runcast.conf');
  writeFileSync(site, siteConfig);
  const main = join(dir, 'nginx.conf');
  writeFileSync(
    main,
    `daemon off;
${process.getuid?.() === 0 ? 'user root;' : ''}
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} warn;
events { worker_connections 512; }
http {
    access_log ${join(dir, 'access.log')};
    client_body_temp_path ${join(dir, 'client_body')};
    proxy_temp_path ${join(dir, 'proxy')};
    fastcgi_temp_path ${join(dir, 'fastcgi')};
    uwsgi_temp_path ${join(dir, 'uwsgi')};
    scgi_temp_path ${join(dir, 'scgi')};
    include ${site};
}
`,
  );
  const errorLog = () => {
    try {
      return readFileSync(join(dir, 'error.log'), 'utf8');
    } catch {
      return '';
    }
  };
  return track(sbin('nginx'), ['-p', dir, '-e', join(dir, 'error.log'), '-c', main], ports, errorLog);
}

/** HAProxy in the foreground (`-db`) with `config`; resolves once every port listens. */
export function startHaproxy(dir: string, config: string, ports: number[]): Promise<ProxyProcess> {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'haproxy.cfg');
  writeFileSync(file, config);
  return track(sbin('haproxy'), ['-f', file, '-db'], ports, () => '');
}
