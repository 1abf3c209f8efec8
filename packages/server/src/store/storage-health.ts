import { statfsSync } from 'node:fs';
import { AppError } from '../errors.js';

/** Free space a probe must find before it reports the disk usable again: room for many commits. */
const MIN_FREE_BYTES = 1024 * 1024;
// PostgreSQL reports a full disk as SQLSTATE 53100 (disk_full).
const FULL_CODES = new Set(['SQLITE_FULL', 'ENOSPC', 'EDQUOT', '53100']);

/** True when `err` says the disk (or the user's quota) is full: SQLITE_FULL, ENOSPC or PostgreSQL's disk_full. */
export function isStorageFull(err: unknown): boolean {
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  return typeof code === 'string' && FULL_CODES.has(code);
}

/** The contract's answer to a write the disk had no room for. */
export function storageFullError(): AppError {
  return new AppError(
    'STORAGE_FULL',
    "the server's storage is full: nothing was stored; the request can be repeated once space is freed",
  );
}

function freeBytes(dir: string): number {
  try {
    const stats = statfsSync(dir);
    return stats.bavail * stats.bsize;
  } catch {
    return 0;
  }
}

export interface StorageHealthOptions {
  /** A directory on the store's file system; undefined for an in-memory database. */
  dir: string | undefined;
  /** Told when the disk is found full (with the error) and when it is usable again. */
  onChange?: (full: boolean, err?: unknown) => void;
}

/**
 * Whether the disk under the store was found full. A write refused for lack of space marks it
 * full; the next write that succeeds, or a probe that finds room, marks it usable again — the
 * server recovers by itself when space returns.
 */
export class StorageHealth {
  private full = false;

  constructor(private readonly options: StorageHealthOptions) {}

  /** Runs a write: a lack of space marks the disk full and becomes STORAGE_FULL. */
  write<T>(write: () => T): T {
    let result: T;
    try {
      result = write();
    } catch (err) {
      throw this.failed(err);
    }
    this.succeeded();
    return result;
  }

  /** Notes a failed write; answers the error to throw in its place. */
  failed(err: unknown): unknown {
    if (!isStorageFull(err)) return err;
    if (!this.full) {
      this.full = true;
      this.options.onChange?.(true, err);
    }
    return storageFullError();
  }

  /** Notes a write that was stored. */
  succeeded(): void {
    if (!this.full) return;
    this.full = false;
    this.options.onChange?.(false);
  }

  /** Throws STORAGE_FULL while the last write found the disk full and a probe finds no room yet. */
  check(): void {
    if (!this.full) return;
    if (this.options.dir !== undefined && freeBytes(this.options.dir) >= MIN_FREE_BYTES) this.succeeded();
    else throw storageFullError();
  }
}
