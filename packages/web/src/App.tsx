import { useEffect } from 'react';
import { LoginPage } from './pages/LoginPage.js';
import { NewRunPage } from './pages/NewRunPage.js';
import { ProjectRunsPage } from './pages/ProjectRunsPage.js';
import { ProjectsPage } from './pages/ProjectsPage.js';
import { RunDashboardPage } from './pages/RunDashboardPage.js';
import { Link, match, usePath } from './router.js';
import { useSession } from './session.js';

function Routes({ path }: { path: string }) {
  let params = match('/runs/:run_id', path);
  if (params?.run_id) return <RunDashboardPage key={params.run_id} runId={params.run_id} />;
  params = match('/projects/:project_id/new', path);
  if (params?.project_id) return <NewRunPage projectId={params.project_id} />;
  params = match('/projects/:project_id', path);
  if (params?.project_id) return <ProjectRunsPage key={params.project_id} projectId={params.project_id} />;
  return <ProjectsPage />;
}

export function App() {
  const { user, logout } = useSession();
  const path = usePath();
  useEffect(() => {
    document.title = 'Runcast';
  }, []);
  if (user === undefined) return <p className="muted center">Loading…</p>;
  // Deep links survive the login: the page shown after it is the one that was asked for.
  if (user === null) return <LoginPage />;
  return (
    <>
      <div className="topbar">
        <Link href="/" className="brand">
          Runcast
        </Link>
        <span className="muted">
          {user.username} ({user.role})
        </span>
        <button type="button" className="link" onClick={() => logout()}>
          Log out
        </button>
      </div>
      <Routes path={path} />
    </>
  );
}
