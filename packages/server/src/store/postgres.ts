import type { LogEvent, MemberRole } from '@runcast/protocol';
import pg from 'pg';
import { type CommitNotifier, PAYLOAD_SEPARATOR } from '../bus/bus.js';
import { AppError } from '../errors.js';
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
import { POSTGRES_MIGRATIONS } from './postgres-migrations.js';
import {
  checkLogSeqs,
  checkStateChange,
  claimableRuns,
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

export interface PostgresStoreOptions extends CommitSettings {
  /** `postgres://` or `postgresql://` connection URL. */
  url: string;
  /**
   * Transactions that commit at once (default 1). A run always commits through the same one, so
   * one process settles a run's commits in call order; different runs may commit in parallel.
   * One lane makes the largest batches (everything that arrives while the last one commits): at
   * 2,000 events/s on three nodes it cost the nodes 18% less CPU and PostgreSQL half as much as
   * four lanes, and acknowledged more updates/s (8,239 against 5,785) — a batch is one short
   * statement, and each one is a notification every node wakes up for.
   */
  commitLanes?: number;
  /**
   * Least time between the starts of a lane's batches (default 4 ms). A busy lane commits each
   * batch in about a millisecond; waiting a little longer for the next one gathers several times
   * the calls into it. At 2,000 events/s it made batches of ~10 calls instead of ~3, which cost
   * the three nodes 7% less CPU and PostgreSQL 11% less. A lane that was idle commits at once.
   */
  batchIntervalMs?: number;
  /** Connections in the pool (default 10); at least `commitLanes` + 1. */
  maxConnections?: number;
  /** Told about an error on an idle pooled connection; the pool replaces the connection. */
  onError?: (err: Error) => void;
  /** Sends each batch's run events as notifications inside its commit (the PostgreSQL bus). */
  notifier?: CommitNotifier | undefined;
}

const DEFAULT_COMMIT_LANES = 1;
const DEFAULT_BATCH_INTERVAL_MS = 4;
/** Advisory lock keys ("RCM1", "RCI1"): one node migrates at a time; one node prunes keys at a time. */
const MIGRATION_LOCK = 0x52434d31;
const IDEMPOTENCY_PRUNE_LOCK = 0x52434931;
const UNIQUE_VIOLATION = '23505';
/** Raised by `runcast_expect_runs`: a batch written without locks found a run moved on. */
const RUNS_MOVED = 'RC409';

const INT8 = 20;
const INT8_ARRAY = 1016;
const builtinParser = pg.types.getTypeParser as (oid: number, format?: string) => (text: string) => unknown;
const parseInt8Array = builtinParser(INT8_ARRAY) as (text: string) => (string | null)[];
/** bigint columns (seqs, counts) as numbers: they stay far below 2^53. */
const TYPES: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => {
    if (format !== 'binary' && oid === INT8) return Number;
    if (format !== 'binary' && oid === INT8_ARRAY)
      return (text: string) => parseInt8Array(text).map((value) => (value === null ? null : Number(value)));
    return builtinParser(oid, format);
  }) as pg.CustomTypesConfig['getTypeParser'],
};

/** A call in a batch, with the answer stored with its new idempotency key. */
interface BatchCall extends PendingCommit {
  response?: string;
}

/** One event a batch writes. */
interface NewEvent {
  seq: number;
  at: string;
  body: string;
}

/** A run locked by a batch, and what the batch's calls did to it so far. */
interface BatchRun {
  /** The run as the next call in the batch sees it. */
  current: RunRecord;
  /** Its log_count when the batch locked it: how many stored events precede `added`. */
  storedCount: number;
  /** Its seq when the batch locked it: no stored event has a greater one. */
  storedSeq: number;
  /** The oldest stored events' seqs, as many as were read (pruning needs them). */
  oldest: number[];
  /** Who held the run when the batch locked it: fenced calls are checked against it. */
  lease: StoredLease;
  /** Lock-free: `lease` is the calls' fence, which the write itself checks. */
  fenced: boolean;
  /** Events the batch's calls added, ascending. */
  added: NewEvent[];
  /** How many of (stored events, then `added`) the batch's calls pruned. */
  pruned: number;
  changed: boolean;
}

/** A key in a batch: stored before, or claimed by an earlier call of the same batch. */
type SeenKey = { fingerprint: string; response: string };

/** Runs of the same lane commit one batch at a time. */
interface Lane {
  queue: BatchCall[];
  /** Cancels the batch scheduled to start; undefined when none is. */
  cancel: (() => void) | undefined;
  flushing: Promise<void> | undefined;
  /** When its last batch started (`performance.now()`). */
  startedMs: number;
}

const keyOf = (runId: string, key: string): string => `${runId}\n${key}`;

/** FNV-1a: spreads run ids over lanes. */
function hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

const RUN_COLUMN_LIST = RUN_COLUMNS.split(', ');
const INSERT_RUN = `INSERT INTO runs (${RUN_COLUMNS}) VALUES (${RUN_COLUMN_LIST.map((_, i) => `$${i + 1}`).join(', ')})`;
/** Locks a batch's runs in run_id order, so that two nodes' batches can never deadlock. */
const LOCK_RUNS = `SELECT ${RUN_COLUMNS}, owner AS lease_owner, fence AS lease_fence FROM runs
  WHERE run_id = ANY($1::text[]) ORDER BY run_id FOR UPDATE`;
/** Milliseconds since the epoch by the database's clock: leases do not depend on the nodes' clocks agreeing. */
const NOW_MS = '(extract(epoch FROM clock_timestamp()) * 1000)::bigint';
/**
 * Claims runs: rows another node is claiming, or committing to, are skipped rather than waited
 * for; each claim increments the run's fence.
 */
const CLAIM_RUNS = `
  UPDATE runs r SET owner = $1, lease_until = ${NOW_MS} + $4, fence = r.fence + 1
  FROM (
    SELECT run_id FROM runs
    WHERE kind = ANY($2::text[]) AND ${claimableRuns(NOW_MS, '$1', '$5::boolean')}
    ORDER BY run_id LIMIT $3 FOR UPDATE SKIP LOCKED
  ) c
  WHERE r.run_id = c.run_id
  RETURNING ${RUN_COLUMN_LIST.map((c) => `r.${c}`).join(', ')}, r.fence AS lease_fence`;
const RENEW_LEASES = `
  UPDATE runs r SET lease_until = ${NOW_MS} + $2
  FROM unnest($3::text[], $4::bigint[]) AS l(run_id, fence)
  WHERE r.run_id = l.run_id AND r.owner = $1 AND r.fence = l.fence
  RETURNING r.run_id`;
const STATE_TYPES: Record<(typeof STATE_COLUMNS)[number], string> = {
  status: 'text',
  stage: 'text',
  current_stage: 'text',
  progress: 'text',
  stats: 'text',
  error: 'text',
  seq: 'bigint',
  started_at: 'text',
  finished_at: 'text',
  updated_at: 'text',
  log_count: 'bigint',
  pruned_through_seq: 'bigint',
};
/**
 * A batch's writes in one statement: pruned events, new events, new keys, the runs' new state,
 * and the notifications announcing them (sent when the transaction commits). Its rows travel as
 * JSON arrays of objects, which cost the node one native JSON.stringify each; the notifications
 * as one text, their payloads joined by U+001E (`PAYLOAD_SEPARATOR`), which none holds. Each run is written
 * only if it is still at the seq the batch computed from (and, for a fenced writer, still under
 * its fence); if one is not, `runcast_expect_runs` undoes the whole statement. Under the runs'
 * locks that always holds; without them it is what makes a lock-free batch safe.
 */
const WRITE_BATCH = `
  WITH pruned AS (
    DELETE FROM run_events e USING json_to_recordset($1::json) AS d(run_id text, through bigint)
    WHERE e.run_id = d.run_id AND e.seq <= d.through
  ), events AS (
    INSERT INTO run_events (run_id, seq, type, at, body)
    SELECT run_id, seq, 'log', at, body
    FROM json_to_recordset($2::json) AS v(run_id text, seq bigint, at text, body text)
  ), keys AS (
    INSERT INTO idempotency_keys (run_id, key, fingerprint, response, created_at)
    SELECT run_id, key, fingerprint, response, created_at
    FROM json_to_recordset($3::json) AS k(run_id text, key text, fingerprint text, response text, created_at text)
  ), written AS (
    UPDATE runs r SET ${STATE_COLUMNS.map((c) => `${c} = u.${c}`).join(', ')}
    FROM json_to_recordset($4::json) AS u(run_id text, from_seq bigint, fence_owner text, fence bigint,
      ${STATE_COLUMNS.map((c) => `${c} ${STATE_TYPES[c]}`).join(', ')})
    WHERE r.run_id = u.run_id AND r.seq = u.from_seq
      AND (u.fence_owner IS NULL OR (r.owner = u.fence_owner AND r.fence = u.fence))
    RETURNING r.run_id
  )
  SELECT runcast_expect_runs((SELECT count(*) FROM written), json_array_length($4::json)) AS written,
    (SELECT count(pg_notify($5, note)) FROM unnest(string_to_array($6::text, chr(30))) AS n(note)) AS notified`;
/** The oldest `n` stored events' seqs of each run. */
const OLDEST_EVENTS = `
  SELECT e.run_id, e.seq FROM unnest($1::text[], $2::int[]) AS want(run_id, n)
  CROSS JOIN LATERAL (
    SELECT run_id, seq FROM run_events WHERE run_id = want.run_id ORDER BY seq LIMIT want.n
  ) e
  ORDER BY e.run_id, e.seq`;
/**
 * A run and a page of its events in one statement (one snapshot): at most $3 events after seq $2,
 * and no more once their bodies passed $4 characters (the first always comes).
 */
const REPLAY = `
  SELECT ${RUN_COLUMN_LIST.map((c) => `r.${c}`).join(', ')}, p.seqs, p.ats, p.bodies, coalesce(p.more, false) AS more
  FROM runs r LEFT JOIN LATERAL (
    SELECT array_agg(seq ORDER BY seq) FILTER (WHERE fits) AS seqs,
      array_agg(at ORDER BY seq) FILTER (WHERE fits) AS ats,
      array_agg(body ORDER BY seq) FILTER (WHERE fits) AS bodies,
      bool_or(NOT fits) AS more
    FROM (
      SELECT seq, at, body,
        row_number() OVER w <= $3
          AND (row_number() OVER w = 1 OR $4::bigint IS NULL OR sum(char_length(body)) OVER w <= $4) AS fits
      FROM (
        SELECT seq, at, body FROM run_events WHERE run_id = r.run_id AND seq > $2 ORDER BY seq LIMIT $3 + 1
      ) e
      WINDOW w AS (ORDER BY seq)
    ) page
  ) p ON true
  WHERE r.run_id = $1`;

/** A run row locked by a batch, with its lease. */
interface LockedRow extends RunRow {
  lease_owner: string | null;
  lease_fence: number;
}

interface ReplayRow extends RunRow {
  seqs: number[] | null;
  ats: string[] | null;
  bodies: string[] | null;
  more: boolean;
}

/**
 * The scale-out store: every node on one PostgreSQL database. A run's seq is assigned in the
 * transaction that writes the change, under the run row's lock, and a commit resolves only after
 * COMMIT; commits from several nodes to one run serialize on that lock.
 */
export class PostgresStore implements Store {
  private readonly pool: pg.Pool;
  private readonly retention: number;
  private readonly idempotencyTtlMs: number;
  private readonly now: () => Date;
  private readonly maxCommitBatch: number;
  private readonly batchIntervalMs: number;
  private readonly storage: StorageHealth;
  private readonly lanes: Lane[];
  private readonly notifier: CommitNotifier | undefined;
  private lastIdempotencyPruneMs = Number.NEGATIVE_INFINITY;
  private closed = false;

  /** Connects, brings the schema up to date, and answers the store. */
  static async open(options: PostgresStoreOptions): Promise<PostgresStore> {
    const store = new PostgresStore(options);
    try {
      await store.migrate();
    } catch (err) {
      await store.pool.end();
      throw err;
    }
    return store;
  }

  private constructor(options: PostgresStoreOptions) {
    const lanes = options.commitLanes ?? DEFAULT_COMMIT_LANES;
    this.pool = new pg.Pool({
      connectionString: options.url,
      max: Math.max(options.maxConnections ?? 10, lanes + 1),
      types: TYPES,
    });
    // An idle connection that fails (the server restarted, a proxy cut it) must not crash the
    // process; the pool drops it and connects anew on demand.
    this.pool.on('error', (err) => options.onError?.(err));
    this.retention = options.eventRetention;
    this.idempotencyTtlMs = options.idempotencyTtlMs ?? DEFAULT_IDEMPOTENCY_TTL_MS;
    this.now = options.now ?? (() => new Date());
    this.maxCommitBatch = options.maxCommitBatch ?? DEFAULT_MAX_COMMIT_BATCH;
    this.batchIntervalMs = options.batchIntervalMs ?? DEFAULT_BATCH_INTERVAL_MS;
    // The disk is the database server's: no directory here to probe for free space.
    this.storage = new StorageHealth({ dir: undefined, onChange: options.onStorageFull });
    this.lanes = Array.from({ length: lanes }, () => ({
      queue: [],
      cancel: undefined,
      flushing: undefined,
      startedMs: Number.NEGATIVE_INFINITY,
    }));
    this.notifier = options.notifier;
  }

  /**
   * Applies the migrations this database lacks, under an advisory lock: nodes that start at once
   * migrate one after the other, and all but the first find nothing left to do.
   */
  private async migrate(): Promise<void> {
    const client = await this.pool.connect();
    try {
      await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
      try {
        await client.query(
          'CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())',
        );
        const version = await this.versionOf(client);
        if (version > POSTGRES_MIGRATIONS.length) {
          throw new Error(
            `database schema version ${version} is newer than this Runcast (${POSTGRES_MIGRATIONS.length}); upgrade Runcast`,
          );
        }
        for (let next = version; next < POSTGRES_MIGRATIONS.length; next++) {
          await client.query('BEGIN');
          try {
            await client.query(POSTGRES_MIGRATIONS[next] ?? '');
            await client.query('INSERT INTO schema_migrations (version) VALUES ($1)', [next + 1]);
            await client.query('COMMIT');
          } catch (err) {
            await client.query('ROLLBACK');
            throw err;
          }
        }
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]);
      }
    } finally {
      client.release();
    }
  }

  private async versionOf(client: pg.ClientBase): Promise<number> {
    const { rows } = await client.query<{ version: number | null }>(
      'SELECT max(version) AS version FROM schema_migrations',
    );
    return rows[0]?.version ?? 0;
  }

  /** Schema version after migrations. */
  async schemaVersion(): Promise<number> {
    const client = await this.pool.connect();
    try {
      return await this.versionOf(client);
    } finally {
      client.release();
    }
  }

  /** Commits the `commitRun` calls still queued, then closes the pool. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const lane of this.lanes) {
      lane.cancel?.();
      lane.cancel = undefined;
    }
    for (const lane of this.lanes) {
      while (lane.flushing || lane.queue.length > 0) {
        if (!lane.flushing) this.flush(lane);
        await lane.flushing;
      }
    }
    await this.pool.end();
  }

  /**
   * Resolves when the database answers. Unlike SQLite's, it does not fail while the disk is full:
   * the disk is the database server's, shared by every node, and taking nodes out of a balancer
   * would free none of it; writes still answer STORAGE_FULL.
   */
  async ping(): Promise<void> {
    await this.pool.query('SELECT 1');
  }

  /** Runs a write: a full disk becomes STORAGE_FULL, and a write that succeeds clears it. */
  private async write<T>(work: () => Promise<T>): Promise<T> {
    let result: T;
    try {
      result = await work();
    } catch (err) {
      throw this.storage.failed(err);
    }
    this.storage.succeeded();
    return result;
  }

  /** `work` in one transaction on one pooled connection. */
  private async transaction<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      const result = await work(client);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      try {
        await client.query('ROLLBACK');
      } catch (rollbackError) {
        // The connection itself failed: the pool must not hand it out again.
        broken = rollbackError as Error;
      }
      throw err;
    } finally {
      client.release(broken);
    }
  }

  private async rows<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
    return (await this.pool.query<R>(sql, params)).rows;
  }

  async createUser(user: UserRecord): Promise<void> {
    try {
      await this.write(() =>
        this.pool.query(
          'INSERT INTO users (user_id, username, role, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)',
          [user.user_id, user.username, user.role, user.password_hash, user.created_at],
        ),
      );
    } catch (err) {
      if ((err as { code?: string }).code === UNIQUE_VIOLATION)
        throw new AppError('ALREADY_EXISTS', `user "${user.username}" already exists`);
      throw err;
    }
  }

  async getUser(userId: string): Promise<UserRecord | undefined> {
    return (await this.rows<UserRecord>('SELECT * FROM users WHERE user_id = $1', [userId]))[0];
  }

  async getUserByUsername(username: string): Promise<UserRecord | undefined> {
    return (await this.rows<UserRecord>('SELECT * FROM users WHERE username = $1', [username]))[0];
  }

  async listUsers(): Promise<UserRecord[]> {
    return this.rows<UserRecord>('SELECT * FROM users ORDER BY username');
  }

  async countUsers(): Promise<number> {
    return (await this.rows<{ n: number }>('SELECT count(*) AS n FROM users'))[0]?.n ?? 0;
  }

  async setPassword(userId: string, passwordHash: string): Promise<void> {
    await this.write(() =>
      this.pool.query(
        'WITH ended AS (DELETE FROM sessions WHERE user_id = $2) UPDATE users SET password_hash = $1 WHERE user_id = $2',
        [passwordHash, userId],
      ),
    );
  }

  async createSession(session: SessionRecord): Promise<void> {
    await this.write(() =>
      this.pool.query(
        `WITH expired AS (DELETE FROM sessions WHERE expires_at < $5)
         INSERT INTO sessions (session_id, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)`,
        [
          session.session_id,
          session.user_id,
          session.created_at,
          session.expires_at,
          new Date().toISOString(),
        ],
      ),
    );
  }

  async getSession(sessionId: string): Promise<SessionRecord | undefined> {
    return (await this.rows<SessionRecord>('SELECT * FROM sessions WHERE session_id = $1', [sessionId]))[0];
  }

  async deleteSession(sessionId: string): Promise<void> {
    await this.write(() => this.pool.query('DELETE FROM sessions WHERE session_id = $1', [sessionId]));
  }

  async createApiToken(token: ApiTokenRecord): Promise<void> {
    await this.write(() =>
      this.pool.query(
        'INSERT INTO api_tokens (token_id, project_id, name, secret_hash, created_by, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)',
        [
          token.token_id,
          token.project_id,
          token.name,
          token.secret_hash,
          token.created_by,
          token.created_at,
          token.revoked_at,
        ],
      ),
    );
  }

  async getApiToken(tokenId: string): Promise<ApiTokenRecord | undefined> {
    return (await this.rows<ApiTokenRecord>('SELECT * FROM api_tokens WHERE token_id = $1', [tokenId]))[0];
  }

  async listApiTokens(projectIds: readonly string[] | 'all'): Promise<ApiTokenRecord[]> {
    if (projectIds === 'all') return this.rows<ApiTokenRecord>('SELECT * FROM api_tokens ORDER BY token_id');
    return this.rows<ApiTokenRecord>(
      'SELECT * FROM api_tokens WHERE project_id = ANY($1::text[]) ORDER BY token_id',
      [projectIds],
    );
  }

  async revokeApiToken(tokenId: string, at: string): Promise<void> {
    await this.write(() =>
      this.pool.query('UPDATE api_tokens SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL', [
        at,
        tokenId,
      ]),
    );
  }

  async createProject(project: ProjectRecord): Promise<void> {
    await this.write(() =>
      this.pool.query(
        `WITH created AS (
           INSERT INTO projects (project_id, name, created_by, created_at) VALUES ($1, $2, $3, $4)
         )
         INSERT INTO project_members (project_id, user_id, role) VALUES ($1, $3, 'operator')`,
        [project.project_id, project.name, project.created_by, project.created_at],
      ),
    );
  }

  async getProject(projectId: string): Promise<ProjectRecord | undefined> {
    return (await this.rows<ProjectRecord>('SELECT * FROM projects WHERE project_id = $1', [projectId]))[0];
  }

  async listProjects(memberUserId: string | 'all'): Promise<ProjectRecord[]> {
    if (memberUserId === 'all') return this.rows<ProjectRecord>('SELECT * FROM projects ORDER BY project_id');
    return this.rows<ProjectRecord>(
      'SELECT p.* FROM projects p JOIN project_members m ON m.project_id = p.project_id WHERE m.user_id = $1 ORDER BY p.project_id',
      [memberUserId],
    );
  }

  async setMember(projectId: string, userId: string, role: MemberRole): Promise<void> {
    await this.write(() =>
      this.pool.query(
        'INSERT INTO project_members (project_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role',
        [projectId, userId, role],
      ),
    );
  }

  async removeMember(projectId: string, userId: string): Promise<boolean> {
    const result = await this.write(() =>
      this.pool.query('DELETE FROM project_members WHERE project_id = $1 AND user_id = $2', [
        projectId,
        userId,
      ]),
    );
    return (result.rowCount ?? 0) > 0;
  }

  async getMemberRole(projectId: string, userId: string): Promise<MemberRole | undefined> {
    const rows = await this.rows<{ role: MemberRole }>(
      'SELECT role FROM project_members WHERE project_id = $1 AND user_id = $2',
      [projectId, userId],
    );
    return rows[0]?.role;
  }

  async listMembers(projectId: string): Promise<MemberRecord[]> {
    return this.rows<MemberRecord>(
      'SELECT m.project_id, m.user_id, u.username, m.role FROM project_members m JOIN users u ON u.user_id = m.user_id WHERE m.project_id = $1 ORDER BY u.username',
      [projectId],
    );
  }

  async memberProjectIds(userId: string, roles: readonly MemberRole[]): Promise<string[]> {
    const rows = await this.rows<{ project_id: string }>(
      'SELECT project_id FROM project_members WHERE user_id = $1 AND role = ANY($2::text[]) ORDER BY project_id',
      [userId, roles],
    );
    return rows.map((row) => row.project_id);
  }

  async createRun(run: RunRecord): Promise<void> {
    const row = runToRow(run);
    await this.write(() =>
      this.pool.query(
        INSERT_RUN,
        RUN_COLUMN_LIST.map((column) => row[column as keyof RunRow]),
      ),
    );
  }

  async getRun(runId: string): Promise<RunRecord | undefined> {
    const row = (await this.rows<RunRow>(`SELECT ${RUN_COLUMNS} FROM runs WHERE run_id = $1`, [runId]))[0];
    return row && rowToRun(row);
  }

  async listRuns(query: RunQuery): Promise<RunRecord[]> {
    const where: string[] = [];
    const params: unknown[] = [];
    if (query.projectIds !== 'all') {
      if (query.projectIds.length === 0) return [];
      params.push(query.projectIds);
      where.push(`project_id = ANY($${params.length}::text[])`);
    }
    if (query.statuses && query.statuses.length > 0) {
      params.push(query.statuses);
      where.push(`status = ANY($${params.length}::text[])`);
    }
    if (query.before) {
      params.push(query.before);
      where.push(`run_id < $${params.length}`);
    }
    params.push(query.limit);
    const sql = `SELECT ${RUN_COLUMNS} FROM runs ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY run_id DESC LIMIT $${params.length}`;
    return (await this.rows<RunRow>(sql, params)).map(rowToRun);
  }

  /**
   * Group commit: the calls that arrive in one turn of the event loop, or while their lane's
   * previous batch is committing, share one transaction and one COMMIT. A call whose change
   * throws is left out of the batch's writes, so it aborts only itself.
   */
  commitRun(
    runId: string,
    change: (current: RunRecord) => RunChange,
    options: CommitOptions = {},
  ): Promise<CommitResult> {
    if (this.closed) return Promise.reject(new AppError('NOT_READY', 'the store is closed'));
    const lane = this.lanes[hash(runId) % this.lanes.length] as Lane;
    return pendingCommit(runId, change, options, (pending) => {
      lane.queue.push(pending);
      this.schedule(lane);
    });
  }

  private schedule(lane: Lane): void {
    if (lane.flushing || lane.cancel || this.closed) return;
    const start = () => {
      lane.cancel = undefined;
      this.flush(lane);
    };
    const waitMs = lane.startedMs + this.batchIntervalMs - performance.now();
    if (waitMs >= 1) {
      const timer = setTimeout(start, waitMs);
      lane.cancel = () => clearTimeout(timer);
      return;
    }
    // setImmediate rather than a microtask: the requests whose data arrived in the same poll of
    // the event loop all reach commitRun before the check phase, so they share the batch.
    const immediate = setImmediate(start);
    lane.cancel = () => clearImmediate(immediate);
  }

  private flush(lane: Lane): void {
    lane.startedMs = performance.now();
    const batch = lane.queue.splice(0, this.maxCommitBatch);
    lane.flushing = this.commitBatch(batch).finally(() => {
      lane.flushing = undefined;
      if (lane.queue.length > 0) this.schedule(lane);
    });
  }

  /**
   * Commits a batch, then settles its calls in call order; never rejects. A batch whose runs the
   * callers know (this node wrote or read them last) is first written in one statement without
   * locks, guarded by the seqs it computed from; one that cannot be (a run moved on, a key is
   * already stored, events must be pruned, a call failed) is computed again under the runs' locks.
   */
  private async commitBatch(batch: BatchCall[]): Promise<void> {
    try {
      await this.write(async () => {
        if (await this.commitWithoutLocks(batch)) return;
        for (const pending of batch)
          Object.assign(pending, { result: undefined, error: undefined, response: undefined });
        await this.transaction((client) => this.applyBatch(client, batch));
      });
    } catch (err) {
      for (const pending of batch) pending.reject(err);
      return;
    }
    settleBatch(batch);
  }

  /** The lock-free attempt: false when the batch must be computed again under locks. */
  private async commitWithoutLocks(batch: readonly BatchCall[]): Promise<boolean> {
    if (this.pruneDue() && batch.some((pending) => pending.claim)) return false;
    const runs = new Map<string, BatchRun>();
    for (const pending of batch) {
      if (runs.has(pending.runId)) continue;
      const known = pending.known;
      if (!known) return false;
      runs.set(pending.runId, {
        current: known,
        storedCount: known.log_count,
        storedSeq: known.seq,
        // The statement checks the fence; calls of one run under different fences take the locks.
        lease: { owner: pending.fence?.owner ?? null, fence: pending.fence?.fence ?? 0 },
        fenced: pending.fence !== undefined,
        oldest: [],
        added: [],
        pruned: 0,
        changed: false,
      });
    }
    const seen = new Map<string, SeenKey>();
    for (const pending of batch) {
      try {
        pending.result = await this.applyCommit(undefined, pending, runs.get(pending.runId), seen);
      } catch (err) {
        pending.error = err;
        return false;
      }
    }
    try {
      await this.writeBatch(this.pool, runs, batch);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === RUNS_MOVED || code === UNIQUE_VIOLATION) return false;
      throw err;
    }
    return true;
  }

  /**
   * Inside the batch's transaction: locks its runs, reads what its calls need, lets each call's
   * change compute its next state in call order (each seeing the one before), then writes it all.
   */
  private async applyBatch(client: pg.PoolClient, batch: readonly BatchCall[]): Promise<void> {
    const runIds = [...new Set(batch.map((pending) => pending.runId))].sort();
    const locked = (await client.query<LockedRow>(LOCK_RUNS, [runIds])).rows;
    // After the lock: keys and events that other nodes committed to these runs are visible now.
    const seen = await this.storedKeys(client, batch, new Set(locked.map((row) => row.run_id)));
    const runs = new Map<string, BatchRun>();
    for (const { lease_owner, lease_fence, ...row } of locked) {
      const known = batch.find((pending) => pending.runId === row.run_id && pending.known)?.known;
      const current =
        known &&
        known.seq === row.seq &&
        known.log_count === row.log_count &&
        known.pruned_through_seq === row.pruned_through_seq
          ? known
          : rowToRun(row);
      runs.set(row.run_id, {
        current,
        storedCount: row.log_count,
        storedSeq: row.seq,
        lease: { owner: lease_owner, fence: lease_fence },
        fenced: false,
        oldest: [],
        added: [],
        pruned: 0,
        changed: false,
      });
    }
    await this.readOldest(client, runs, batch);

    for (const pending of batch) {
      try {
        pending.result = await this.applyCommit(client, pending, runs.get(pending.runId), seen);
      } catch (err) {
        pending.error = err;
      }
    }
    if (batch.some((pending) => pending.claim && pending.response !== undefined)) {
      await this.pruneIdempotencyKeys(client, this.now());
    }
    await this.writeBatch(client, runs, batch);
  }

  /** The stored keys the batch's claims name, for the runs that exist. */
  private async storedKeys(
    client: pg.PoolClient,
    batch: readonly BatchCall[],
    existing: ReadonlySet<string>,
  ): Promise<Map<string, SeenKey>> {
    const seen = new Map<string, SeenKey>();
    const claimed = batch.filter((pending) => pending.claim && existing.has(pending.runId));
    if (claimed.length === 0) return seen;
    const { rows } = await client.query<{ run_id: string; key: string } & SeenKey>(
      `SELECT k.run_id, k.key, k.fingerprint, k.response FROM idempotency_keys k
       JOIN unnest($1::text[], $2::text[]) AS c(run_id, key) ON k.run_id = c.run_id AND k.key = c.key`,
      [claimed.map((pending) => pending.runId), claimed.map((pending) => pending.claim?.key)],
    );
    for (const row of rows) seen.set(keyOf(row.run_id, row.key), row);
    return seen;
  }

  /**
   * Reads the oldest stored events of the runs whose commits may push them out of retention,
   * guessing one log event per call; a call that adds more reads the rest when it needs them.
   */
  private async readOldest(
    client: pg.PoolClient,
    runs: ReadonlyMap<string, BatchRun>,
    batch: readonly BatchCall[],
  ): Promise<void> {
    const calls = new Map<string, number>();
    for (const pending of batch) calls.set(pending.runId, (calls.get(pending.runId) ?? 0) + 1);
    const want: { runId: string; n: number }[] = [];
    for (const [runId, run] of runs) {
      const n = Math.min(run.storedCount, run.storedCount + (calls.get(runId) ?? 0) - this.retention);
      if (n > 0) want.push({ runId, n });
    }
    if (want.length === 0) return;
    const { rows } = await client.query<{ run_id: string; seq: number }>(OLDEST_EVENTS, [
      want.map((w) => w.runId),
      want.map((w) => w.n),
    ]);
    for (const row of rows) runs.get(row.run_id)?.oldest.push(row.seq);
  }

  /**
   * The seq of the `index`-th oldest event of the run: stored first, then those the batch added.
   * Without a transaction (a lock-free batch) a stored event's seq cannot be read: the batch
   * takes the locks instead.
   */
  private async seqAt(
    client: pg.PoolClient | undefined,
    runId: string,
    run: BatchRun,
    added: NewEvent[],
    index: number,
  ) {
    if (index < run.storedCount) {
      if (index >= run.oldest.length) {
        if (!client) throw new Error(`run ${runId}: pruning stored events needs the run's lock`);
        const { rows } = await client.query<{ seq: number }>(
          'SELECT seq FROM run_events WHERE run_id = $1 ORDER BY seq OFFSET $2 LIMIT $3',
          [runId, run.oldest.length, index + 1 - run.oldest.length],
        );
        run.oldest.push(...rows.map((row) => row.seq));
      }
      const seq = run.oldest[index];
      if (seq !== undefined) return seq;
      throw new Error(`run ${runId} has fewer stored events than its log_count`);
    }
    const event = added[index - run.storedCount];
    if (!event) throw new Error(`run ${runId}: no event at position ${index}`);
    return event.seq;
  }

  /**
   * One call's commit, computed in memory on top of the batch's earlier calls; notes its effects
   * on `run` and `seen` only once nothing it does can throw any more.
   */
  private async applyCommit(
    client: pg.PoolClient | undefined,
    pending: BatchCall,
    run: BatchRun | undefined,
    seen: Map<string, SeenKey>,
  ): Promise<CommitResult> {
    const { runId, change, claim } = pending;
    if (!run) throw new AppError('RUN_NOT_FOUND', `run ${runId} not found`);
    checkFence(runId, pending.fence, run.lease);
    const current = run.current;
    if (claim) {
      const replayed = replayOf(claim, seen.get(keyOf(runId, claim.key)));
      if (replayed) return replayed;
    }
    const result = change(current);
    checkStateChange(current, result.run);
    checkLogSeqs(current, result);
    const added = [
      ...run.added,
      ...result.logs.map((event) => ({ seq: event.seq, at: event.at, body: JSON.stringify(event.log) })),
    ];
    const unpruned = current.log_count + result.logs.length;
    const logCount = Math.min(unpruned, this.retention);
    const pruned = run.pruned + (unpruned - logCount);
    let prunedThrough = result.run.pruned_through_seq;
    if (unpruned > logCount) {
      prunedThrough = Math.max(prunedThrough, await this.seqAt(client, runId, run, added, pruned - 1));
    }
    const committed: RunChange = {
      run: { ...result.run, log_count: logCount, pruned_through_seq: prunedThrough },
      logs: result.logs,
    };
    const response = claim?.response(committed);
    run.current = committed.run;
    run.added = added;
    run.pruned = pruned;
    run.changed = true;
    if (claim && response !== undefined) {
      pending.response = response;
      seen.set(keyOf(runId, claim.key), { fingerprint: claim.fingerprint, response });
    }
    return { replayed: false, change: committed };
  }

  /** Writes what the batch's calls committed, and the notifications of it, in one statement. */
  private async writeBatch(
    db: pg.Pool | pg.PoolClient,
    runs: ReadonlyMap<string, BatchRun>,
    batch: readonly BatchCall[],
  ): Promise<void> {
    const prune: { run_id: string; through: number }[] = [];
    const events: { run_id: string; seq: number; at: string; body: string }[] = [];
    const written: Record<string, unknown>[] = [];
    for (const [runId, run] of runs) {
      if (!run.changed) continue;
      const storedPruned = Math.min(run.pruned, run.storedCount);
      // All stored events pruned: the batch may not have read them all, but none is past storedSeq.
      const through = storedPruned === run.storedCount ? run.storedSeq : run.oldest[storedPruned - 1];
      if (storedPruned > 0 && through !== undefined) prune.push({ run_id: runId, through });
      for (const { seq, at, body } of run.added.slice(Math.max(0, run.pruned - run.storedCount))) {
        events.push({ run_id: runId, seq, at, body });
      }
      const row: Record<string, unknown> = {
        run_id: runId,
        from_seq: run.storedSeq,
        fence_owner: run.fenced ? run.lease.owner : null,
        fence: run.fenced ? run.lease.fence : null,
      };
      const values = stateValues(run.current);
      STATE_COLUMNS.forEach((column, i) => {
        row[column] = values[i];
      });
      written.push(row);
    }
    if (written.length === 0) return;
    const keys: Record<string, string>[] = [];
    const createdAt = this.now().toISOString();
    const changes: RunChange[] = [];
    for (const { runId, claim, response, result } of batch) {
      if (result && !result.replayed) changes.push(result.change);
      if (!claim || response === undefined) continue;
      keys.push({
        run_id: runId,
        key: claim.key,
        fingerprint: claim.fingerprint,
        response,
        created_at: createdAt,
      });
    }
    const notes = this.notifier ? this.notifier.payloads(changes) : [];
    await db.query({
      name: 'runcast-write-batch',
      text: WRITE_BATCH,
      values: [
        JSON.stringify(prune),
        JSON.stringify(events),
        JSON.stringify(keys),
        JSON.stringify(written),
        this.notifier?.channel ?? null,
        notes.length > 0 ? notes.join(PAYLOAD_SEPARATOR) : null,
      ],
    });
  }

  private pruneDue(): boolean {
    return this.now().getTime() - this.lastIdempotencyPruneMs >= IDEMPOTENCY_PRUNE_INTERVAL_MS;
  }

  /**
   * Now and then, inside a commit that stores a key, deletes the keys past their TTL. One node at
   * a time: the others skip it rather than wait on the same rows.
   */
  private async pruneIdempotencyKeys(client: pg.PoolClient, now: Date): Promise<void> {
    if (!this.pruneDue()) return;
    this.lastIdempotencyPruneMs = now.getTime();
    await client.query(
      `WITH turn AS (SELECT pg_try_advisory_xact_lock($2) AS mine)
       DELETE FROM idempotency_keys WHERE created_at < $1 AND (SELECT mine FROM turn)`,
      [new Date(now.getTime() - this.idempotencyTtlMs).toISOString(), IDEMPOTENCY_PRUNE_LOCK],
    );
  }

  async claimRuns({ owner, kinds, limit, leaseMs, reclaimOwn }: ClaimRequest): Promise<ClaimedRun[]> {
    if (limit <= 0 || kinds.length === 0) return [];
    const rows = await this.write(() =>
      this.rows<RunRow & { lease_fence: number }>(CLAIM_RUNS, [
        owner,
        kinds,
        limit,
        leaseMs,
        reclaimOwn ?? false,
      ]),
    );
    return rows
      .map(({ lease_fence, ...row }) => ({ run: rowToRun(row), fence: lease_fence }))
      .sort((a, b) => (a.run.run_id < b.run.run_id ? -1 : 1));
  }

  async renewLeases(
    owner: string,
    leases: readonly { run_id: string; fence: number }[],
    leaseMs: number,
  ): Promise<string[]> {
    if (leases.length === 0) return [];
    const rows = await this.write(() =>
      this.rows<{ run_id: string }>(RENEW_LEASES, [
        owner,
        leaseMs,
        leases.map((lease) => lease.run_id),
        leases.map((lease) => lease.fence),
      ]),
    );
    return rows.map((row) => row.run_id);
  }

  async replay(
    runId: string,
    since: number,
    limit: number,
    maxBytes = Number.POSITIVE_INFINITY,
  ): Promise<RunReplay | undefined> {
    const row = (
      await this.rows<ReplayRow>(REPLAY, [
        runId,
        since,
        limit,
        Number.isFinite(maxBytes) ? Math.floor(maxBytes) : null,
      ])
    )[0];
    if (!row) return undefined;
    const { seqs, ats, bodies, more, ...runRow } = row;
    const events: LogEvent[] = (seqs ?? []).map((seq, i) =>
      rowToEvent({ run_id: runId, seq, at: ats?.[i] ?? '', body: bodies?.[i] ?? 'null' }),
    );
    return { run: rowToRun(runRow), events, truncated: since < runRow.pruned_through_seq, more };
  }
}
