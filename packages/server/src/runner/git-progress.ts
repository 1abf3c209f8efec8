import { StringDecoder } from 'node:string_decoder';

// Reads the progress git prints on stderr with `--progress`. Assumes git runs with `LC_ALL=C`: the
// titles and units are translated in other locales. git splits a line in two when it is wider than
// the terminal (80 columns when stderr is not a tty); local lines stay far below that unless
// COLUMNS is set small, and remote lines carry no byte counts, so the split form is not parsed.

/** A step of git's pack transfer, named after the title git prints for it. */
export type GitProgressPhase =
  | 'enumerating'
  | 'counting'
  | 'compressing'
  | 'writing'
  | 'receiving'
  | 'unpacking'
  | 'resolving'
  | 'checking-connectivity';

/** One progress line of git, e.g. `Receiving objects:  42% (4250/10000), 1.23 MiB | 812.00 KiB/s`. */
export interface GitProgress {
  phase: GitProgressPhase;
  /** The percentage git printed; absent on count-only lines such as `Enumerating objects: 1234`. */
  percentage?: number;
  /** Items (objects, deltas) processed so far. */
  done: number;
  /** Items in the phase; absent on count-only lines. */
  total?: number;
  /** Bytes transferred so far (receiving, unpacking, writing), once git starts showing them. */
  bytes?: number;
  /** Transfer rate in bytes per second, shown alongside `bytes`. */
  ratePerS?: number;
  /** True on the last line of the phase (`, done.` or `, completed with N local objects.`). */
  finished: boolean;
  /** True when the line came from the other side of the connection (`remote: ` prefix). */
  remote: boolean;
}

/** Which transfer a progress line belongs to: EXPORT clones (fetch), APPLY pushes. */
export type GitTransferKind = 'fetch' | 'push';

const PHASES: ReadonlyMap<string, GitProgressPhase> = new Map([
  ['Enumerating objects', 'enumerating'],
  ['Counting objects', 'counting'],
  ['Compressing objects', 'compressing'],
  ['Writing objects', 'writing'],
  ['Receiving objects', 'receiving'],
  ['Unpacking objects', 'unpacking'],
  ['Resolving deltas', 'resolving'],
  ['Checking connectivity', 'checking-connectivity'],
]);

const UNIT_BYTES: ReadonlyMap<string, number> = new Map([
  ['byte', 1],
  ['bytes', 1],
  ['KiB', 1024],
  ['MiB', 1024 ** 2],
  ['GiB', 1024 ** 3],
  ['TiB', 1024 ** 4],
]);

const SIZE = String.raw`(\d+(?:\.\d+)?) (bytes?|[KMGT]iB)`;
const LINE = new RegExp(
  String.raw`^([A-Z][a-z]+ [a-z]+): +(?:(\d+)% \((\d+)/(\d+)\)|(\d+))` +
    String.raw`(?:, ${SIZE} \| ${SIZE}/s)?(, (?:done|completed with \d+ local objects?)\.)?$`,
);

const REMOTE_PREFIX = 'remote: ';
// The sideband ends each remote message with "clear to end of line": ESC[K on a terminal, spaces
// otherwise, so the previous, longer progress line does not show through.
const CLEAR_EOL = '\u001b[K';

function toBytes(amount: string | undefined, unit: string | undefined): number | undefined {
  if (amount === undefined || unit === undefined) return undefined;
  const scale = UNIT_BYTES.get(unit);
  return scale === undefined ? undefined : Math.round(Number(amount) * scale);
}

/**
 * Parses one line of git's progress output (one `\r`- or `\n`-separated piece of its stderr).
 * Anything that is not a progress line answers undefined, including git's summaries such as
 * `Total 15 (delta 2), reused 0 (delta 0), pack-reused 0` and `Delta compression using up to 2 threads`.
 */
export function parseGitProgress(line: string): GitProgress | undefined {
  let text = line.replaceAll(CLEAR_EOL, '').trimEnd();
  const remote = text.startsWith(REMOTE_PREFIX);
  if (remote) text = text.slice(REMOTE_PREFIX.length);
  const match = LINE.exec(text);
  if (!match) return undefined;
  const [, title, percent, done, total, count, bytes, bytesUnit, rate, rateUnit, finished] = match;
  const phase = PHASES.get(title ?? '');
  if (!phase) return undefined;
  const progress: GitProgress = {
    phase,
    done: Number(count ?? done),
    finished: finished !== undefined,
    remote,
  };
  if (percent !== undefined) progress.percentage = Number(percent);
  if (total !== undefined) progress.total = Number(total);
  const byteCount = toBytes(bytes, bytesUnit);
  if (byteCount !== undefined) progress.bytes = byteCount;
  const ratePerS = toBytes(rate, rateUnit);
  if (ratePerS !== undefined) progress.ratePerS = ratePerS;
  return progress;
}

/**
 * Cuts git's stderr, arriving in chunks of any size, into complete lines. `\r`, `\n` and `\r\n`
 * all end a line; empty lines are dropped.
 */
export class GitProgressSplitter {
  // Decodes UTF-8 across chunk boundaries: ref names and paths in git's messages may be non-ASCII.
  private readonly decoder = new StringDecoder('utf8');
  private partial = '';

  /** Takes the next chunk and answers the lines it completes. */
  push(chunk: Buffer | string): string[] {
    return this.split(typeof chunk === 'string' ? chunk : this.decoder.write(chunk));
  }

  /** Answers the last, unterminated line, if any; call once git's stderr has closed. */
  end(): string[] {
    const lines = this.split(this.decoder.end());
    if (this.partial !== '') lines.push(this.partial);
    this.partial = '';
    return lines;
  }

  private split(text: string): string[] {
    // Splitting on each of `\r` and `\n` turns `\r\n` into a line and an empty one, which is
    // dropped, wherever a chunk boundary falls.
    const pieces = (this.partial + text).split(/[\r\n]/);
    this.partial = pieces.pop() ?? '';
    return pieces.filter((line) => line !== '');
  }
}

/** Where a phase sits in a transfer, in hundredths of the whole: [start, width]. */
type Span = readonly [number, number];

// The phases in the order git prints them, weighted by how long they take on a network: the pack
// transfer dominates. A phase that a transfer never shows gets no width, placed where it would run.
// Unpacking replaces both receiving and resolving when git unpacks a small pack into loose objects.
const SPANS: Record<GitTransferKind, Record<GitProgressPhase, Span>> = {
  fetch: {
    enumerating: [0, 2],
    counting: [2, 4],
    compressing: [6, 9],
    writing: [15, 0],
    receiving: [15, 70],
    unpacking: [15, 85],
    resolving: [85, 15],
    'checking-connectivity': [100, 0],
  },
  push: {
    enumerating: [0, 5],
    counting: [5, 5],
    compressing: [10, 15],
    writing: [25, 65],
    receiving: [90, 0],
    unpacking: [90, 10],
    resolving: [90, 10],
    'checking-connectivity': [100, 0],
  },
};

function phaseFraction(progress: GitProgress): number {
  if (progress.finished) return 1;
  if (progress.total !== undefined && progress.total > 0) return progress.done / progress.total;
  // A count-only line says how far git got, not how far it has to go.
  return 0;
}

/**
 * The fraction in [0, 1] of a whole clone (`fetch`) or push that a progress line stands for. It
 * never goes down over the lines of one transfer; it may end below 1 when git skips the last
 * phases (no deltas to resolve), so the caller completes the stage when git exits.
 */
export function stageFraction(progress: GitProgress, kind: GitTransferKind): number {
  const [start, width] = SPANS[kind][progress.phase];
  const within = Math.min(1, Math.max(0, phaseFraction(progress)));
  return Math.min(1, (start + width * within) / 100);
}
