import { spawn } from 'node:child_process';
import { ExecutionError } from './executor.js';

/** Settings that travel to git through its environment, never on its command line. */
export interface GitAuth {
  /** An HTTPS token, sent as an `http.extraHeader` for this one command. */
  token?: string | undefined;
}

export interface GitRun {
  args: string[];
  cwd?: string;
  auth?: GitAuth;
  signal: AbortSignal;
  /** Each chunk of stderr as it comes (git's progress goes there). */
  onStderr?: (chunk: Buffer) => void;
}

/** The environment of a git child: no prompts, no user or system config, credentials if any. */
export function gitEnvironment(auth: GitAuth | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    LANG: 'C',
    LC_ALL: 'C',
    GIT_TERMINAL_PROMPT: '0',
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_ASKPASS: '/bin/false',
    SSH_ASKPASS: '/bin/false',
  };
  if (auth?.token) {
    // The token rides in an HTTP header set through GIT_CONFIG_* variables: it never appears on
    // a command line (visible in /proc/<pid>/cmdline) or in a URL written to the mirror's config.
    const basic = Buffer.from(`x-access-token:${auth.token}`).toString('base64');
    env.GIT_CONFIG_COUNT = '1';
    env.GIT_CONFIG_KEY_0 = 'http.extraHeader';
    env.GIT_CONFIG_VALUE_0 = `Authorization: Basic ${basic}`;
  }
  return env;
}

/**
 * Runs git and resolves with its stdout. Cancel kills git's whole process group (git runs
 * helpers such as index-pack and remote helpers in children of its own).
 */
export function git({ args, cwd, auth, signal, onStderr }: GitRun): Promise<string> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(new ExecutionError('CANCELED', 'canceled'));
      return;
    }
    const child = spawn('git', args, {
      cwd,
      env: gitEnvironment(auth),
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
