import type { RunStatus } from '@runcast/protocol';

/** A run's status as a coloured word (the word carries the meaning, the colour helps). */
export function StatusBadge({ status }: { status: RunStatus | undefined }) {
  return (
    <span className={`badge badge-${(status ?? 'unknown').toLowerCase()}`} data-testid="status">
      {status ?? '…'}
    </span>
  );
}
