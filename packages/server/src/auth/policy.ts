import type { MemberRole } from '@runcast/protocol';
import { AppError } from '../errors.js';
import { type CachedRecords, NOT_CACHED } from '../store/cached.js';
import type { RunRecord, Store } from '../store/store.js';
import type { Principal } from './principal.js';

/** What a principal may do in one project. */
export type ProjectAccess = 'admin' | 'operator' | 'viewer';

const WRITERS: readonly ProjectAccess[] = ['admin', 'operator'];

/**
 * What deciding a principal's access to a project takes from the store: nothing for an API
 * token, whether the project exists for an admin, the membership role for anyone else.
 */
type AccessFact = boolean | MemberRole | undefined;

function accessFrom(principal: Principal, projectId: string, fact: AccessFact): ProjectAccess | undefined {
  if (principal.kind === 'token') return principal.token.project_id === projectId ? 'operator' : undefined;
  if (principal.user.role === 'admin') return fact === true ? 'admin' : undefined;
  if (fact === undefined || typeof fact === 'boolean') return undefined;
  // A global viewer stays a viewer whatever the membership says.
  return principal.user.role === 'viewer' ? 'viewer' : fact;
}

/**
 * Who may do what to which project and run. A run is visible only through its project, and an
 * invisible run is reported exactly like a missing one.
 */
export class Policy {
  constructor(
    private readonly store: Store,
    private readonly cache?: CachedRecords,
  ) {}

  /** The principal's access to a project, or undefined when it may not see it. */
  async projectAccess(principal: Principal, projectId: string): Promise<ProjectAccess | undefined> {
    return accessFrom(principal, projectId, await this.fact(principal, projectId));
  }

  /**
   * A run the principal may read, decided from what is in memory alone; undefined when something
   * is not cached or the answer is no (the async path then decides, and explains).
   */
  cachedReadableRun(principal: Principal, runId: string): RunRecord | undefined {
    const run = this.cache?.cachedRun(runId);
    if (!run) return undefined;
    const fact = this.cachedFact(principal, run.project_id);
    return fact !== NOT_CACHED && accessFrom(principal, run.project_id, fact) ? run : undefined;
  }

  private async fact(principal: Principal, projectId: string): Promise<AccessFact> {
    if (principal.kind === 'token') return undefined;
    if (principal.user.role === 'admin') return (await this.store.getProject(projectId)) !== undefined;
    return this.store.getMemberRole(projectId, principal.user.user_id);
  }

  private cachedFact(principal: Principal, projectId: string): AccessFact | typeof NOT_CACHED {
    if (principal.kind === 'token') return undefined;
    if (!this.cache) return NOT_CACHED;
    if (principal.user.role === 'admin')
      return this.cache.cachedProject(projectId) !== undefined ? true : NOT_CACHED;
    return this.cache.cachedMemberRole(projectId, principal.user.user_id);
  }

  /** Access to a visible project; PROJECT_NOT_FOUND otherwise. */
  async requireProject(principal: Principal, projectId: string, write = false): Promise<ProjectAccess> {
    const access = await this.projectAccess(principal, projectId);
    if (access === undefined) throw new AppError('PROJECT_NOT_FOUND', `project ${projectId} not found`);
    if (write && !WRITERS.includes(access)) {
      throw new AppError('FORBIDDEN', `your role in project ${projectId} is ${access}; this needs operator`);
    }
    return access;
  }

  /** A run the principal may see (and, with `write`, change); RUN_NOT_FOUND when it may not see it. */
  async requireRun(principal: Principal, runId: string, write = false): Promise<RunRecord> {
    const run = await this.store.getRun(runId);
    const access = run && (await this.projectAccess(principal, run.project_id));
    if (!run || access === undefined) throw new AppError('RUN_NOT_FOUND', `run ${runId} not found`);
    if (write && !WRITERS.includes(access)) {
      throw new AppError('FORBIDDEN', `your role in this run's project is ${access}; this needs operator`);
    }
    return run;
  }

  /** The projects whose runs the principal may list. */
  async visibleProjectIds(principal: Principal): Promise<readonly string[] | 'all'> {
    if (principal.kind === 'token') return [principal.token.project_id];
    if (principal.user.role === 'admin') return 'all';
    return this.store.memberProjectIds(principal.user.user_id, ['operator', 'viewer']);
  }

  /** Projects where the principal may manage tokens and members. */
  async writableProjectIds(principal: Principal): Promise<readonly string[] | 'all'> {
    if (principal.kind === 'token') return [];
    if (principal.user.role === 'admin') return 'all';
    if (principal.user.role === 'viewer') return [];
    return this.store.memberProjectIds(principal.user.user_id, ['operator']);
  }

  /** Only admins manage users. */
  requireAdmin(principal: Principal): void {
    if (principal.kind !== 'user' || principal.user.role !== 'admin') {
      throw new AppError('FORBIDDEN', 'only an admin may do this');
    }
  }

  /** Creating projects takes a user who is an admin or an operator. */
  requireOperatorUser(principal: Principal): void {
    if (principal.kind !== 'user' || principal.user.role === 'viewer') {
      throw new AppError('FORBIDDEN', 'only an admin or an operator may do this');
    }
  }
}
