import type { RunSnapshot } from '@runcast/protocol';
import { expect } from 'vitest';
import type { Api } from '../../packages/server/src/test-support/server.js';

/** The statuses a run ends in. */
export const TERMINAL = ['COMPLETED', 'FAILED', 'CANCELED'];

export const ended = (run: RunSnapshot) => TERMINAL.includes(run.status);

/**
 * Follows the run with long-polls (`/progress?since=<seq>&wait=…`) until `done` holds for its
 * snapshot; fails at the deadline.
 */
export async function waitForRun(
  api: Api,
  runId: string,
  done: (run: RunSnapshot) => boolean,
  timeoutMs = 60_000,
): Promise<RunSnapshot> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const answer = await api.get<RunSnapshot>(`/runs/${runId}`);
    expect(answer.status).toBe(200);
    const run = answer.body;
    if (done(run)) return run;
    if (Date.now() > deadline) {
      throw new Error(
        `run ${runId} did not reach the expected state in ${timeoutMs} ms: ${JSON.stringify(run)}`,
      );
    }
    if (TERMINAL.includes(run.status)) {
      throw new Error(`run ${runId} ended ${run.status} instead: ${JSON.stringify(run.error)}`);
    }
    await api.get(`/runs/${runId}/progress?since=${run.seq}&wait=1`);
  }
}
