import type { MemberRole } from '@runcast/protocol';
import type { Bus, DirectoryChange } from '../bus/bus.js';
import { ReadCache } from './read-cache.js';
import type {
  ApiTokenRecord,
  ClaimedRun,
  ClaimRequest,
  CommitOptions,
  CommitResult,
  MemberRecord,
  ProjectRecord,
  RunChange,
  RunQuery,
  RunRecord,
  RunReplay,
  SessionRecord,
  Store,
  UserRecord,
} from './store.js';

/** What `cachedMemberRole` answers when it does not know. */
export const NOT_CACHED = Symbol('not cached');

/**
 * Synchronous look-ups of records already in memory, for answers that must not wait: each gives
 * undefined (or NOT_CACHED) when the record is not cached, and the caller then asks the Store.
 */
export interface CachedRecords {
  cachedUser(userId: string): UserRecord | undefined;
  cachedSession(sessionId: string): SessionRecord | undefined;
  cachedApiToken(tokenId: string): ApiTokenRecord | undefined;
  cachedProject(projectId: string): ProjectRecord | undefined;
  cachedRun(runId: string): RunRecord | undefined;
  cachedMemberRole(projectId: string, userId: string): MemberRole | undefined | typeof NOT_CACHED;
}

/** How many records of each kind stay cached. */
export interface CacheCapacity {
  records: number;
  runs: number;
  memberships: number;
}

const DEFAULT_CAPACITY: CacheCapacity = { records: 10_000, runs: 5_000, memberships: 50_000 };

/**
 * A Store that keeps what every request reads — its session, user or API token, the run and the
 * project membership — in memory, and drops or replaces an entry on every write that changes it.
 *
 * With other writers (other nodes on a shared database), the Bus keeps it right: every directory
 * write is announced (`directory`), and each node drops what a change concerns, wherever it was
 * made; a run is dropped when any node commits past the seq cached. Records handed out are
 * frozen: a caller that changed one would change the cache.
 */
export class CachedStore implements Store, CachedRecords {
  private readonly users: ReadCache<string, UserRecord | undefined>;
  private readonly sessions: ReadCache<string, SessionRecord | undefined>;
  private readonly tokens: ReadCache<string, ApiTokenRecord | undefined>;
  private readonly projects: ReadCache<string, ProjectRecord | undefined>;
  private readonly runs: ReadCache<string, RunRecord | undefined>;
  private readonly memberships: ReadCache<string, MemberRole | undefined>;
  private bus: Bus | undefined;

  constructor(
    private readonly inner: Store,
    capacity: CacheCapacity = DEFAULT_CAPACITY,
  ) {
    this.users = new ReadCache(capacity.records);
    this.sessions = new ReadCache(capacity.records);
    this.tokens = new ReadCache(capacity.records);
    this.projects = new ReadCache(capacity.records);
    this.runs = new ReadCache(capacity.runs);
    this.memberships = new ReadCache(capacity.memberships);
  }

  /**
   * Announces this store's directory writes on `bus` and follows every node's: directory changes,
   * run commits, and a resync (the bus may have lost messages) that empties the cache. Returns
   * the function that stops following.
   */
  attach(bus: Bus): () => void {
    this.bus = bus;
    const stops = [
      bus.subscribe('directory', ({ change }) => this.forget(change)),
      bus.subscribe('run-events', ({ events }) => {
        const last = events[events.length - 1];
        if (last) this.runReached(last.run_id, last.seq);
      }),
      bus.subscribe('run-reached', ({ run_id, seq }) => this.runReached(run_id, seq)),
      bus.subscribe('resync', () => this.clear()),
    ];
    return () => {
      for (const stop of stops) stop();
      this.bus = undefined;
    };
  }

  /** Drops what a directory change makes stale. */
  private forget(change: DirectoryChange): void {
    switch (change.kind) {
      case 'user-changed':
        this.users.delete(change.user_id);
        return;
      case 'user-sessions-ended':
        this.users.delete(change.user_id);
        this.sessions.deleteWhere((session) => session?.user_id === change.user_id);
        return;
      case 'session-created': {
        // The store deletes expired sessions as it creates one.
        const now = new Date().toISOString();
        this.sessions.deleteWhere((cached) => cached === undefined || cached.expires_at < now);
        this.sessions.delete(change.session_id);
        return;
      }
      case 'session-ended':
        this.sessions.delete(change.session_id);
        return;
      case 'token-created':
      case 'token-revoked':
        this.tokens.delete(change.token_id);
        return;
      case 'project-created':
        this.projects.delete(change.project_id);
        this.memberships.delete(membershipKey(change.project_id, change.created_by));
        return;
      case 'membership-changed':
        this.memberships.delete(membershipKey(change.project_id, change.user_id));
        return;
    }
  }

  /** Forgets `change` here and tells every node. */
  private changed(change: DirectoryChange): void {
    this.forget(change);
    this.bus?.publish({ type: 'directory', change });
  }

  /** A commit reached `seq`: a run cached at an older seq is stale (another node wrote it). */
  private runReached(runId: string, seq: number): void {
    const cached = this.runs.get(runId);
    if (cached && cached.seq < seq) this.runs.delete(runId);
  }

  private clear(): void {
    for (const cache of [
      this.users,
      this.sessions,
      this.tokens,
      this.projects,
      this.runs,
      this.memberships,
    ]) {
      (cache as ReadCache<string, unknown>).clear();
    }
  }

  cachedUser(userId: string): UserRecord | undefined {
    return this.users.get(userId);
  }

  cachedSession(sessionId: string): SessionRecord | undefined {
    return this.sessions.get(sessionId);
  }

  cachedApiToken(tokenId: string): ApiTokenRecord | undefined {
    return this.tokens.get(tokenId);
  }

  cachedProject(projectId: string): ProjectRecord | undefined {
    return this.projects.get(projectId);
  }

  cachedRun(runId: string): RunRecord | undefined {
    return this.runs.get(runId);
  }

  cachedMemberRole(projectId: string, userId: string): MemberRole | undefined | typeof NOT_CACHED {
    const key = membershipKey(projectId, userId);
    return this.memberships.has(key) ? this.memberships.get(key) : NOT_CACHED;
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  ping(): Promise<void> {
    return this.inner.ping();
  }

  async createUser(user: UserRecord): Promise<void> {
    await this.inner.createUser(user);
    this.changed({ kind: 'user-changed', user_id: user.user_id });
  }

  getUser(userId: string): Promise<UserRecord | undefined> {
    return this.users.load(userId, async () => frozen(await this.inner.getUser(userId)));
  }

  getUserByUsername(username: string): Promise<UserRecord | undefined> {
    return this.inner.getUserByUsername(username);
  }

  listUsers(): Promise<UserRecord[]> {
    return this.inner.listUsers();
  }

  countUsers(): Promise<number> {
    return this.inner.countUsers();
  }

  async setPassword(userId: string, passwordHash: string): Promise<void> {
    try {
      await this.inner.setPassword(userId, passwordHash);
    } finally {
      this.changed({ kind: 'user-sessions-ended', user_id: userId });
    }
  }

  async createSession(session: SessionRecord): Promise<void> {
    await this.inner.createSession(session);
    this.changed({ kind: 'session-created', session_id: session.session_id });
  }

  getSession(sessionId: string): Promise<SessionRecord | undefined> {
    return this.sessions.load(sessionId, async () => frozen(await this.inner.getSession(sessionId)));
  }

  async deleteSession(sessionId: string): Promise<void> {
    try {
      await this.inner.deleteSession(sessionId);
    } finally {
      this.changed({ kind: 'session-ended', session_id: sessionId });
    }
  }

  async createApiToken(token: ApiTokenRecord): Promise<void> {
    await this.inner.createApiToken(token);
    this.changed({ kind: 'token-created', token_id: token.token_id });
  }

  getApiToken(tokenId: string): Promise<ApiTokenRecord | undefined> {
    return this.tokens.load(tokenId, async () => frozen(await this.inner.getApiToken(tokenId)));
  }

  listApiTokens(projectIds: readonly string[] | 'all'): Promise<ApiTokenRecord[]> {
    return this.inner.listApiTokens(projectIds);
  }

  async revokeApiToken(tokenId: string, at: string): Promise<void> {
    try {
      await this.inner.revokeApiToken(tokenId, at);
    } finally {
      this.changed({ kind: 'token-revoked', token_id: tokenId });
    }
  }

  async createProject(project: ProjectRecord): Promise<void> {
    await this.inner.createProject(project);
    this.changed({ kind: 'project-created', project_id: project.project_id, created_by: project.created_by });
  }

  getProject(projectId: string): Promise<ProjectRecord | undefined> {
    return this.projects.load(projectId, async () => frozen(await this.inner.getProject(projectId)));
  }

  listProjects(memberUserId: string | 'all'): Promise<ProjectRecord[]> {
    return this.inner.listProjects(memberUserId);
  }

  async setMember(projectId: string, userId: string, role: MemberRole): Promise<void> {
    try {
      await this.inner.setMember(projectId, userId, role);
    } finally {
      this.changed({ kind: 'membership-changed', project_id: projectId, user_id: userId });
    }
  }

  async removeMember(projectId: string, userId: string): Promise<boolean> {
    try {
      return await this.inner.removeMember(projectId, userId);
    } finally {
      this.changed({ kind: 'membership-changed', project_id: projectId, user_id: userId });
    }
  }

  getMemberRole(projectId: string, userId: string): Promise<MemberRole | undefined> {
    // Non-membership is cached too: a user outside a project asks about it as often as a member.
    return this.memberships.load(
      membershipKey(projectId, userId),
      () => this.inner.getMemberRole(projectId, userId),
      true,
    );
  }

  listMembers(projectId: string): Promise<MemberRecord[]> {
    return this.inner.listMembers(projectId);
  }

  memberProjectIds(userId: string, roles: readonly MemberRole[]): Promise<string[]> {
    return this.inner.memberProjectIds(userId, roles);
  }

  async createRun(run: RunRecord): Promise<void> {
    await this.inner.createRun(run);
    this.runs.delete(run.run_id);
  }

  getRun(runId: string): Promise<RunRecord | undefined> {
    return this.runs.load(runId, async () => frozen(await this.inner.getRun(runId)));
  }

  listRuns(query: RunQuery): Promise<RunRecord[]> {
    return this.inner.listRuns(query);
  }

  async commitRun(
    runId: string,
    change: (current: RunRecord) => RunChange,
    options?: CommitOptions,
  ): Promise<CommitResult> {
    let result: CommitResult;
    try {
      const current = options?.current ?? this.runs.get(runId);
      result = await this.inner.commitRun(runId, change, { ...options, current });
    } catch (err) {
      this.runs.delete(runId);
      throw err;
    }
    if (result.replayed) this.runs.delete(runId);
    else this.runs.set(runId, frozen(result.change.run));
    return result;
  }

  replay(runId: string, since: number, limit: number, maxBytes?: number): Promise<RunReplay | undefined> {
    return this.inner.replay(runId, since, limit, maxBytes);
  }

  // A lease is no part of a run's record: claims and renewals leave the cached runs as they are.

  claimRuns(request: ClaimRequest): Promise<ClaimedRun[]> {
    return this.inner.claimRuns(request);
  }

  renewLeases(
    owner: string,
    leases: readonly { run_id: string; fence: number }[],
    leaseMs: number,
  ): Promise<string[]> {
    return this.inner.renewLeases(owner, leases, leaseMs);
  }
}

function membershipKey(projectId: string, userId: string): string {
  return `${projectId} ${userId}`;
}

function frozen<T extends object>(record: T | undefined): T | undefined {
  return record && Object.freeze(record);
}
