import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { AddMember, CreateProject, type Project, ProjectId, UserId } from '@runcast/protocol';
import { Type } from 'typebox';
import { requirePrincipal } from '../auth/plugin.js';
import type { Policy, ProjectAccess } from '../auth/policy.js';
import { AppError } from '../errors.js';
import { newId } from '../ids.js';
import type { ProjectRecord, Store } from '../store/store.js';

export interface ProjectRoutesOptions {
  store: Store;
  policy: Policy;
}

const toProject = (project: ProjectRecord, role: ProjectAccess | null): Project => ({
  project_id: project.project_id,
  name: project.name,
  created_at: project.created_at,
  role,
});

const ProjectParams = Type.Object({ project_id: ProjectId });

/** Projects and their members. */
export const projectRoutes: FastifyPluginAsyncTypebox<ProjectRoutesOptions> = async (
  app,
  { store, policy },
) => {
  app.post('/projects', { schema: { body: CreateProject, tags: ['projects'] } }, async (request, reply) => {
    const principal = requirePrincipal(request);
    policy.requireOperatorUser(principal);
    if (principal.kind !== 'user') throw new AppError('FORBIDDEN', 'only users create projects');
    const project: ProjectRecord = {
      project_id: newId('prj'),
      name: request.body.name,
      created_by: principal.user.user_id,
      created_at: new Date().toISOString(),
    };
    await store.createProject(project);
    return reply.code(201).send(toProject(project, principal.user.role === 'admin' ? 'admin' : 'operator'));
  });

  app.get('/projects', { schema: { tags: ['projects'] } }, async (request) => {
    const principal = requirePrincipal(request);
    const visible = await policy.visibleProjectIds(principal);
    const projects =
      visible === 'all'
        ? await store.listProjects('all')
        : (await Promise.all(visible.map((id) => store.getProject(id)))).filter((p) => p !== undefined);
    const rows = await Promise.all(
      projects.map(async (project) =>
        toProject(project, (await policy.projectAccess(principal, project.project_id)) ?? null),
      ),
    );
    return { projects: rows };
  });

  app.get(
    '/projects/:project_id',
    { schema: { params: ProjectParams, tags: ['projects'] } },
    async (request) => {
      const access = await policy.requireProject(requirePrincipal(request), request.params.project_id);
      const project = await store.getProject(request.params.project_id);
      if (!project) throw new AppError('PROJECT_NOT_FOUND', `project ${request.params.project_id} not found`);
      return toProject(project, access);
    },
  );

  app.get(
    '/projects/:project_id/members',
    { schema: { params: ProjectParams, tags: ['projects'] } },
    async (request) => {
      await policy.requireProject(requirePrincipal(request), request.params.project_id);
      return { members: await store.listMembers(request.params.project_id) };
    },
  );

  app.post(
    '/projects/:project_id/members',
    { schema: { params: ProjectParams, body: AddMember, tags: ['projects'] } },
    async (request, reply) => {
      const principal = requirePrincipal(request);
      if (principal.kind !== 'user') throw new AppError('FORBIDDEN', 'an API token cannot manage members');
      await policy.requireProject(principal, request.params.project_id, true);
      const user = await store.getUser(request.body.user_id);
      if (!user) throw new AppError('USER_NOT_FOUND', `user ${request.body.user_id} not found`);
      await store.setMember(request.params.project_id, user.user_id, request.body.role);
      return reply.code(201).send({
        project_id: request.params.project_id,
        user_id: user.user_id,
        username: user.username,
        role: request.body.role,
      });
    },
  );

  app.delete(
    '/projects/:project_id/members/:user_id',
    { schema: { params: Type.Object({ project_id: ProjectId, user_id: UserId }), tags: ['projects'] } },
    async (request, reply) => {
      const principal = requirePrincipal(request);
      if (principal.kind !== 'user') throw new AppError('FORBIDDEN', 'an API token cannot manage members');
      await policy.requireProject(principal, request.params.project_id, true);
      if (!(await store.removeMember(request.params.project_id, request.params.user_id))) {
        throw new AppError('USER_NOT_FOUND', `user ${request.params.user_id} is not a member`);
      }
      return reply.code(204).send();
    },
  );
};
