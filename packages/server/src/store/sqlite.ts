import { dirname } from 'node:path';
import type { LogEvent, MemberRole } from '@runcast/protocol';
import Database from 'better-sqlite3';
import { AppError } from '../errors.js';
import { makePrivateDir, restrictFile, touchPrivateFile } from '../private-files.js';
import {
  type CommitSettings,
  checkFence,
  DEFAULT_IDEMPOTENCY_TTL_MS,
  DEFAULT_MAX_COMMIT_BATCH,
  IDEMPOTENCY_PRUNE_INTERVAL_MS,
  type PendingCommit,
  pendingCommit,
  replayOf,
  type StoredLease,
  settleBatch,
} from './group-commit.js';
import { SQLITE_MIGRATIONS } from './migrations.js';
import {
  checkLogSeqs,
  checkStateChange,
  claimableRuns,
  type EventRow,
  RUN_COLUMNS,
  type RunRow,
  rowToEvent,
  rowToRun,
  runToRow,
  STATE_COLUMNS,
  stateValues,
} from './run-rows.js';
import { StorageHealth } from './storage-health.js';
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

export interface SqliteStoreOptions extends CommitSettings {
  /** Database file, or `:memory:` in unit tests. */
  file: string;
  synchronous?: 'NORMAL' | 'FULL';
}

interface IdempotencyRow {
  fingerprint: string;
  response: string;
}

interface RunVersion {
  seq: number;
  log_count: number;
  pruned_through_seq: number;
}

function isUniqueViolation(err: unknown): boolean {
  return (
    (err as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY' ||
    (err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE'
  );
}

/** The embedded default store: one SQLite file in WAL mode. */
export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly retention: number;
  private readonly idempotencyTtlMs: number;
  private readonly now: () => Date;
  private readonly maxCommitBatch: number;
  /** Every write goes through it: a full disk answers STORAGE_FULL until space returns. */
  private readonly storage: StorageHealth;
  private lastIdempotencyPruneMs = Number.NEGATIVE_INFINITY;
  private readonly sql;
  /** `commitRun` calls not yet committed, in call order. */
  private queue: PendingCommit[] = [];
  private flushTimer: NodeJS.Immediate | undefined;
  private closed = false;
  /** One call's commit; inside `commitBatch` better-sqlite3 runs it in a SAVEPOINT. */
  private readonly commitOne: (pending: PendingCommit) => CommitResult;
  /** Commits a batch of calls in one immediate transaction, noting each call's outcome on it. */
  private readonly commitBatch: (batch: readonly PendingCommit[]) => void;

  constructor(options: SqliteStoreOptions) {
    if (options.file !== ':memory:') {
      makePrivateDir(dirname(options.file));
      // SQLite gives its -wal and -shm files the mode of the database file.
      touchPrivateFile(options.file);
      for (const suffix of ['-wal', '-shm']) restrictFile(`${options.file}${suffix}`);
    }
    this.db = new Database(options.file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`synchronous = ${options.synchronous ?? 'NORMAL'}`);
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    this.retention = options.eventRetention;
    this.idempotencyTtlMs = options.idempotencyTtlMs ?? DEFAULT_IDEMPOTENCY_TTL_MS;
    this.now = options.now ?? (() => new Date());
    this.maxCommitBatch = options.maxCommitBatch ?? DEFAULT_MAX_COMMIT_BATCH;
    this.storage = new StorageHealth({
      dir: options.file === ':memory:' ? undefined : dirname(options.file),
      onChange: options.onStorageFull,
    });
    this.migrate();
    const db = this.db;
    this.sql = {
      insertUser: db.prepare(
        'INSERT INTO users (user_id, username, role, password_hash, created_at) VALUES (@user_id, @username, @role, @password_hash, @created_at)',
      ),
      userById: db.prepare('SELECT * FROM users WHERE user_id = ?'),
      userByName: db.prepare('SELECT * FROM users WHERE username = ?'),
      users: db.prepare('SELECT * FROM users ORDER BY username'),
      countUsers: db.prepare('SELECT count(*) AS n FROM users').pluck(),
      setPassword: db.prepare('UPDATE users SET password_hash = ? WHERE user_id = ?'),
      deleteUserSessions: db.prepare('DELETE FROM sessions WHERE user_id = ?'),
      insertSession: db.prepare(
        'INSERT INTO sessions (session_id, user_id, created_at, expires_at) VALUES (@session_id, @user_id, @created_at, @expires_at)',
      ),
      session: db.prepare('SELECT * FROM sessions WHERE session_id = ?'),
      deleteSession: db.prepare('DELETE FROM sessions WHERE session_id = ?'),
      deleteExpiredSessions: db.prepare('DELETE FROM sessions WHERE expires_at < ?'),
      insertToken: db.prepare(
        'INSERT INTO api_tokens (token_id, project_id, name, secret_hash, created_by, created_at, revoked_at) VALUES (@token_id, @project_id, @name, @secret_hash, @created_by, @created_at, @revoked_at)',
      ),
      token: db.prepare('SELECT * FROM api_tokens WHERE token_id = ?'),
      allTokens: db.prepare('SELECT * FROM api_tokens ORDER BY token_id'),
      revokeToken: db.prepare(
        'UPDATE api_tokens SET revoked_at = ? WHERE token_id = ? AND revoked_at IS NULL',
      ),
      insertProject: db.prepare(
        'INSERT INTO projects (project_id, name, created_by, created_at) VALUES (@project_id, @name, @created_by, @created_at)',
      ),
      project: db.prepare('SELECT * FROM projects WHERE project_id = ?'),
      allProjects: db.prepare('SELECT * FROM projects ORDER BY project_id'),
      memberProjects: db.prepare(
        'SELECT p.* FROM projects p JOIN project_members m ON m.project_id = p.project_id WHERE m.user_id = ? ORDER BY p.project_id',
      ),
      upsertMember: db.prepare(
        'INSERT INTO project_members (project_id, user_id, role) VALUES (?, ?, ?) ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role',
      ),
      deleteMember: db.prepare('DELETE FROM project_members WHERE project_id = ? AND user_id = ?'),
      memberRole: db.prepare('SELECT role FROM project_members WHERE project_id = ? AND user_id = ?').pluck(),
      members: db.prepare(
        'SELECT m.project_id, m.user_id, u.username, m.role FROM project_members m JOIN users u ON u.user_id = m.user_id WHERE m.project_id = ? ORDER BY u.username',
      ),
      memberProjectIds: db.prepare('SELECT project_id, role FROM project_members WHERE user_id = ?'),
      insertRun: db.prepare(
        `INSERT INTO runs (${RUN_COLUMNS}) VALUES (${RUN_COLUMNS.split(', ')
          .map((c) => `@${c}`)
          .join(', ')})`,
      ),
      run: db.prepare(`SELECT ${RUN_COLUMNS} FROM runs WHERE run_id = ?`),
      runVersion: db.prepare('SELECT seq, log_count, pruned_through_seq FROM runs WHERE run_id = ?'),
      updateRunState: db.prepare(
        `UPDATE runs SET ${STATE_COLUMNS.map((c) => `${c} = ?`).join(', ')} WHERE run_id = ?`,
      ),
      insertEvent: db.prepare('INSERT INTO run_events (run_id, seq, type, at, body) VALUES (?, ?, ?, ?, ?)'),
      oldestEventSeqs: db.prepare('SELECT seq FROM run_events WHERE run_id = ? ORDER BY seq LIMIT ?').pluck(),
      deleteEventsThrough: db.prepare('DELETE FROM run_events WHERE run_id = ? AND seq <= ?'),
      eventsAfter: db.prepare(
        'SELECT run_id, seq, at, body FROM run_events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?',
      ),
      idempotencyKey: db.prepare(
        'SELECT fingerprint, response FROM idempotency_keys WHERE run_id = ? AND key = ?',
      ),
      insertIdempotencyKey: db.prepare(
        'INSERT INTO idempotency_keys (run_id, key, fingerprint, response, created_at) VALUES (?, ?, ?, ?, ?)',
      ),
      pruneIdempotencyKeys: db.prepare('DELETE FROM idempotency_keys WHERE created_at < ?'),
      ping: db.prepare('SELECT 1').pluck(),
      lease: db.prepare('SELECT owner, fence FROM runs WHERE run_id = ?'),
      claimable: db
        .prepare(
          `SELECT run_id FROM runs WHERE kind IN (SELECT value FROM json_each(@kinds))
           AND ${claimableRuns('@now', '@owner', '@reclaim')} ORDER BY run_id LIMIT @limit`,
        )
        .pluck(),
      claim: db
        .prepare(
          'UPDATE runs SET owner = ?, lease_until = ?, fence = fence + 1 WHERE run_id = ? RETURNING fence',
        )
        .pluck(),
      renew: db.prepare('UPDATE runs SET lease_until = ? WHERE run_id = ? AND owner = ? AND fence = ?'),
    };
    this.commitOne = db.transaction((pending: PendingCommit) => this.applyCommit(pending));
    this.commitBatch = db.transaction((batch: readonly PendingCommit[]) => {
      for (const pending of batch) {
        try {
          pending.result = this.commitOne(pending);
        } catch (err) {
          // SQLITE_FULL, SQLITE_IOERR and the like roll back the whole transaction, not just the
          // savepoint: then nothing in the batch is committed, and the batch fails as one.
          if (!db.inTransaction) throw err;
          pending.error = err;
        }
      }
    }).immediate;
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version > SQLITE_MIGRATIONS.length) {
      throw new Error(
        `database schema version ${version} is newer than this Runcast (${SQLITE_MIGRATIONS.length}); upgrade Runcast`,
      );
    }
    for (let next = version; next < SQLITE_MIGRATIONS.length; next++) {
      this.db.transaction(() => {
        this.db.exec(SQLITE_MIGRATIONS[next] ?? '');
        this.db.pragma(`user_version = ${next + 1}`);
      })();
    }
  }

  /** Schema version after migrations. */
  schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  /** Commits the `commitRun` calls still queued, then closes the database. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.flushTimer) clearImmediate(this.flushTimer);
    this.flushTimer = undefined;
    while (this.queue.length > 0) this.commitQueued();
    if (this.db.open) this.db.close();
  }

  /** Also fails with STORAGE_FULL while the disk is full. */
  async ping(): Promise<void> {
    this.sql.ping.get();
    this.storage.check();
  }

  async createUser(user: UserRecord): Promise<void> {
    try {
      this.storage.write(() => this.sql.insertUser.run(user));
    } catch (err) {
      if (isUniqueViolation(err))
        throw new AppError('ALREADY_EXISTS', `user "${user.username}" already exists`);
      throw err;
    }
  }

  async getUser(userId: string): Promise<UserRecord | undefined> {
    return this.sql.userById.get(userId) as UserRecord | undefined;
  }

  async getUserByUsername(username: string): Promise<UserRecord | undefined> {
    return this.sql.userByName.get(username) as UserRecord | undefined;
  }

  async listUsers(): Promise<UserRecord[]> {
    return this.sql.users.all() as UserRecord[];
  }

  async countUsers(): Promise<number> {
    return this.sql.countUsers.get() as number;
  }

  async setPassword(userId: string, passwordHash: string): Promise<void> {
    this.storage.write(
      this.db.transaction(() => {
        this.sql.setPassword.run(passwordHash, userId);
        this.sql.deleteUserSessions.run(userId);
      }),
    );
  }

  async createSession(session: SessionRecord): Promise<void> {
    this.storage.write(() => {
      this.sql.deleteExpiredSessions.run(new Date().toISOString());
      this.sql.insertSession.run(session);
    });
  }

  async getSession(sessionId: string): Promise<SessionRecord | undefined> {
    return this.sql.session.get(sessionId) as SessionRecord | undefined;
  }

  async deleteSession(sessionId: string): Promise<void> {
    this.storage.write(() => this.sql.deleteSession.run(sessionId));
  }

  async createApiToken(token: ApiTokenRecord): Promise<void> {
    this.storage.write(() => this.sql.insertToken.run(token));
  }

  async getApiToken(tokenId: string): Promise<ApiTokenRecord | undefined> {
    return this.sql.token.get(tokenId) as ApiTokenRecord | undefined;
  }

  async listApiTokens(projectIds: readonly string[] | 'all'): Promise<ApiTokenRecord[]> {
    const all = this.sql.allTokens.all() as ApiTokenRecord[];
    if (projectIds === 'all') return all;
    const wanted = new Set(projectIds);
    return all.filter((token) => wanted.has(token.project_id));
  }

  async revokeApiToken(tokenId: string, at: string): Promise<void> {
    this.storage.write(() => this.sql.revokeToken.run(at, tokenId));
  }

  async createProject(project: ProjectRecord): Promise<void> {
    this.storage.write(
      this.db.transaction(() => {
        this.sql.insertProject.run(project);
        this.sql.upsertMember.run(project.project_id, project.created_by, 'operator');
      }),
    );
  }

  async getProject(projectId: string): Promise<ProjectRecord | undefined> {
    return this.sql.project.get(projectId) as ProjectRecord | undefined;
  }

  async listProjects(memberUserId: string | 'all'): Promise<ProjectRecord[]> {
    return (
      memberUserId === 'all' ? this.sql.allProjects.all() : this.sql.memberProjects.all(memberUserId)
    ) as ProjectRecord[];
  }

  async setMember(projectId: string, userId: string, role: MemberRole): Promise<void> {
    this.storage.write(() => this.sql.upsertMember.run(projectId, userId, role));
  }

  async removeMember(projectId: string, userId: string): Promise<boolean> {
    return this.storage.write(() => this.sql.deleteMember.run(projectId, userId).changes > 0);
  }

  async getMemberRole(projectId: string, userId: string): Promise<MemberRole | undefined> {
    return this.sql.memberRole.get(projectId, userId) as MemberRole | undefined;
  }

  async listMembers(projectId: string): Promise<MemberRecord[]> {
    return this.sql.members.all(projectId) as MemberRecord[];
  }

  async memberProjectIds(userId: string, roles: readonly MemberRole[]): Promise<string[]> {
    const rows = this.sql.memberProjectIds.all(userId) as { project_id: string; role: MemberRole }[];
    return rows.filter((row) => roles.includes(row.role)).map((row) => row.project_id);
  }

  async createRun(run: RunRecord): Promise<void> {
    this.storage.write(() => this.sql.insertRun.run(runToRow(run)));
  }

  async getRun(runId: string): Promise<RunRecord | undefined> {
    const row = this.sql.run.get(runId) as RunRow | undefined;
    return row && rowToRun(row);
  }

  async listRuns(query: RunQuery): Promise<RunRecord[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    if (query.projectIds !== 'all') {
      if (query.projectIds.length === 0) return [];
      where.push(`project_id IN (${query.projectIds.map(() => '?').join(', ')})`);
      params.push(...query.projectIds);
    }
    if (query.statuses && query.statuses.length > 0) {
      where.push(`status IN (${query.statuses.map(() => '?').join(', ')})`);
      params.push(...query.statuses);
    }
    if (query.before) {
      where.push('run_id < ?');
      params.push(query.before);
    }
    const sql = `SELECT ${RUN_COLUMNS} FROM runs ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY run_id DESC LIMIT ?`;
    const rows = this.db.prepare(sql).all(...params, query.limit) as RunRow[];
    return rows.map(rowToRun);
  }

  /**
   * Group commit: the calls made in one turn of the event loop share one transaction (and one
   * COMMIT), each in its own savepoint so that a call that throws aborts only itself.
   */
  commitRun(
    runId: string,
    change: (current: RunRecord) => RunChange,
    options: CommitOptions = {},
  ): Promise<CommitResult> {
    if (this.closed) return Promise.reject(new AppError('NOT_READY', 'the store is closed'));
    return pendingCommit(runId, change, options, (pending) => {
      this.queue.push(pending);
      // setImmediate rather than a microtask: the requests whose data arrived in the same poll of
      // the event loop all reach commitRun before the check phase, so they share the batch.
      this.flushTimer ??= setImmediate(this.flushQueued);
    });
  }

  private readonly flushQueued = (): void => {
    this.flushTimer = undefined;
    this.commitQueued();
    if (this.queue.length > 0) this.flushTimer ??= setImmediate(this.flushQueued);
  };

  /** Commits the oldest queued calls (at most one batch), then settles them in call order. */
  private commitQueued(): void {
    const batch = this.queue.splice(0, this.maxCommitBatch);
    try {
      this.storage.write(() => this.commitBatch(batch));
    } catch (err) {
      for (const pending of batch) pending.reject(err);
      return;
    }
    settleBatch(batch);
  }

  /** One call's commit, inside the batch's transaction. */
  private applyCommit({ runId, change, claim, known, fence }: PendingCommit): CommitResult {
    const current = this.currentRun(runId, known);
    if (fence) checkFence(runId, fence, this.sql.lease.get(runId) as StoredLease);
    if (claim) {
      const replayed = replayOf(
        claim,
        this.sql.idempotencyKey.get(runId, claim.key) as IdempotencyRow | undefined,
      );
      if (replayed) return replayed;
    }
    const result = change(current);
    checkStateChange(current, result.run);
    checkLogSeqs(current, result);
    const run = { ...result.run, log_count: current.log_count + result.logs.length };
    for (const event of result.logs) {
      this.sql.insertEvent.run(runId, event.seq, 'log', event.at, JSON.stringify(event.log));
    }
    const excess = run.log_count - this.retention;
    if (excess > 0) {
      const seqs = this.sql.oldestEventSeqs.all(runId, excess) as number[];
      const through = seqs[seqs.length - 1];
      if (through !== undefined) {
        this.sql.deleteEventsThrough.run(runId, through);
        run.log_count -= seqs.length;
        run.pruned_through_seq = Math.max(run.pruned_through_seq, through);
      }
    }
    this.sql.updateRunState.run(...stateValues(run), runId);
    const committed: RunChange = { run, logs: result.logs };
    if (claim) this.storeIdempotencyKey(runId, claim.key, claim.fingerprint, claim.response(committed));
    return { replayed: false, change: committed };
  }

  /**
   * The stored run, inside a commit's transaction. The caller's `known` copy is used when the row
   * still has its seq and log bookkeeping: then nothing has been committed to the run since.
   */
  private currentRun(runId: string, known: RunRecord | undefined): RunRecord {
    if (known) {
      const version = this.sql.runVersion.get(runId) as RunVersion | undefined;
      if (!version) throw new AppError('RUN_NOT_FOUND', `run ${runId} not found`);
      if (
        version.seq === known.seq &&
        version.log_count === known.log_count &&
        version.pruned_through_seq === known.pruned_through_seq
      ) {
        return known;
      }
    }
    const row = this.sql.run.get(runId) as RunRow | undefined;
    if (!row) throw new AppError('RUN_NOT_FOUND', `run ${runId} not found`);
    return rowToRun(row);
  }

  /** Inside a commit's transaction; now and then also deletes the keys past their TTL. */
  private storeIdempotencyKey(runId: string, key: string, fingerprint: string, response: string): void {
    const now = this.now();
    this.sql.insertIdempotencyKey.run(runId, key, fingerprint, response, now.toISOString());
    if (now.getTime() - this.lastIdempotencyPruneMs >= IDEMPOTENCY_PRUNE_INTERVAL_MS) {
      this.lastIdempotencyPruneMs = now.getTime();
      this.sql.pruneIdempotencyKeys.run(new Date(now.getTime() - this.idempotencyTtlMs).toISOString());
    }
  }

  async claimRuns({ owner, kinds, limit, leaseMs, reclaimOwn }: ClaimRequest): Promise<ClaimedRun[]> {
    if (limit <= 0 || kinds.length === 0) return [];
    const now = this.now().getTime();
    return this.storage.write(
      this.db.transaction(() => {
        const runIds = this.sql.claimable.all({
          kinds: JSON.stringify(kinds),
          now,
          owner,
          reclaim: reclaimOwn ? 1 : 0,
          limit,
        }) as string[];
        return runIds.map((runId) => {
          const fence = this.sql.claim.get(owner, now + leaseMs, runId) as number;
          return { run: rowToRun(this.sql.run.get(runId) as RunRow), fence };
        });
      }),
    );
  }

  async renewLeases(
    owner: string,
    leases: readonly { run_id: string; fence: number }[],
    leaseMs: number,
  ): Promise<string[]> {
    const until = this.now().getTime() + leaseMs;
    return this.storage.write(
      this.db.transaction(() =>
        leases
          .filter(({ run_id, fence }) => this.sql.renew.run(until, run_id, owner, fence).changes > 0)
          .map(({ run_id }) => run_id),
      ),
    );
  }

  async replay(
    runId: string,
    since: number,
    limit: number,
    maxBytes = Number.POSITIVE_INFINITY,
  ): Promise<RunReplay | undefined> {
    return this.db
      .transaction((): RunReplay | undefined => {
        const row = this.sql.run.get(runId) as RunRow | undefined;
        if (!row) return undefined;
        const events: LogEvent[] = [];
        let bytes = 0;
        let more = false;
        // Row by row, so that a page of large events stops at its byte budget instead of reading
        // (and holding) everything up to `limit`.
        for (const event of this.sql.eventsAfter.iterate(
          runId,
          since,
          limit + 1,
        ) as IterableIterator<EventRow>) {
          if (events.length === limit || (events.length > 0 && bytes + event.body.length > maxBytes)) {
            more = true;
            break;
          }
          bytes += event.body.length;
          events.push(rowToEvent(event));
        }
        return { run: rowToRun(row), events, truncated: since < row.pruned_through_seq, more };
      })
      .deferred();
  }
}
