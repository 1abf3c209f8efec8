import { isTerminal, type Project, type RunSnapshot } from '@runcast/protocol';
import { useEffect, useState } from 'react';
import { ApiError, api } from '../api.js';
import { ConnectionIndicator } from '../components/ConnectionIndicator.js';
import { LogView } from '../components/LogView.js';
import { ProgressPanel } from '../components/ProgressPanel.js';
import { StageTimeline } from '../components/StageTimeline.js';
import { StatsPanel } from '../components/StatsPanel.js';
import { StatusBadge } from '../components/StatusBadge.js';
import { shortId } from '../format.js';
import { useConnection, useRun } from '../hooks.js';
import { Link, navigate } from '../router.js';
import { useSession } from '../session.js';

/** One run, live: header with the connection indicator, stages, progress, stats, log. */
export function RunDashboardPage({ runId }: { runId: string }) {
  const view = useRun(runId);
  const connection = useConnection();
  const { signedOut } = useSession();
  const refused = connection.state === 'unauthorized' || view.errorCode === 'UNAUTHORIZED';
  useEffect(() => {
    // The session ended: the login page, which brings the reader back to this run.
    if (refused) signedOut();
  }, [refused, signedOut]);
  const [project, setProject] = useState<Project>();
  const [actionError, setActionError] = useState<string>();
  const snapshot = view.snapshot;
  const projectId = snapshot?.project_id;
  useEffect(() => {
    if (projectId) api<Project>('GET', `/projects/${projectId}`).then(setProject, () => {});
  }, [projectId]);
  const canOperate = project !== undefined && project.role !== 'viewer';
  const act = async (action: 'cancel' | 'retry') => {
    setActionError(undefined);
    try {
      const answer = await api<RunSnapshot>('POST', `/runs/${runId}/${action}`);
      if (action === 'retry') navigate(`/runs/${answer.run_id}`);
    } catch (err) {
      setActionError(err instanceof ApiError ? err.message : `failed to ${action}`);
    }
  };
  if (view.error) {
    return (
      <main className="page">
        <nav className="breadcrumb" aria-label="Breadcrumb">
          <Link href="/">Projects</Link>
        </nav>
        <p className="form-error" role="alert" data-testid="run-error">
          {view.errorCode === 'RUN_NOT_FOUND'
            ? 'Run not found — it does not exist, or you may not see it.'
            : view.errorCode === 'FORBIDDEN'
              ? `You may not see this run: ${view.error}`
              : view.error}
        </p>
      </main>
    );
  }
  return (
    <main className="page run">
      <header className="page-header">
        <nav className="breadcrumb" aria-label="Breadcrumb">
          <Link href="/">Projects</Link> ›{' '}
          {projectId ? <Link href={`/projects/${projectId}`}>{project?.name ?? '…'}</Link> : '…'} ›{' '}
          <span title={runId}>{shortId(runId)}</span>
        </nav>
        <div className="header-right">
          <StatusBadge status={snapshot?.status} />
          <ConnectionIndicator connection={connection} lastEventAt={view.lastEventAt} />
          {snapshot && canOperate && !isTerminal(snapshot.status) && (
            <button type="button" className="danger" onClick={() => act('cancel')}>
              Cancel
            </button>
          )}
          {snapshot && canOperate && (snapshot.status === 'FAILED' || snapshot.status === 'CANCELED') && (
            <button type="button" onClick={() => act('retry')}>
              Retry
            </button>
          )}
        </div>
      </header>
      {actionError && (
        <p className="form-error" role="alert">
          {actionError}
        </p>
      )}
      {!snapshot ? (
        <p className="muted" aria-busy="true">
          Loading run…
        </p>
      ) : (
        <>
          <h1 className="run-title">
            {snapshot.kind === 'git-mirror' ? 'Git mirror' : 'External run'}
            {snapshot.stage ? <span className="muted"> · {snapshot.stage}</span> : null}
          </h1>
          <StageTimeline snapshot={snapshot} reported={view.stages} />
          <div className="grid">
            <ProgressPanel snapshot={snapshot} />
            <StatsPanel snapshot={snapshot} />
          </div>
          <LogView logs={view.logs} truncated={view.truncated} />
        </>
      )}
    </main>
  );
}
