import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (bench/dist/paths.js is two levels below it). */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** The built Runcast server. */
export const SERVER_MAIN = fileURLToPath(new URL('../../packages/server/dist/main.js', import.meta.url));
export const RESULTS_DIR = fileURLToPath(new URL('../results/', import.meta.url));

/** A compiled bench script, e.g. `script('load/subscribers.js')`. */
export function script(relative: string): string {
  return fileURLToPath(new URL(`./${relative}`, import.meta.url));
}

export const MEMORY_PROBE_URL = new URL('./memory-probe.js', import.meta.url).href;

let scratch: string | undefined;

/** This run's scratch directory (servers' data dirs, profiles); removed by `removeScratchDir`. */
export function scratchDir(): string {
  scratch ??= mkdtempSync(join(tmpdir(), 'runcast-bench-'));
  return scratch;
}

export function removeScratchDir(): void {
  if (!scratch) return;
  try {
    // A server interrupted by the same Ctrl-C may still be deleting its WAL files: retry.
    rmSync(scratch, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
  } catch (err) {
    console.error(`bench: could not remove ${scratch}: ${(err as Error).message}`);
  }
  scratch = undefined;
}
