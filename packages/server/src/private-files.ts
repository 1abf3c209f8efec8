import { chmodSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

// What the server keeps on disk (database, keys, mirrors of private repositories) is its own
// user's only. Modes are set with chmod after creation: a mode given to mkdir or open is
// narrowed by the process umask, so alone it says nothing about the result.

/** Mode of a directory the server creates: owner only. */
const PRIVATE_DIR_MODE = 0o700;
/** Mode of a file the server creates: owner read and write only. */
const PRIVATE_FILE_MODE = 0o600;

/**
 * Creates `dir` and its missing parents with mode 0700. A directory that already exists keeps
 * its mode: where the operator put the data is theirs to set up.
 */
export function makePrivateDir(dir: string): void {
  const first = mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  if (first === undefined) return;
  const top = resolve(first);
  for (let current = resolve(dir); ; current = dirname(current)) {
    chmodSync(current, PRIVATE_DIR_MODE);
    if (current === top || current === dirname(current)) return;
  }
}

/** Writes a new file with mode 0600; fails when it exists. */
export function writePrivateFile(file: string, content: string): void {
  writeFileSync(file, content, { mode: PRIVATE_FILE_MODE, flag: 'wx' });
  chmodSync(file, PRIVATE_FILE_MODE);
}

/** Creates `file` empty with mode 0600 when missing (what opens it next keeps that mode), else restricts it. */
export function touchPrivateFile(file: string): void {
  try {
    writePrivateFile(file, '');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    restrictFile(file);
  }
}

/**
 * Narrows an existing file of this process's user to 0600 when group or others may read it
 * (a data dir from before modes were set). Missing files and files of other users are left.
 */
export function restrictFile(file: string): void {
  const stat = statSync(file, { throwIfNoEntry: false });
  if (!stat || stat.uid !== process.getuid?.() || (stat.mode & 0o077) === 0) return;
  chmodSync(file, PRIVATE_FILE_MODE);
}
