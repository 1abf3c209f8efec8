import type { CreatedApiToken, Project, RunSnapshot } from '@runcast/protocol';
import { type FormEvent, useEffect, useState } from 'react';
import { ApiError, api } from '../api.js';
import { PUBLIC_API_URL } from '../config.js';
import { Link, navigate } from '../router.js';

interface Pair {
  source: string;
  target: string;
}

function parseRenames(text: string): Record<string, string> {
  const renames: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const [from, to] = line.split('=').map((part) => part.trim());
    if (from && to) renames[from] = to;
  }
  return renames;
}

function WorkerSnippet({ project, run }: { project: Project; run: RunSnapshot }) {
  const [token, setToken] = useState<CreatedApiToken>();
  const [error, setError] = useState<string>();
  const origin = PUBLIC_API_URL;
  const create = async () => {
    try {
      setToken(
        await api<CreatedApiToken>('POST', '/tokens', {
          project_id: project.project_id,
          name: `worker for ${run.run_id}`,
        }),
      );
    } catch (err) {
      setError(err instanceof ApiError ? err.message : 'failed to create a token');
    }
  };
  const secret = token?.token ?? '<API token>';
  return (
    <section className="card" aria-label="Worker instructions">
      <h2>Report progress from your worker</h2>
      <p>
        The run <Link href={`/runs/${run.run_id}`}>{run.run_id}</Link> waits for its worker. Give the worker
        an API token of this project; it is shown once.
      </p>
      {!token && (
        <button type="button" className="primary" onClick={create}>
          Create an API token
        </button>
      )}
      {error && <p className="form-error">{error}</p>}
      <pre className="snippet" data-testid="snippet">
        {`export RUNCAST_TOKEN='${secret}'
curl -X PATCH ${origin}/api/v1/runs/${run.run_id}/progress \\
  -H "Authorization: Bearer $RUNCAST_TOKEN" -H 'Content-Type: application/json' \\
  -d '{"status": "RUNNING", "stage": "EXPORT", "progress": {"percentage": 10}}'
curl -X POST ${origin}/api/v1/runs/${run.run_id}/logs \\
  -H "Authorization: Bearer $RUNCAST_TOKEN" -H 'Content-Type: application/json' \\
  -d '{"level": "info", "message": "Started"}'`}
      </pre>
      <Link href={`/runs/${run.run_id}`} className="button">
        Open the run dashboard
      </Link>
    </section>
  );
}

export function NewRunPage({ projectId }: { projectId: string }) {
  const [project, setProject] = useState<Project>();
  const [kind, setKind] = useState<'git-mirror' | 'external'>('git-mirror');
  const [pairs, setPairs] = useState<Pair[]>([{ source: '', target: '' }]);
  const [exclude, setExclude] = useState('');
  const [renames, setRenames] = useState('');
  const [sourceToken, setSourceToken] = useState('');
  const [targetToken, setTargetToken] = useState('');
  const [force, setForce] = useState(false);
  const [continueOnError, setContinueOnError] = useState(false);
  const [error, setError] = useState<string>();
  const [created, setCreated] = useState<RunSnapshot>();
  useEffect(() => {
    api<Project>('GET', `/projects/${projectId}`).then(setProject, () => setError('project not found'));
  }, [projectId]);
  const setPair = (index: number, field: keyof Pair, value: string) =>
    setPairs((current) => current.map((pair, i) => (i === index ? { ...pair, [field]: value } : pair)));
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(undefined);
    const body: Record<string, unknown> = { project_id: projectId, kind };
    if (kind === 'git-mirror') {
      const config: Record<string, unknown> = { repositories: pairs.filter((p) => p.source && p.target) };
      const patterns = exclude
        .split(/[\n,]/)
        .map((p) => p.trim())
        .filter(Boolean);
      if (patterns.length) config.exclude_refs = patterns;
      const renameMap = parseRenames(renames);
      if (Object.keys(renameMap).length) config.rename_refs = renameMap;
      if (sourceToken) config.source_token = sourceToken;
      if (targetToken) config.target_token = targetToken;
      if (force) config.force = true;
      if (continueOnError) config.continue_on_error = true;
      body.config = config;
    }
    try {
      const run = await api<RunSnapshot>('POST', '/runs', body);
      if (kind === 'external') setCreated(run);
      else navigate(`/runs/${run.run_id}`);
    } catch (err) {
      setError(err instanceof ApiError ? `${err.code}: ${err.message}` : 'failed to create the run');
    }
  };
  return (
    <main className="page">
      <nav className="breadcrumb" aria-label="Breadcrumb">
        <Link href="/">Projects</Link> › <Link href={`/projects/${projectId}`}>{project?.name ?? '…'}</Link> ›{' '}
        <span>New run</span>
      </nav>
      <h1>New run</h1>
      {created && project ? (
        <WorkerSnippet project={project} run={created} />
      ) : (
        <form className="card form" onSubmit={submit} aria-label="New run">
          <fieldset className="kind">
            <legend>Kind</legend>
            <label>
              <input
                type="radio"
                name="kind"
                checked={kind === 'git-mirror'}
                onChange={() => setKind('git-mirror')}
              />{' '}
              Git mirror
            </label>
            <label>
              <input
                type="radio"
                name="kind"
                checked={kind === 'external'}
                onChange={() => setKind('external')}
              />{' '}
              External worker
            </label>
          </fieldset>
          {kind === 'git-mirror' && (
            <>
              <fieldset>
                <legend>Repositories</legend>
                {pairs.map((pair, index) => (
                  // biome-ignore lint/suspicious/noArrayIndexKey: rows have no identity of their own
                  <div className="pair" key={index}>
                    <input
                      aria-label={`Source ${index + 1}`}
                      placeholder="https://gitlab.example/group/repo.git"
                      value={pair.source}
                      onChange={(e) => setPair(index, 'source', e.target.value)}
                      required
                    />
                    <span aria-hidden="true">→</span>
                    <input
                      aria-label={`Target ${index + 1}`}
                      placeholder="https://github.example/org/repo.git"
                      value={pair.target}
                      onChange={(e) => setPair(index, 'target', e.target.value)}
                      required
                    />
                    {pairs.length > 1 && (
                      <button
                        type="button"
                        onClick={() => setPairs((c) => c.filter((_, i) => i !== index))}
                        aria-label="Remove"
                      >
                        ✕
                      </button>
                    )}
                  </div>
                ))}
                <button type="button" onClick={() => setPairs((c) => [...c, { source: '', target: '' }])}>
                  Add repository
                </button>
              </fieldset>
              <label>
                Exclude refs (glob patterns, one per line)
                <textarea
                  value={exclude}
                  onChange={(e) => setExclude(e.target.value)}
                  placeholder="refs/heads/tmp/*"
                />
              </label>
              <label>
                Rename refs (one per line: from=to)
                <textarea
                  value={renames}
                  onChange={(e) => setRenames(e.target.value)}
                  placeholder="refs/heads/master=refs/heads/main"
                />
              </label>
              <div className="two">
                <label>
                  Source token
                  <input
                    type="password"
                    autoComplete="off"
                    value={sourceToken}
                    onChange={(e) => setSourceToken(e.target.value)}
                  />
                </label>
                <label>
                  Target token
                  <input
                    type="password"
                    autoComplete="off"
                    value={targetToken}
                    onChange={(e) => setTargetToken(e.target.value)}
                  />
                </label>
              </div>
              <label className="check">
                <input type="checkbox" checked={force} onChange={(e) => setForce(e.target.checked)} /> Allow
                non-fast-forward updates (force)
              </label>
              <label className="check">
                <input
                  type="checkbox"
                  checked={continueOnError}
                  onChange={(e) => setContinueOnError(e.target.checked)}
                />{' '}
                Continue when a repository fails
              </label>
            </>
          )}
          {error && (
            <p className="form-error" role="alert">
              {error}
            </p>
          )}
          <button type="submit" className="primary">
            Create run
          </button>
        </form>
      )}
    </main>
  );
}
