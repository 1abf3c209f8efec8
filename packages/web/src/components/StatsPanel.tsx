import type { RunSnapshot } from '@runcast/protocol';
import { bytes, count } from '../format.js';

/** Run counters, and the error panel of a failed run. */
export function StatsPanel({ snapshot }: { snapshot: RunSnapshot }) {
  const stats = snapshot.stats ?? {};
  const repos =
    stats.repositories_done !== undefined
      ? `${count(stats.repositories_done)} / ${count(stats.repositories)}`
      : count(stats.repositories);
  return (
    <>
      <section className="card stats" aria-label="Statistics">
        <dl>
          <div>
            <dt>Repositories</dt>
            <dd>{repos}</dd>
          </div>
          <div>
            <dt>Refs</dt>
            <dd>{count(stats.refs)}</dd>
          </div>
          <div>
            <dt>Objects</dt>
            <dd>{count(stats.objects)}</dd>
          </div>
          <div>
            <dt>Transferred</dt>
            <dd>{bytes(stats.bytes)}</dd>
          </div>
          <div>
            <dt>Errors</dt>
            <dd className={stats.errors ? 'has-errors' : undefined}>{count(stats.errors ?? 0)}</dd>
          </div>
        </dl>
      </section>
      {snapshot.status === 'FAILED' && (
        <section className="card error-panel" role="alert" aria-label="Error">
          <h2>Run failed{snapshot.error ? `: ${snapshot.error.code}` : ''}</h2>
          <p>{snapshot.error?.message ?? 'The worker reported a failure without a message.'}</p>
        </section>
      )}
    </>
  );
}
