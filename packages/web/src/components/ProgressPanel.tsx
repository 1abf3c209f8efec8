import type { RunSnapshot } from '@runcast/protocol';
import { count, duration } from '../format.js';
import { useNow } from '../hooks.js';

/** The progress bar, message, counts, rate, ETA and elapsed time (which stops at the end). */
export function ProgressPanel({ snapshot }: { snapshot: RunSnapshot }) {
  const now = useNow(1000);
  const progress = snapshot.progress ?? {};
  const percentage = progress.percentage ?? (snapshot.status === 'COMPLETED' ? 100 : 0);
  const end = snapshot.finished_at ? Date.parse(snapshot.finished_at) : now;
  // max(0, …): the clock of this page may trail the server's by a moment.
  const elapsed = snapshot.started_at ? Math.max(0, end - Date.parse(snapshot.started_at)) / 1000 : undefined;
  const unit = progress.unit ? ` ${progress.unit}` : '';
  return (
    <section className="card progress" aria-label="Progress">
      <div
        className="bar"
        role="progressbar"
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={Math.round(percentage)}
      >
        <div className="bar-fill" style={{ width: `${Math.min(100, Math.max(0, percentage))}%` }} />
      </div>
      <div className="progress-line">
        <strong className="percentage" data-testid="percentage">
          {percentage.toFixed(1)}%
        </strong>
        <span className="message" data-testid="message">
          {progress.message ?? snapshot.current_stage ?? ''}
        </span>
      </div>
      <dl className="facts">
        <div>
          <dt>Done</dt>
          <dd>
            {count(progress.done)}
            {progress.total !== undefined && progress.total !== null ? ` / ${count(progress.total)}` : ''}
            {unit}
          </dd>
        </div>
        <div>
          <dt>Rate</dt>
          <dd>{progress.rate_per_s != null ? `${count(Math.round(progress.rate_per_s))}${unit}/s` : '—'}</dd>
        </div>
        <div>
          <dt>ETA</dt>
          <dd>{progress.eta_s != null && !snapshot.finished_at ? duration(progress.eta_s) : '—'}</dd>
        </div>
        <div>
          <dt>Elapsed</dt>
          <dd data-testid="elapsed">{elapsed === undefined ? '—' : duration(elapsed)}</dd>
        </div>
      </dl>
      {snapshot.current_stage && <p className="step">{snapshot.current_stage}</p>}
    </section>
  );
}
