import {
  isTerminal,
  type Project,
  RUN_STATUSES,
  type RunList,
  type RunSnapshot,
  type RunStatus,
} from '@runcast/protocol';
import { useEffect, useState } from 'react';
import { ApiError, api } from '../api.js';
import { ConnectionIndicator } from '../components/ConnectionIndicator.js';
import { StatusBadge } from '../components/StatusBadge.js';
import { clock, shortId } from '../format.js';
import { useConnection, useRunStates } from '../hooks.js';
import { Link } from '../router.js';

export function ProjectRunsPage({ projectId }: { projectId: string }) {
  const [project, setProject] = useState<Project>();
  const [runs, setRuns] = useState<RunSnapshot[]>();
  const [filter, setFilter] = useState<RunStatus | ''>('');
  const [error, setError] = useState<string>();
  const connection = useConnection();
  useEffect(() => {
    api<Project>('GET', `/projects/${projectId}`).then(setProject, (err: unknown) =>
      setError(err instanceof ApiError ? err.message : 'failed to load the project'),
    );
  }, [projectId]);
  useEffect(() => {
    const query = new URLSearchParams({ project_id: projectId, limit: '100' });
    if (filter) query.set('status', filter);
    api<RunList>('GET', `/runs?${query}`).then(
      (answer) => setRuns(answer.runs),
      (err: unknown) => setError(err instanceof ApiError ? err.message : 'failed to load runs'),
    );
  }, [projectId, filter]);
  // Every live run of the list over the one shared connection.
  const live = useRunStates((runs ?? []).filter((run) => !isTerminal(run.status)).map((run) => run.run_id));
  const shown = (runs ?? [])
    .map((run) => live[run.run_id] ?? run)
    .filter((run) => !filter || run.status === filter);
  return (
    <main className="page">
      <header className="page-header">
        <nav className="breadcrumb" aria-label="Breadcrumb">
          <Link href="/">Projects</Link> › <span>{project?.name ?? '…'}</span>
        </nav>
        <ConnectionIndicator connection={connection} lastEventAt={undefined} />
      </header>
      <div className="title-row">
        <h1>{project?.name ?? 'Project'}</h1>
        {project && project.role !== 'viewer' && (
          <Link href={`/projects/${projectId}/new`} className="button primary">
            New run
          </Link>
        )}
      </div>
      <label className="filter">
        Status{' '}
        <select value={filter} onChange={(e) => setFilter(e.target.value as RunStatus | '')}>
          <option value="">all</option>
          {RUN_STATUSES.map((status) => (
            <option key={status} value={status}>
              {status}
            </option>
          ))}
        </select>
      </label>
      {error && <p className="form-error">{error}</p>}
      {runs === undefined ? (
        <p className="muted">Loading…</p>
      ) : shown.length === 0 ? (
        <p className="muted">No runs{filter ? ` with status ${filter}` : ''}.</p>
      ) : (
        <table className="runs">
          <thead>
            <tr>
              <th>Run</th>
              <th>Kind</th>
              <th>Status</th>
              <th>Stage</th>
              <th>Progress</th>
              <th>Created</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((run) => (
              <tr key={run.run_id} data-run={run.run_id}>
                <td>
                  <Link href={`/runs/${run.run_id}`}>{shortId(run.run_id)}</Link>
                </td>
                <td>{run.kind}</td>
                <td>
                  <StatusBadge status={run.status} />
                </td>
                <td>{run.stage ?? '—'}</td>
                <td>
                  {run.progress?.percentage !== undefined ? `${run.progress.percentage.toFixed(0)}%` : '—'}
                </td>
                <td>{clock(run.created_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </main>
  );
}
