import type { LogEvent, MemberRole, Role, RunKind, RunSnapshot, RunStatus } from '@runcast/protocol';

/** A user as stored: the password only as its scrypt hash. */
export interface UserRecord {
  user_id: string;
  username: string;
  role: Role;
  password_hash: string;
  created_at: string;
}

/** A login session; logout deletes it, which invalidates its token at once. */
export interface SessionRecord {
  session_id: string;
  user_id: string;
  created_at: string;
  expires_at: string;
}

/** A worker's API token, scoped to one project; the secret only as its hash. */
export interface ApiTokenRecord {
  token_id: string;
  project_id: string;
  name: string;
  secret_hash: string;
  created_by: string;
  created_at: string;
  revoked_at: string | null;
}

export interface ProjectRecord {
  project_id: string;
  name: string;
  created_by: string;
  created_at: string;
}

export interface MemberRecord {
  project_id: string;
  user_id: string;
  username: string;
  role: MemberRole;
}

/** A run as stored: its snapshot plus what never goes on the wire. */
export interface RunRecord extends RunSnapshot {
  config: Record<string, unknown> | null;
  created_by: string;
  /** Log events currently retained. */
  log_count: number;
  /** Log events with seq <= this may have been pruned by retention. */
  pruned_through_seq: number;
}

/** What a committed change to a run consists of: its new record and the log events it adds. */
export interface RunChange {
  run: RunRecord;
  logs: LogEvent[];
}

/**
 * Makes a commit happen at most once per (run, key): the key is stored with the commit, in the same
 * transaction, together with the answer the first request got.
 */
export interface IdempotencyClaim {
  /** The client's `Idempotency-Key`. */
  key: string;
  /** Identifies the request the key was first used for; the key used for another request is refused. */
  fingerprint: string;
  /** The answer to keep for repeats of the key (JSON text), made from the committed change. */
  response(change: RunChange): string;
}

/** How `commitRun` applies a change. */
export interface CommitOptions {
  idempotency?: IdempotencyClaim | undefined;
  /**
   * The run as the caller last saw it committed, when it has it: the store may hand this to
   * `change` instead of reading the whole row, and commits the result only if the stored run is
   * still at its seq (a run's record changes only with its seq).
   */
  current?: RunRecord | undefined;
  /**
   * The writer's lease on the run: the commit is refused with LEASE_LOST, in its transaction,
   * unless the run is still held by this owner under this fence.
   */
  fence?: RunFence | undefined;
}

/** A node's hold on a run it executes: the owner and the fencing number of its claim. */
export interface RunFence {
  owner: string;
  fence: number;
}

/** What a node asks of `claimRuns`. */
export interface ClaimRequest {
  /** The claiming node's id. */
  owner: string;
  /** The kinds this node executes. */
  kinds: readonly RunKind[];
  /** Most runs to claim. */
  limit: number;
  /** How long the claim holds unless renewed. */
  leaseMs: number;
  /**
   * Also takes back the RUNNING runs this owner held whatever their lease: at start-up they are a
   * previous process's (the embedded store has one node, whose id never changes).
   */
  reclaimOwn?: boolean;
}

/** A run claimed by a node, with the fence its writes must carry. */
export interface ClaimedRun {
  run: RunRecord;
  fence: number;
}

/**
 * Which node executes which run. A claim takes a run no live lease holds and increments its fence;
 * the owner renews its lease well before it runs out; a node that dies loses its runs to whichever
 * node claims them after the lease. Never on the wire.
 */
export interface RunLeases {
  /**
   * Claims, oldest first, QUEUED runs of `kinds` that no live lease holds, and RUNNING ones whose
   * lease ran out (their owner died: the claimer ends them). Concurrent claimers never get one run.
   */
  claimRuns(request: ClaimRequest): Promise<ClaimedRun[]>;
  /** Extends the leases still held under these fences; answers the run ids renewed. */
  renewLeases(
    owner: string,
    leases: readonly { run_id: string; fence: number }[],
    leaseMs: number,
  ): Promise<string[]>;
}

/**
 * What `commitRun` did: committed `change`, or found the idempotency key already used and
 * committed nothing, answering the first request's stored `response`.
 */
export type CommitResult = { replayed: false; change: RunChange } | { replayed: true; response: string };

export interface RunQuery {
  /** The projects whose runs may be listed, or every project. */
  projectIds: readonly string[] | 'all';
  statuses?: readonly RunStatus[];
  /** Return runs older than this run id (the previous page's cursor). */
  before?: string;
  limit: number;
}

/** Log events after a cursor, read together with the run they belong to. */
export interface RunReplay {
  run: RunRecord;
  events: LogEvent[];
  /** The retained history no longer reaches back to the cursor. */
  truncated: boolean;
  /** More events follow the last one returned. */
  more: boolean;
}

/**
 * Persistence of everything Runcast knows. Every method is async so that a networked database
 * can implement it; RunService is the only caller that changes runs, through `commitRun`.
 */
export interface Store extends RunLeases {
  close(): Promise<void>;
  /** Resolves when the database answers. */
  ping(): Promise<void>;

  createUser(user: UserRecord): Promise<void>;
  getUser(userId: string): Promise<UserRecord | undefined>;
  getUserByUsername(username: string): Promise<UserRecord | undefined>;
  listUsers(): Promise<UserRecord[]>;
  countUsers(): Promise<number>;
  /** Replaces a user's password hash and ends all of the user's sessions. */
  setPassword(userId: string, passwordHash: string): Promise<void>;

  createSession(session: SessionRecord): Promise<void>;
  getSession(sessionId: string): Promise<SessionRecord | undefined>;
  deleteSession(sessionId: string): Promise<void>;

  createApiToken(token: ApiTokenRecord): Promise<void>;
  getApiToken(tokenId: string): Promise<ApiTokenRecord | undefined>;
  listApiTokens(projectIds: readonly string[] | 'all'): Promise<ApiTokenRecord[]>;
  revokeApiToken(tokenId: string, at: string): Promise<void>;

  /** Creates the project and makes its creator an operator member. */
  createProject(project: ProjectRecord): Promise<void>;
  getProject(projectId: string): Promise<ProjectRecord | undefined>;
  /** The projects a user is a member of, or every project. */
  listProjects(memberUserId: string | 'all'): Promise<ProjectRecord[]>;
  setMember(projectId: string, userId: string, role: MemberRole): Promise<void>;
  removeMember(projectId: string, userId: string): Promise<boolean>;
  getMemberRole(projectId: string, userId: string): Promise<MemberRole | undefined>;
  listMembers(projectId: string): Promise<MemberRecord[]>;
  /** Ids of the projects where the user has one of `roles`. */
  memberProjectIds(userId: string, roles: readonly MemberRole[]): Promise<string[]>;

  createRun(run: RunRecord): Promise<void>;
  getRun(runId: string): Promise<RunRecord | undefined>;
  listRuns(query: RunQuery): Promise<RunRecord[]>;
  /**
   * Reads the run, lets `change` compute its next state, and stores that state and the log
   * events atomically; durable when the promise resolves. `change` may throw to abort; it must
   * advance the run's seq and change only its state (status, stage, progress, stats, error and
   * their times), never what the run was created with. `change` (and the claim's `response`) may
   * be called more than once — a store may compute a commit on the caller's copy and compute it
   * again on the stored row when that copy turns out to be behind — so they must not act beyond
   * what they return; only the last call's result is committed.
   *
   * With an idempotency claim, the same transaction first looks the key up: a key already stored
   * for this run commits nothing and answers the stored response (or refuses with INVALID_INPUT
   * when its fingerprint differs); a new key is stored with the commit. Commits to one run are
   * serialized (SQLite: one writer; PostgreSQL: the run row `FOR UPDATE` before the lookup), so
   * two concurrent requests with one key cannot both commit.
   */
  commitRun(
    runId: string,
    change: (current: RunRecord) => RunChange,
    options?: CommitOptions,
  ): Promise<CommitResult>;
  /**
   * The run and its log events with seq > `since`, read in one transaction: at most `limit`
   * events, and no more once their stored JSON passed `maxBytes` (the first event always comes).
   */
  replay(runId: string, since: number, limit: number, maxBytes?: number): Promise<RunReplay | undefined>;
}
