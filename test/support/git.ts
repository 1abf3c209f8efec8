import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { freePort } from './server-process.js';

// Fixtures built with the real git: bare repositories written by `git fast-import` (one process
// for a whole history, so 50,000 objects take seconds), a `git daemon` on loopback, and a look at
// /proc for the git processes a run leaves behind.

const TIME = 1_700_000_000;

/** The environment of every fixture git: no system config, no prompt, a fixed identity and dates. */
export function gitEnv(): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    LANG: 'C',
    LC_ALL: 'C',
    GIT_CONFIG_NOSYSTEM: '1',
    GIT_TERMINAL_PROMPT: '0',
    GIT_AUTHOR_NAME: 'Fixture Author',
    GIT_AUTHOR_EMAIL: 'author@example.com',
    GIT_AUTHOR_DATE: `${TIME} +0000`,
    GIT_COMMITTER_NAME: 'Fixture Committer',
    GIT_COMMITTER_EMAIL: 'committer@example.com',
    GIT_COMMITTER_DATE: `${TIME} +0000`,
  };
}

/** Runs git synchronously and answers its trimmed stdout; throws with git's stderr on failure. */
export function git(
  args: string[],
  options: { cwd?: string; input?: string | Buffer; env?: Record<string, string> } = {},
): string {
  const result = spawnSync('git', args, {
    cwd: options.cwd,
    env: { ...gitEnv(), ...options.env },
    input: options.input,
    maxBuffer: 256 * 1024 * 1024,
  });
  if (result.error) throw result.error;
  if (result.status !== 0) {
    throw new Error(
      `git ${args.join(' ')} failed (${result.status}): ${result.stderr.toString('utf8').trim()}`,
    );
  }
  return result.stdout.toString('utf8').trim();
}

/** `file://` URL of a local repository. */
export function fileUrl(dir: string): string {
  return `file://${dir}`;
}

/** An empty bare repository (the target of a migration). */
export function emptyBare(dir: string): string {
  git(['init', '--quiet', '--bare', '--initial-branch=master', dir]);
  return dir;
}

/** `git ls-remote <url>` as a map ref → sha (peeled `^{}` lines left out). */
export function lsRemote(url: string): Map<string, string> {
  const refs = new Map<string, string>();
  for (const line of git(['ls-remote', url]).split('\n')) {
    const [sha, ref] = line.split('\t');
    if (sha && ref && !ref.endsWith('^{}')) refs.set(ref, sha);
  }
  return refs;
}

/** The number of objects in a repository (loose and packed). */
export function countObjects(dir: string): number {
  const lines = git(['count-objects', '-v'], { cwd: dir }).split('\n');
  const value = (key: string) => Number(lines.find((l) => l.startsWith(`${key}:`))?.split(':')[1] ?? 0);
  return value('count') + value('in-pack');
}

/** A fast-import stream, written piece by piece. */
class Stream {
  private readonly parts: Buffer[] = [];
  private nextMark = 1;

  data(content: string | Buffer): void {
    const bytes = typeof content === 'string' ? Buffer.from(content, 'utf8') : content;
    this.raw(`data ${bytes.length}\n`);
    this.parts.push(bytes);
    this.raw('\n');
  }

  raw(text: string): void {
    this.parts.push(Buffer.from(text, 'utf8'));
  }

  /** A commit on `ref` (on top of `from`, or of the ref's tip in this stream); answers its mark. */
  commit(
    ref: string,
    message: string,
    files: [path: string, content: string | Buffer][],
    from?: number,
  ): number {
    const mark = this.nextMark++;
    this.raw(`commit ${ref}\nmark :${mark}\n`);
    this.raw(`author Fixture Author <author@example.com> ${TIME + mark} +0000\n`);
    this.raw(`committer Fixture Committer <committer@example.com> ${TIME + mark} +0000\n`);
    this.data(message);
    if (from !== undefined) this.raw(`from :${from}\n`);
    for (const [path, content] of files) {
      this.raw(`M 100644 inline ${path}\n`);
      this.data(content);
    }
    this.raw('\n');
    return mark;
  }

  annotatedTag(name: string, mark: number, message: string): void {
    this.raw(`tag ${name}\nfrom :${mark}\n`);
    this.raw(`tagger Fixture Tagger <tagger@example.com> ${TIME} +0000\n`);
    this.data(message);
  }

  /** A ref pointing straight at a commit: a lightweight tag, or any other ref. */
  reset(ref: string, mark: number): void {
    this.raw(`reset ${ref}\nfrom :${mark}\n\n`);
  }

  importInto(dir: string): void {
    // Random blobs do not compress: level 0 saves most of the time. A large malloc top pad saves
    // the rest, which glibc would spend growing and trimming the heap for every object.
    git(['-c', 'core.compression=0', 'fast-import', '--quiet', '--done'], {
      cwd: dir,
      input: Buffer.concat([...this.parts, Buffer.from('done\n')]),
      env: { MALLOC_TOP_PAD_: String(256 * 1024 * 1024) },
    });
  }
}

export interface SourceRepoOptions {
  /** Branches besides `master`, each with a commit of its own on top of master. */
  branches?: string[];
  /** Tags: annotated ones (tag objects) and lightweight ones (refs to commits). */
  tags?: { annotated?: string[]; lightweight?: string[] };
  /**
   * GitLab-style refs: `refs/merge-requests/<n>/head` (commits on no branch), and with the first
   * one `refs/merge-requests/1/merge`, `refs/pipelines/5`, `refs/environments/production/deployments/1`
   * and `refs/keep-around/<sha>`.
   */
  mergeRequests?: number;
  /** Commits on master. */
  commits?: number;
}

export interface SourceRepo {
  dir: string;
  url: string;
  /** Every ref of the repository (ls-remote, HEAD left out). */
  refs: Map<string, string>;
  branches: string[];
  tags: string[];
  /** The GitLab-only refs (merge requests, pipelines, environments, keep-around). */
  hostOnly: string[];
}

/** A bare repository with branches, annotated and lightweight tags, and GitLab-only refs. */
export function makeSourceRepo(dir: string, options: SourceRepoOptions = {}): SourceRepo {
  const branches = options.branches ?? ['develop', 'feature/login', 'release/1.0'];
  const annotated = options.tags?.annotated ?? ['v1.0.0', 'v1.1.0'];
  const lightweight = options.tags?.lightweight ?? ['nightly', 'v0.9-light'];
  const mergeRequests = options.mergeRequests ?? 2;
  const commits = Math.max(1, options.commits ?? 5);
  emptyBare(dir);
  const stream = new Stream();
  const master: number[] = [];
  for (let i = 0; i < commits; i++) {
    master.push(
      stream.commit('refs/heads/master', `master commit ${i + 1}\n`, [
        ['README.md', `# fixture\n\nrevision ${i + 1}\n`],
        [`src/file-${i}.txt`, `content of commit ${i + 1}\n`],
      ]),
    );
  }
  const tip = master[master.length - 1] as number;
  for (const [i, branch] of branches.entries()) {
    stream.commit(`refs/heads/${branch}`, `work on ${branch}\n`, [[`branches/${i}.txt`, `${branch}\n`]], tip);
  }
  for (const [i, name] of annotated.entries()) {
    stream.annotatedTag(name, master[Math.min(i, master.length - 1)] as number, `release ${name}\n`);
  }
  for (const name of lightweight) stream.reset(`refs/tags/${name}`, tip);
  const hostOnly: string[] = [];
  for (let n = 1; n <= mergeRequests; n++) {
    const ref = `refs/merge-requests/${n}/head`;
    stream.commit(ref, `merge request ${n}\n`, [[`mr/${n}.txt`, `proposed change ${n}\n`]], tip);
    hostOnly.push(ref);
  }
  if (mergeRequests > 0) {
    stream.reset('refs/merge-requests/1/merge', tip);
    stream.reset('refs/pipelines/5', tip);
    stream.reset('refs/environments/production/deployments/1', tip);
    hostOnly.push(
      'refs/merge-requests/1/merge',
      'refs/pipelines/5',
      'refs/environments/production/deployments/1',
    );
  }
  stream.importInto(dir);
  if (mergeRequests > 0) {
    const sha = git(['rev-parse', 'refs/merge-requests/1/head'], { cwd: dir });
    git(['update-ref', `refs/keep-around/${sha}`, sha], { cwd: dir });
    hostOnly.push(`refs/keep-around/${sha}`);
  }
  git(['symbolic-ref', 'HEAD', 'refs/heads/master'], { cwd: dir });
  const url = fileUrl(dir);
  return {
    dir,
    url,
    refs: new Map([...lsRemote(url)].filter(([ref]) => ref !== 'HEAD')),
    branches: ['master', ...branches],
    tags: [...annotated, ...lightweight],
    hostOnly,
  };
}

/**
 * A bare repository of at least `objects` objects: commits that each rewrite 98 files with
 * random content (98 blobs + 1 tree + 1 commit), so nothing deltas away. Answers the count.
 */
export function makeBigRepo(
  dir: string,
  objects: number,
  blobBytes = 200,
): { dir: string; url: string; objects: number } {
  const FILES = 98;
  emptyBare(dir);
  const stream = new Stream();
  let written = 0;
  for (let c = 0; written < objects; c++) {
    const files: [string, Buffer][] = [];
    const count = Math.min(FILES, Math.max(1, objects - written - 3));
    for (let f = 0; f < count; f++) files.push([`data/f${f}.bin`, randomBytes(blobBytes)]);
    stream.commit('refs/heads/master', `generated commit ${c}\n`, files);
    written += count + 3; // blobs, the root tree, data/, the commit
  }
  stream.importInto(dir);
  git(['symbolic-ref', 'HEAD', 'refs/heads/master'], { cwd: dir });
  return { dir, url: fileUrl(dir), objects: countObjects(dir) };
}

/** A new commit on top of `ref` in a bare repository (same tree, new message); answers its sha. */
export function addCommit(dir: string, ref: string, message: string): string {
  const parent = git(['rev-parse', ref], { cwd: dir });
  const sha = git(['commit-tree', `${parent}^{tree}`, '-p', parent, '-m', message], { cwd: dir });
  git(['update-ref', ref, sha], { cwd: dir });
  return sha;
}

/** Rewrites `ref` to a commit that does not descend from it (a force-push in the source). */
export function rewriteBranch(dir: string, ref: string, message: string): string {
  const current = git(['rev-parse', ref], { cwd: dir });
  const sha = git(['commit-tree', `${current}^{tree}`, '-m', message], { cwd: dir });
  git(['update-ref', ref, sha], { cwd: dir });
  return sha;
}

export interface GitDaemon {
  /** `git://127.0.0.1:<port>/`; a repository `<base>/x.git` is `${url}x.git`. */
  url: string;
  pid: number;
  stop(): Promise<void>;
}

const daemons = new Set<GitDaemon>();

/** Resolves once something accepts TCP connections on the port; rejects at the deadline. */
async function waitForPort(port: number, alive: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (ok) return;
    if (!alive()) throw new Error(`git daemon exited before listening on ${port}`);
    if (Date.now() > deadline) throw new Error(`git daemon did not listen on ${port} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/**
 * `git daemon` on a free loopback port serving every repository under `baseDir`, pushes allowed.
 * It runs in a process group of its own, so that `stop()` also ends the upload-pack and
 * receive-pack children of open connections.
 */
export async function startGitDaemon(baseDir: string): Promise<GitDaemon> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const pidFile = join(baseDir, `.git-daemon-${port}.pid`);
    const child = spawn(
      'git',
      [
        'daemon',
        '--reuseaddr',
        '--listen=127.0.0.1',
        `--port=${port}`,
        `--base-path=${baseDir}`,
        '--export-all',
        '--enable=receive-pack',
        '--informative-errors',
        `--pid-file=${pidFile}`,
      ],
      { env: gitEnv(), detached: true, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let stderr = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-4000);
    });
    const groupId = child.pid;
    if (groupId === undefined) throw new Error('git daemon did not start');
    const gone = exited(child);
    // `git daemon` runs `git-daemon` as its child: the pid file names that one.
    let pid = groupId;
    const stop = async () => {
      daemons.delete(daemon);
      const signal = (target: number, name: NodeJS.Signals) => {
        try {
          process.kill(target, name);
        } catch {
          // Already gone.
        }
      };
      signal(pid, 'SIGTERM');
      const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 3000).unref());
      if ((await Promise.race([gone, timeout])) === 'timeout') signal(-groupId, 'SIGKILL');
      await gone;
      // Connection children share the group: make sure none outlives the daemon.
      signal(-groupId, 'SIGKILL');
    };
    const daemon: GitDaemon = {
      url: `git://127.0.0.1:${port}/`,
      get pid() {
        return pid;
      },
      stop,
    };
    daemons.add(daemon);
    try {
      await waitForPort(port, () => child.exitCode === null && child.signalCode === null, 10_000);
      await waitFor(() => existsSync(pidFile), 5000, 'the git daemon pid file');
      await waitFor(() => /^\d+\s*$/.test(readFileSync(pidFile, 'utf8')), 5000, 'the git daemon pid');
      pid = Number(readFileSync(pidFile, 'utf8').trim());
      return daemon;
    } catch (err) {
      lastError = new Error(`${(err as Error).message}\n${stderr}`);
      await stop();
    }
  }
  throw lastError;
}

/** Stops every daemon still running (for an afterAll). */
export async function stopAllGitDaemons(): Promise<void> {
  await Promise.all([...daemons].map((daemon) => daemon.stop()));
}

/** Polls `check` every 10 ms until it holds; throws after `timeoutMs`. */
export async function waitFor(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A live process as /proc shows it; fields the reader may not see are empty. */
export interface ProcessInfo {
  pid: number;
  /** argv joined with spaces. */
  cmdline: string;
  /** Raw environment (NUL-separated), empty when unreadable. */
  environ: string;
  cwd: string;
}

function readOr(path: string, read: (path: string) => string): string {
  try {
    return read(path);
  } catch {
    return '';
  }
}

/** Every process visible in /proc (zombies and vanished ones left out). */
export function listProcesses(): ProcessInfo[] {
  const out: ProcessInfo[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    const cmdline = readOr(`/proc/${entry}/cmdline`, (p) => readFileSync(p, 'utf8')).replace(/\0+$/, '');
    if (!cmdline) continue; // a kernel thread, a zombie, or gone
    out.push({
      pid,
      cmdline: cmdline.split('\0').join(' '),
      environ: readOr(`/proc/${entry}/environ`, (p) => readFileSync(p, 'utf8')),
      cwd: readOr(`/proc/${entry}/cwd`, readlinkSync),
    });
  }
  return out;
}

/** Processes running git (`git`, `git-upload-pack`, `/usr/lib/git-core/git-index-pack`, …). */
export function gitProcesses(): ProcessInfo[] {
  return listProcesses().filter((p) => /(^|\/)git(-[\w-]+)?$/.test(p.cmdline.split(' ')[0] ?? ''));
}

/** Processes whose command line, environment or working directory mentions one of `needles`. */
export function processesMentioning(needles: string[]): ProcessInfo[] {
  return listProcesses().filter(
    (p) =>
      p.pid !== process.pid &&
      needles.some((n) => p.cmdline.includes(n) || p.environ.includes(n) || p.cwd.startsWith(n)),
  );
}

/** Random hex, for secrets and names. */
export function randomHex(bytes = 8): string {
  return randomBytes(bytes).toString('hex');
}
