import { describe, expect, it } from 'vitest';
import { canTransition, isTerminal } from './run-status.js';
import { RUN_KINDS, RUN_STATUSES, type RunKind, type RunStatus } from './schemas.js';

// The whole table, written out: every pair not listed here must be refused.
const LEGAL: Record<RunKind, readonly string[]> = {
  'git-mirror': [
    'CREATED>CREATED',
    'CREATED>QUEUED',
    'CREATED>CANCELED',
    'QUEUED>QUEUED',
    'QUEUED>RUNNING',
    'QUEUED>FAILED',
    'QUEUED>CANCELED',
    'RUNNING>RUNNING',
    'RUNNING>COMPLETED',
    'RUNNING>FAILED',
    'RUNNING>CANCELED',
  ],
  external: [
    'CREATED>CREATED',
    'CREATED>QUEUED',
    'CREATED>RUNNING',
    'CREATED>FAILED',
    'CREATED>CANCELED',
    'QUEUED>QUEUED',
    'QUEUED>RUNNING',
    'QUEUED>FAILED',
    'QUEUED>CANCELED',
    'RUNNING>RUNNING',
    'RUNNING>COMPLETED',
    'RUNNING>FAILED',
    'RUNNING>CANCELED',
  ],
};

const pairs = RUN_KINDS.flatMap((kind) =>
  RUN_STATUSES.flatMap((from) =>
    RUN_STATUSES.map((to) => [kind, from, to] as [RunKind, RunStatus, RunStatus]),
  ),
);

describe('run state machine', () => {
  it.each(pairs)('%s: %s -> %s', (kind, from, to) => {
    expect(canTransition(kind, from, to)).toBe(LEGAL[kind].includes(`${from}>${to}`));
  });

  it('treats exactly COMPLETED, FAILED and CANCELED as terminal', () => {
    expect(RUN_STATUSES.filter(isTerminal)).toEqual(['COMPLETED', 'FAILED', 'CANCELED']);
  });

  it('never leaves a terminal state, not even to itself', () => {
    for (const kind of RUN_KINDS) {
      for (const from of RUN_STATUSES.filter(isTerminal)) {
        expect(RUN_STATUSES.filter((to) => canTransition(kind, from, to))).toEqual([]);
      }
    }
  });
});
