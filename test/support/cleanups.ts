import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Work to undo after a test, last registered first; every task runs, the first error is thrown. */
export class Cleanups {
  private readonly tasks: (() => Promise<void> | void)[] = [];

  push(task: () => Promise<void> | void): void {
    this.tasks.push(task);
  }

  /** A new directory under the system's temp dir, removed by `run`. */
  tempDir(prefix: string): string {
    const dir = mkdtempSync(join(tmpdir(), prefix));
    this.push(() => rmSync(dir, { recursive: true, force: true }));
    return dir;
  }

  async run(): Promise<void> {
    const errors: unknown[] = [];
    for (const task of this.tasks.splice(0).reverse()) {
      try {
        await task();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) throw errors[0];
  }
}
