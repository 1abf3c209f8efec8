import { spawn } from 'node:child_process';
import { ExecutionError } from './executor.js';
import { httpOrigin, REMOTE_PROTOCOLS } from './repository-url.js';

/** Credentials that travel to git through its environment, never on its command line. */
export interface GitAuth {
  /** An HTTPS token, sent as an `http.extraHeader` to the origin of `url` only. */
  token?: string | undefined;
  /** The repository the token belongs to. */
  url: string;
}

export interface GitRun {
  /** The subcommand and its options. */
  args: string[];
  /** Positional arguments: they follow `--`, so that none can be read as an option. */
  operands?: string[];
  cwd?: string;
  auth?: GitAuth;
  /** The `file` transport (local paths, `file://`) is allowed; off unless RUNCAST_GIT_ALLOW_LOCAL. */
  allowLocal?: boolean;
  signal: AbortSignal;
  /** Each chunk of stderr as it comes (git's progress goes there). */
  onStderr?: (chunk: Buffer) => void;
}

/**
 * The environment of a git child: no prompts, no system or user config, only the transports Runcast
 * accepts, no redirects, and credentials if any, for their own origin.
 */
export function gitEnvironment(auth: GitAuth | undefined, allowLocal = false): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    LANG: 'C',
    LC_ALL: 'C',
    GIT_TERMINAL_PROMPT: '0',
    GIT_CONFIG_NOSYSTEM: '1',
    // HOME stays for ssh (its keys and known_hosts), but the user's git config is not read: an
    // `insteadOf` or a credential helper there would change where a run's URL goes and with what.
    GIT_CONFIG_GLOBAL: '/dev/null',
    GIT_ASKPASS: '/bin/false',
    SSH_ASKPASS: '/bin/false',
  };
  // GIT_CONFIG_* variables weigh as `-c` options: above any config file git reads.
  const config: [key: string, value: string][] = [['protocol.allow', 'never']];
  for (const name of [...REMOTE_PROTOCOLS, ...(allowLocal ? ['file'] : [])]) {
    config.push([`protocol.${name}.allow`, 'always']);
  }
  // git resolves `http.<url>.*` once, against the URL it was given, and after a redirect sends
  // the same headers to the new host: the token is safe only if no redirect is followed.
  config.push(['http.followRedirects', 'false']);
  const origin = auth && httpOrigin(auth.url);
  if (auth?.token && origin) {
    // The token rides in an HTTP header, for the repository's own scheme://host[:port] only: it
    // never appears on a command line (visible in /proc/<pid>/cmdline) or in a URL written to
    // the mirror's config.
    const basic = Buffer.from(`x-access-token:${auth.token}`).toString('base64');
    config.push([`http.${origin}/.extraHeader`, `Authorization: Basic ${basic}`]);
  }
  env.GIT_CONFIG_COUNT = String(config.length);
  for (const [index, [key, value]] of config.entries()) {
    env[`GIT_CONFIG_KEY_${index}`] = key;
    env[`GIT_CONFIG_VALUE_${index}`] = value;
  }
  return env;
}

/**
 * Runs git and resolves with its stdout. Cancel kills git's whole process group (git runs
 * helpers such as index-pack and remote helpers in children of its own).
 */
export function git({ args, operands, cwd, auth, allowLocal, signal, onStderr }: GitRun): Promise<string> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new ExecutionError('CANCELED', 'canceled'));
      return;
    }
    const child = spawn('git', operands ? [...args, '--', ...operands] : args, {
      cwd,
      env: gitEnvironment(auth, allowLocal),
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    let errTail = '';
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => {
      onStderr?.(chunk);
      errTail = (errTail + chunk.toString('utf8')).slice(-4000);
    });
    const kill = () => {
      if (child.pid !== undefined) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // Already gone.
        }
      }
    };
    signal.addEventListener('abort', kill, { once: true });
    child.on('error', (err) => {
      signal.removeEventListener('abort', kill);
      reject(new ExecutionError('GIT_UNAVAILABLE', `could not run git: ${err.message}`));
    });
    child.on('close', (code, killedBy) => {
      signal.removeEventListener('abort', kill);
      if (signal.aborted) reject(new ExecutionError('CANCELED', 'canceled'));
      else if (code === 0) resolve(Buffer.concat(out).toString('utf8'));
      else {
        const last = errTail
          .split(/[\r\n]+/)
          .filter((line) => line.trim() !== '')
          .slice(-3)
          .join(' | ');
        reject(
          new ExecutionError('GIT_FAILED', `git ${args[0]} failed (${killedBy ?? `exit ${code}`}): ${last}`),
        );
      }
    });
  });
}

/** Parses `git ls-remote` / `git for-each-ref` output lines `<sha> <ref>` into a map. */
export function parseRefs(output: string): Map<string, string> {
  const refs = new Map<string, string>();
  for (const line of output.split('\n')) {
    const [sha, ref] = line.trim().split(/\s+/);
    if (sha && ref && /^[0-9a-f]{40,64}$/.test(sha) && !ref.endsWith('^{}')) refs.set(ref, sha);
  }
  return refs;
}
