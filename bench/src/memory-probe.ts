/**
 * Preloaded into the Runcast server (`node --expose-gc --import …/memory-probe.js main.js serve`):
 * answers the harness's `memory` command with the heap after a full collection, and stops the
 * server if the harness goes away. It changes nothing else in the process.
 */
import { memoryAfterGc, serveCommands } from './ipc.js';

if (process.send) {
  serveCommands(
    { memory: () => memoryAfterGc() },
    {
      announce: false,
      // SIGTERM runs the server's own graceful shutdown.
      onOrphaned: () => process.kill(process.pid, 'SIGTERM'),
    },
  );
}
