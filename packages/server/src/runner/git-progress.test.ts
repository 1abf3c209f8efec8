import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import {
  type GitProgress,
  GitProgressSplitter,
  type GitTransferKind,
  parseGitProgress,
  stageFraction,
} from './git-progress.js';

// Captured from git 2.39 by fixtures/capture.sh: a 300-commit repository with random binary
// blobs, cloned with `git clone --mirror --progress file://…` and pushed with `git push --mirror`.
const FIXTURES = {
  fetch: readFileSync(new URL('./fixtures/clone-mirror.stderr', import.meta.url)),
  push: readFileSync(new URL('./fixtures/push.stderr', import.meta.url)),
} satisfies Record<GitTransferKind, Buffer>;

const MiB = 1024 ** 2;

function splitAll(chunks: Array<Buffer | string>): string[] {
  const splitter = new GitProgressSplitter();
  return [...chunks.flatMap((chunk) => splitter.push(chunk)), ...splitter.end()];
}

function linesOf(kind: GitTransferKind): string[] {
  return splitAll([FIXTURES[kind]]);
}

function progressOf(kind: GitTransferKind): GitProgress[] {
  return linesOf(kind).flatMap((line) => parseGitProgress(line) ?? []);
}

/** The phases in the order they appear, each once, with the side of the connection that ran it. */
function phaseSequence(progress: GitProgress[]): string[] {
  const phases: string[] = [];
  for (const p of progress) {
    const name = `${p.remote ? 'remote ' : ''}${p.phase}`;
    if (phases.at(-1) !== name) phases.push(name);
  }
  return phases;
}

/** `Total 1500 (delta 295), …` as git prints it at the end of a pack, with or without `remote: `. */
function packTotals(kind: GitTransferKind): { objects: number; deltas: number } {
  const line = linesOf(kind).find((l) => /^(remote: )?Total \d+ \(delta \d+\)/.test(l));
  const match = /Total (\d+) \(delta (\d+)\)/.exec(line ?? '');
  return { objects: Number(match?.[1]), deltas: Number(match?.[2]) };
}

/** A deterministic generator, so a failing random chunking can be replayed. */
function random(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
    return state / 2 ** 31;
  };
}

describe('captured git output', () => {
  it('is real progress output: carriage-return separated and small', () => {
    for (const data of Object.values(FIXTURES)) {
      expect(data.includes('\r')).toBe(true);
      expect(data.length).toBeLessThan(20_000);
    }
  });

  it.each(['fetch', 'push'] as const)('%s: every line is progress or one of git’s known messages', (kind) => {
    const lines = linesOf(kind);
    const nonProgress = lines.filter((line) => parseGitProgress(line) === undefined);
    for (const line of nonProgress) {
      expect(line).toMatch(/^(Cloning into |(remote: )?Total \d+|Delta compression|To file:| \* \[new)/);
    }
    for (const line of lines) {
      if (/^(remote: )?[A-Z][a-z]+ (objects|deltas):/.test(line))
        expect(parseGitProgress(line)).toBeDefined();
    }
    expect(lines.length - nonProgress.length).toBeGreaterThan(300);
  });

  it('fetch: recognises the phases of a mirror clone, remote ones first', () => {
    expect(phaseSequence(progressOf('fetch'))).toEqual([
      'remote enumerating',
      'remote counting',
      'remote compressing',
      'receiving',
      'resolving',
    ]);
  });

  it('push: recognises the phases of a mirror push, resolving on the remote last', () => {
    expect(phaseSequence(progressOf('push'))).toEqual([
      'enumerating',
      'counting',
      'compressing',
      'writing',
      'remote resolving',
    ]);
  });

  it.each(['fetch', 'push'] as const)('%s: counts and percentages agree with git’s arithmetic', (kind) => {
    for (const p of progressOf(kind)) {
      if (p.total === undefined) {
        expect(p.percentage).toBeUndefined();
        continue;
      }
      expect(p.done).toBeLessThanOrEqual(p.total);
      // progress.c: percent = n * 100 / total, in integers.
      expect(p.percentage).toBe(Math.floor((p.done * 100) / p.total));
    }
  });

  it.each(['fetch', 'push'] as const)('%s: each phase ends with exactly one finished line', (kind) => {
    const progress = progressOf(kind);
    for (const phase of new Set(progress.map((p) => p.phase))) {
      const lines = progress.filter((p) => p.phase === phase);
      expect(lines.filter((p) => p.finished)).toHaveLength(1);
      const last = lines.at(-1)!;
      expect(last.finished).toBe(true);
      if (last.total !== undefined) expect([last.done, last.percentage]).toEqual([last.total, 100]);
    }
  });

  it.each(['fetch', 'push'] as const)('%s: totals match the pack summary git prints', (kind) => {
    const { objects, deltas } = packTotals(kind);
    expect(objects).toBe(1500);
    const progress = progressOf(kind);
    const final = (phase: GitProgress['phase']) => progress.filter((p) => p.phase === phase).at(-1);
    expect(final('enumerating')).toMatchObject({ done: objects, finished: true });
    expect(final('enumerating')?.total).toBeUndefined();
    expect(final('counting')).toMatchObject({ done: objects, total: objects });
    expect(final(kind === 'fetch' ? 'receiving' : 'writing')).toMatchObject({
      done: objects,
      total: objects,
    });
    expect(final('resolving')).toMatchObject({ done: deltas, total: deltas });
  });

  it.each([
    ['fetch', 'receiving'],
    ['push', 'writing'],
  ] as const)('%s: %s reports growing byte counts and a rate near the 1 MiB/s throttle', (kind, phase) => {
    const transfer = progressOf(kind).filter((p) => p.phase === phase);
    const withBytes = transfer.filter((p) => p.bytes !== undefined);
    expect(withBytes.length).toBeGreaterThan(10);
    const bytes = withBytes.map((p) => p.bytes!);
    expect(bytes).toEqual([...bytes].sort((a, b) => a - b));
    const last = transfer.at(-1)!;
    // About 2.5 MiB of random blobs; git prints two decimals, hence the tolerance.
    expect(last.bytes).toBeGreaterThan(2.4 * MiB);
    expect(last.bytes).toBeLessThan(2.7 * MiB);
    expect(last.ratePerS).toBeGreaterThan(0.8 * MiB);
    expect(last.ratePerS).toBeLessThan(1.2 * MiB);
  });

  it.each(['fetch', 'push'] as const)('%s: the stage fraction never goes down and ends at 1', (kind) => {
    const fractions = progressOf(kind).map((p) => stageFraction(p, kind));
    for (const [i, f] of fractions.entries()) {
      expect(f).toBeGreaterThanOrEqual(0);
      expect(f).toBeLessThanOrEqual(1);
      if (i > 0) expect(f).toBeGreaterThanOrEqual(fractions[i - 1]!);
    }
    expect(fractions[0]).toBeLessThanOrEqual(0.05);
    expect(fractions.at(-1)).toBe(1);
  });
});

describe('GitProgressSplitter', () => {
  it.each(['fetch', 'push'] as const)('%s: a cut at every byte boundary yields the same lines', (kind) => {
    const data = FIXTURES[kind];
    // Lines hold no `\n`, so comparing them joined is exact, and far cheaper than 20,000 toEqual.
    const expected = linesOf(kind).join('\n');
    const wrongCuts: number[] = [];
    for (let cut = 1; cut < data.length; cut++) {
      const lines = splitAll([data.subarray(0, cut), data.subarray(cut)]);
      if (lines.join('\n') !== expected) wrongCuts.push(cut);
    }
    expect(wrongCuts).toEqual([]);
  });

  it.each(['fetch', 'push'] as const)('%s: many random chunkings yield the same lines', (kind) => {
    const data = FIXTURES[kind];
    const expected = linesOf(kind);
    const next = random(kind.length);
    for (let round = 0; round < 200; round++) {
      const chunks: Buffer[] = [];
      for (let at = 0; at < data.length; ) {
        const size = 1 + Math.floor(next() * (round % 2 === 0 ? 8 : 400));
        chunks.push(data.subarray(at, at + size));
        at += size;
      }
      expect(splitAll(chunks)).toEqual(expected);
    }
  });

  it('ends lines at \\r, \\n and \\r\\n, even when a chunk ends between \\r and \\n', () => {
    expect(splitAll(['a\rb\nc\r\nd'])).toEqual(['a', 'b', 'c', 'd']);
    expect(splitAll(['a\r', '\nb\r', '\n'])).toEqual(['a', 'b']);
    expect(splitAll(['\r\n\n\r'])).toEqual([]);
  });

  it('holds an unterminated line until it ends or the stream closes', () => {
    const splitter = new GitProgressSplitter();
    expect(splitter.push('Receiving obj')).toEqual([]);
    expect(splitter.push('ects:  1% (1/100)\rReceiving')).toEqual(['Receiving objects:  1% (1/100)']);
    expect(splitter.end()).toEqual(['Receiving']);
    expect(splitter.end()).toEqual([]);
  });

  it('keeps a multi-byte character cut between two chunks', () => {
    const data = Buffer.from(' * [new branch]      tâche -> tâche\n');
    const cut = data.indexOf(0xc3) + 1;
    expect(splitAll([data.subarray(0, cut), data.subarray(cut)])).toEqual([
      ' * [new branch]      tâche -> tâche',
    ]);
  });
});

describe('parseGitProgress', () => {
  it('reads a remote line with a percentage', () => {
    expect(parseGitProgress('remote: Compressing objects:  45% (9/20)')).toEqual({
      phase: 'compressing',
      percentage: 45,
      done: 9,
      total: 20,
      finished: false,
      remote: true,
    });
  });

  it('reads a finished line, with the sideband’s trailing spaces or ESC[K', () => {
    const expected = {
      phase: 'counting',
      percentage: 100,
      done: 12,
      total: 12,
      finished: true,
      remote: true,
    };
    expect(parseGitProgress('remote: Counting objects: 100% (12/12), done.        ')).toEqual(expected);
    expect(parseGitProgress('remote: Counting objects: 100% (12/12), done.\u001b[K')).toEqual(expected);
  });

  it('reads lines without a percentage', () => {
    expect(parseGitProgress('Enumerating objects: 1234, done.')).toEqual({
      phase: 'enumerating',
      done: 1234,
      finished: true,
      remote: false,
    });
    expect(parseGitProgress('remote: Counting objects: 523')).toEqual({
      phase: 'counting',
      done: 523,
      finished: false,
      remote: true,
    });
    expect(parseGitProgress('Checking connectivity: 1500, done.')).toMatchObject({
      phase: 'checking-connectivity',
      done: 1500,
    });
  });

  it.each([
    ['Receiving objects:  42% (4250/10000), 1.23 MiB | 812.00 KiB/s', 1.23 * MiB, 812 * 1024],
    ['Writing objects:  67% (8375/12500), 12.00 MiB | 2.00 MiB/s', 12 * MiB, 2 * MiB],
    ['Receiving objects:  99% (99/100), 3.50 GiB | 25.10 MiB/s', 3.5 * 1024 * MiB, 25.1 * MiB],
    ['Unpacking objects: 100% (3/3), 256 bytes | 256.00 KiB/s, done.', 256, 256 * 1024],
    ['Unpacking objects: 100% (1/1), 1 byte | 1 byte/s, done.', 1, 1],
    ['Writing objects: 100% (3/3), 900 bytes | 900.00 KiB/s, done.', 900, 900 * 1024],
  ])('converts the units of %s', (line, bytes, ratePerS) => {
    const progress = parseGitProgress(line);
    expect(progress?.bytes).toBe(Math.round(bytes));
    expect(progress?.ratePerS).toBe(Math.round(ratePerS));
  });

  it('reads the percentage and counts of a transfer line', () => {
    expect(parseGitProgress('Receiving objects:  42% (4250/10000), 1.23 MiB | 812.00 KiB/s')).toMatchObject({
      phase: 'receiving',
      percentage: 42,
      done: 4250,
      total: 10000,
      finished: false,
      remote: false,
    });
  });

  it('treats "completed with N local objects" as the end of resolving', () => {
    expect(
      parseGitProgress('remote: Resolving deltas: 100% (2/2), completed with 2 local objects.'),
    ).toMatchObject({ phase: 'resolving', done: 2, total: 2, finished: true, remote: true });
  });

  it.each([
    '',
    'remote: ',
    "Cloning into bare repository 'dst.git'...",
    'Delta compression using up to 2 threads',
    'Total 15 (delta 2), reused 0 (delta 0), pack-reused 0',
    'remote: Total 1500 (delta 295), reused 1500 (delta 295), pack-reused 0        ',
    ' * [new branch]      master -> master',
    'fatal: Could not read from remote repository.',
    'error: 12',
    'Receiving objects: lots',
    'Counting objects: 12% (a/b)',
    'Reticulating splines:  50% (1/2)',
    'Objets reçus:  42% (4250/10000)',
    'Receiving objects:  42% (4250/10000), 1.23 PiB | 1.00 MiB/s',
    'remote: remote: Counting objects: 100% (12/12), done.',
    'Writing objects:  67% (8375/12500) trailing',
  ])('answers undefined for %j', (line) => {
    expect(parseGitProgress(line)).toBeUndefined();
  });
});

describe('stageFraction', () => {
  const line = (text: string): GitProgress => parseGitProgress(text)!;

  it('lets receiving dominate a clone and writing dominate a push', () => {
    const start = (text: string, kind: GitTransferKind) => stageFraction(line(text), kind);
    const end = (text: string, kind: GitTransferKind) => stageFraction(line(`${text}, done.`), kind);
    const receiving = 'Receiving objects:  100% (10/10)';
    const writing = 'Writing objects:  100% (10/10)';
    expect(end(receiving, 'fetch') - start('Receiving objects:   0% (0/10)', 'fetch')).toBeGreaterThan(0.5);
    expect(end(writing, 'push') - start('Writing objects:   0% (0/10)', 'push')).toBeGreaterThan(0.5);
  });

  it('moves within a phase as objects arrive', () => {
    const at = (done: number) => stageFraction(line(`Receiving objects:  ${done}% (${done}/100)`), 'fetch');
    expect(at(10)).toBeLessThan(at(50));
    expect(at(50)).toBeLessThan(at(90));
  });

  it('ends a small fetch at 1 when git unpacks instead of indexing', () => {
    expect(
      stageFraction(line('Unpacking objects: 100% (3/3), 256 bytes | 256.00 KiB/s, done.'), 'fetch'),
    ).toBe(1);
  });

  it('holds a count-only phase at its start until it finishes', () => {
    const going = stageFraction(line('Enumerating objects: 500'), 'push');
    const finished = stageFraction(line('Enumerating objects: 1000, done.'), 'push');
    const counting = stageFraction(line('Counting objects:   0% (1/1000)'), 'push');
    expect(going).toBe(0);
    expect(finished).toBeGreaterThan(going);
    expect(counting).toBeGreaterThanOrEqual(finished);
  });
});
