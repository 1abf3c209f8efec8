import type { Member, Project, User } from '@runcast/protocol';
import { type FormEvent, useCallback, useEffect, useState } from 'react';
import { ApiError, api } from '../api.js';
import { Link } from '../router.js';
import { useSession } from '../session.js';

function Members({ project, users }: { project: Project; users: User[] }) {
  const [members, setMembers] = useState<Member[]>([]);
  const [userId, setUserId] = useState('');
  const [role, setRole] = useState<'operator' | 'viewer'>('viewer');
  const [error, setError] = useState<string>();
  const load = useCallback(() => {
    api<{ members: Member[] }>('GET', `/projects/${project.project_id}/members`).then(
      (answer) => setMembers(answer.members),
      (err: unknown) => setError(err instanceof ApiError ? err.message : 'failed to load members'),
    );
  }, [project.project_id]);
  useEffect(load, [load]);
  const add = async (event: FormEvent) => {
    event.preventDefault();
    try {
      await api('POST', `/projects/${project.project_id}/members`, { user_id: userId, role });
      setError(undefined);
      load();
    } catch (err) {
      setError(err instanceof ApiError ? err.message : 'failed to add the member');
    }
  };
  return (
    <div className="members">
      <ul>
        {members.map((member) => (
          <li key={member.user_id}>
            {member.username} <span className="muted">({member.role})</span>
          </li>
        ))}
      </ul>
      <form className="inline" onSubmit={add} aria-label={`Add a member to ${project.name}`}>
        <select value={userId} onChange={(e) => setUserId(e.target.value)} required aria-label="User">
          <option value="">Choose a user…</option>
          {users.map((user) => (
            <option key={user.user_id} value={user.user_id}>
              {user.username} ({user.role})
            </option>
          ))}
        </select>
        <select
          value={role}
          onChange={(e) => setRole(e.target.value as 'operator' | 'viewer')}
          aria-label="Role"
        >
          <option value="viewer">viewer</option>
          <option value="operator">operator</option>
        </select>
        <button type="submit">Add member</button>
      </form>
      {error && <p className="form-error">{error}</p>}
    </div>
  );
}

export function ProjectsPage() {
  const { user } = useSession();
  const [projects, setProjects] = useState<Project[] | undefined>();
  const [users, setUsers] = useState<User[]>([]);
  const [name, setName] = useState('');
  const [error, setError] = useState<string>();
  const [open, setOpen] = useState<string>();
  const load = useCallback(() => {
    api<{ projects: Project[] }>('GET', '/projects').then(
      (answer) => setProjects(answer.projects),
      (err: unknown) => setError(err instanceof ApiError ? err.message : 'failed to load projects'),
    );
  }, []);
  useEffect(load, [load]);
  useEffect(() => {
    if (user?.role === 'admin')
      api<{ users: User[] }>('GET', '/users').then(
        (a) => setUsers(a.users),
        () => {},
      );
  }, [user?.role]);
  const create = async (event: FormEvent) => {
    event.preventDefault();
    try {
      await api('POST', '/projects', { name });
      setName('');
      load();
    } catch (err) {
      setError(err instanceof ApiError ? err.message : 'failed to create the project');
    }
  };
  return (
    <main className="page">
      <nav className="breadcrumb" aria-label="Breadcrumb">
        <span>Projects</span>
      </nav>
      <h1>Projects</h1>
      {user?.role !== 'viewer' && (
        <form className="inline card" onSubmit={create} aria-label="Create a project">
          <input
            placeholder="New project name"
            value={name}
            onChange={(e) => setName(e.target.value)}
            required
            aria-label="Project name"
          />
          <button type="submit" className="primary">
            Create project
          </button>
        </form>
      )}
      {error && <p className="form-error">{error}</p>}
      {projects === undefined ? (
        <p className="muted">Loading…</p>
      ) : projects.length === 0 ? (
        <p className="muted">No projects yet.</p>
      ) : (
        <ul className="list">
          {projects.map((project) => (
            <li key={project.project_id} className="card row">
              <Link href={`/projects/${project.project_id}`} className="title">
                {project.name}
              </Link>
              <span className="muted">{project.role}</span>
              {user?.role === 'admin' && (
                <button
                  type="button"
                  onClick={() => setOpen(open === project.project_id ? undefined : project.project_id)}
                >
                  Members
                </button>
              )}
              {open === project.project_id && <Members project={project} users={users} />}
            </li>
          ))}
        </ul>
      )}
    </main>
  );
}
