import { type RunKind, type RunStatus, TERMINAL_STATUSES, type TerminalStatus } from './schemas.js';

/** True for COMPLETED, FAILED and CANCELED: states no run ever leaves. */
export function isTerminal(status: RunStatus): status is TerminalStatus {
  return (TERMINAL_STATUSES as readonly string[]).includes(status);
}

const NEXT: Record<RunStatus, readonly RunStatus[]> = {
  CREATED: ['QUEUED', 'CANCELED'],
  QUEUED: ['RUNNING', 'FAILED', 'CANCELED'],
  RUNNING: ['COMPLETED', 'FAILED', 'CANCELED'],
  COMPLETED: [],
  FAILED: [],
  CANCELED: [],
};

/**
 * Whether a run of `kind` may move from `from` to `to`. Staying in the same non-terminal state is
 * allowed (a worker repeats RUNNING with each update); an `external` run is moved by its worker,
 * which has no queue, so it may go straight from CREATED to RUNNING or FAILED.
 */
export function canTransition(kind: RunKind, from: RunStatus, to: RunStatus): boolean {
  if (isTerminal(from)) return false;
  if (from === to) return true;
  if (kind === 'external' && from === 'CREATED' && (to === 'RUNNING' || to === 'FAILED')) return true;
  return NEXT[from].includes(to);
}
