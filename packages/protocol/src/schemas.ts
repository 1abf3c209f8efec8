import { type Static, Type } from 'typebox';

/** Lifecycle of a run; the last three are terminal. */
export const RUN_STATUSES = ['CREATED', 'QUEUED', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELED'] as const;
export const TERMINAL_STATUSES = ['COMPLETED', 'FAILED', 'CANCELED'] as const;
export const RUN_KINDS = ['external', 'git-mirror'] as const;
export const ROLES = ['admin', 'operator', 'viewer'] as const;
export const MEMBER_ROLES = ['operator', 'viewer'] as const;
export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
/** Pipeline stages of a git-mirror run; external runs report stages of their own. */
export const GIT_MIRROR_STAGES = ['DISCOVERY', 'EXPORT', 'TRANSFORM', 'PLAN', 'APPLY', 'VERIFY'] as const;

/** The pattern of an id: its prefix and a ULID, e.g. `run_01J…`. */
export const idPattern = (prefix: string): string => `^${prefix}_[0-9A-HJKMNP-TV-Z]{26}$`;
const id = (prefix: string) => Type.String({ pattern: idPattern(prefix) });

export const RunId = id('run');
export const ProjectId = id('prj');
export const UserId = id('usr');
export const TokenId = id('tok');

export const RunStatus = Type.Enum(RUN_STATUSES);
export type RunStatus = Static<typeof RunStatus>;
export type TerminalStatus = (typeof TERMINAL_STATUSES)[number];
export const RunKind = Type.Enum(RUN_KINDS);
export type RunKind = Static<typeof RunKind>;
export const Role = Type.Enum(ROLES);
export type Role = Static<typeof Role>;
export const MemberRole = Type.Enum(MEMBER_ROLES);
export type MemberRole = Static<typeof MemberRole>;
export const LogLevel = Type.Enum(LOG_LEVELS);
export type LogLevel = Static<typeof LogLevel>;

/**
 * Schema keyword that bounds a free-form JSON field: `{ depth, bytes }` — its nesting depth (an
 * object or array is one level) and the size of its JSON text in UTF-8 bytes.
 */
export const JSON_BOUNDS_KEYWORD = 'x-json-bounds';
/** The bounds of a free-form field, as the `x-json-bounds` keyword carries them. */
export interface JsonBounds {
  depth: number;
  bytes: number;
}
/** Bounds of the contract's free-form fields. */
export const FREE_FORM_BOUNDS = {
  /** `data` of a log entry. */
  logData: { depth: 32, bytes: 16 * 1024 },
  /** `details` of a run's error. */
  errorDetails: { depth: 32, bytes: 16 * 1024 },
  /** `config` of a new run. */
  runConfig: { depth: 32, bytes: 64 * 1024 },
} as const satisfies Record<string, JsonBounds>;
/** A JSON object of any keys, within `bounds`. */
const FreeFormObject = (bounds: JsonBounds) =>
  Type.Record(Type.String(), Type.Unknown(), { [JSON_BOUNDS_KEYWORD]: bounds });

const Timestamp = Type.String({ format: 'date-time' });
const Count = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });
const Text = (maxLength: number) => Type.String({ maxLength });

/** Fine-grained progress of the current step. */
export const Progress = Type.Object(
  {
    percentage: Type.Optional(Type.Number({ minimum: 0, maximum: 100 })),
    message: Type.Optional(Type.Union([Text(1000), Type.Null()])),
    done: Type.Optional(Type.Union([Type.Number({ minimum: 0 }), Type.Null()])),
    total: Type.Optional(Type.Union([Type.Number({ minimum: 0 }), Type.Null()])),
    unit: Type.Optional(Type.Union([Text(40), Type.Null()])),
    rate_per_s: Type.Optional(Type.Union([Type.Number({ minimum: 0 }), Type.Null()])),
    eta_s: Type.Optional(Type.Union([Type.Number({ minimum: 0 }), Type.Null()])),
  },
  { additionalProperties: false },
);
export type Progress = Static<typeof Progress>;

/** Counters of the whole run. */
export const Stats = Type.Object(
  {
    repositories: Type.Optional(Count),
    repositories_done: Type.Optional(Count),
    refs: Type.Optional(Count),
    objects: Type.Optional(Count),
    bytes: Type.Optional(Count),
    errors: Type.Optional(Count),
  },
  { additionalProperties: false },
);
export type Stats = Static<typeof Stats>;

/** Why a run failed. */
export const RunError = Type.Object(
  {
    code: Text(80),
    message: Text(4000),
    details: Type.Optional(Type.Unknown({ [JSON_BOUNDS_KEYWORD]: FREE_FORM_BOUNDS.errorDetails })),
  },
  { additionalProperties: false },
);
export type RunError = Static<typeof RunError>;

/** The whole observable state of a run at one seq. */
export const RunSnapshot = Type.Object({
  run_id: Type.String(),
  project_id: Type.String(),
  kind: RunKind,
  mode: Type.Union([Type.String(), Type.Null()]),
  status: RunStatus,
  stage: Type.Union([Type.String(), Type.Null()]),
  current_stage: Type.Union([Type.String(), Type.Null()]),
  progress: Type.Union([Progress, Type.Null()]),
  stats: Type.Union([Stats, Type.Null()]),
  seq: Count,
  created_at: Timestamp,
  started_at: Type.Union([Timestamp, Type.Null()]),
  finished_at: Type.Union([Timestamp, Type.Null()]),
  updated_at: Timestamp,
  error: Type.Union([RunError, Type.Null()]),
  retry_of: Type.Union([Type.String(), Type.Null()]),
});
export type RunSnapshot = Static<typeof RunSnapshot>;

/** Body of `PATCH /runs/{run_id}/progress`: a present field replaces, an absent one is untouched. */
export const ProgressUpdate = Type.Object(
  {
    status: Type.Optional(RunStatus),
    stage: Type.Optional(Type.Union([Text(80), Type.Null()])),
    current_stage: Type.Optional(Type.Union([Text(500), Type.Null()])),
    progress: Type.Optional(Type.Union([Progress, Type.Null()])),
    stats: Type.Optional(Type.Union([Stats, Type.Null()])),
    error: Type.Optional(Type.Union([RunError, Type.Null()])),
  },
  { additionalProperties: false },
);
export type ProgressUpdate = Static<typeof ProgressUpdate>;

/** One log line as a producer sends it. */
export const LogEntry = Type.Object(
  {
    level: LogLevel,
    message: Text(8000),
    stage: Type.Optional(Type.Union([Text(80), Type.Null()])),
    data: Type.Optional(FreeFormObject(FREE_FORM_BOUNDS.logData)),
  },
  { additionalProperties: false },
);
export type LogEntry = Static<typeof LogEntry>;

/** Body of `POST /runs/{run_id}/logs`: one entry, or a batch. */
export const LogBatch = Type.Object(
  { entries: Type.Array(LogEntry, { minItems: 1, maxItems: 1000 }) },
  { additionalProperties: false },
);
export type LogBatch = Static<typeof LogBatch>;
export const LogsBody = Type.Union([LogEntry, LogBatch]);
export type LogsBody = Static<typeof LogsBody>;

/** Answer of `POST /runs/{run_id}/logs`: the seqs the entries took. */
export const LogsAccepted = Type.Object({ run_id: Type.String(), first_seq: Count, last_seq: Count });
export type LogsAccepted = Static<typeof LogsAccepted>;

export const UpdateEvent = Type.Object({
  run_id: Type.String(),
  seq: Count,
  type: Type.Literal('update'),
  at: Timestamp,
  snapshot: RunSnapshot,
});
export type UpdateEvent = Static<typeof UpdateEvent>;

export const LogEvent = Type.Object({
  run_id: Type.String(),
  seq: Count,
  type: Type.Literal('log'),
  at: Timestamp,
  log: LogEntry,
});
export type LogEvent = Static<typeof LogEvent>;

/** What every transport carries after the opening snapshot. */
export const RunEvent = Type.Union([UpdateEvent, LogEvent]);
export type RunEvent = Static<typeof RunEvent>;

/** An RFC 7396 JSON merge patch of a run snapshot: members to set, `null` for members to remove. */
export const SnapshotPatch = Type.Record(Type.String(), Type.Unknown(), {
  description:
    'RFC 7396 JSON merge patch of the run snapshot: present members replace (objects merge ' +
    'member by member, arrays are replaced whole), null removes. A change that would leave a null ' +
    'where the snapshot had a value is never sent as a patch.',
});
export type SnapshotPatch = Static<typeof SnapshotPatch>;

/**
 * An update as a subscription that asked for deltas may receive it: only what changed since the
 * state with seq `base_seq` (the subscription's last snapshot or update). A subscriber gets it
 * only when that state is the one it holds; otherwise it gets the whole update.
 */
export const DeltaUpdateEvent = Type.Object({
  run_id: Type.String(),
  seq: Count,
  type: Type.Literal('update'),
  at: Timestamp,
  /** Seq of the snapshot or update the patch applies to. */
  base_seq: Count,
  patch: SnapshotPatch,
});
export type DeltaUpdateEvent = Static<typeof DeltaUpdateEvent>;

/**
 * Query parameter `delta` of the SSE streams and of `GET /runs/{run_id}/progress`: `1` asks for
 * delta updates, `0` (the default) for whole ones.
 */
export const DeltaFlag = Type.Integer({
  minimum: 0,
  maximum: 1,
  description:
    '1: updates may come as delta updates (base_seq + RFC 7396 merge patch) when the client holds ' +
    'their base; 0 or absent: every update carries the whole snapshot.',
});

/** The delta contract of the live transports, as the API reference states it. */
export const DELTA_STREAM_DOC =
  'With `delta=1` (Socket.IO: `subscribe {run_id, since?, delta: true}`) an update may come as a ' +
  'DeltaUpdateEvent `{run_id, seq, type: "update", at, base_seq, patch}`: `patch` is an RFC 7396 ' +
  'merge patch that turns the state the subscription holds after its snapshot or update with seq ' +
  "`base_seq` into the state at `seq`, less what the frame already says: the snapshot's `seq` is " +
  "always the frame's `seq`, and its `updated_at` is the frame's `at` unless the patch sets it. " +
  'It comes only when that is the state the subscription ' +
  'holds: the first update after the opening snapshot, an update after one that conflation ' +
  'skipped, one after a gap the server filled from its store, and a change a merge patch cannot ' +
  'express (a member becoming null) come whole. A client that receives a delta of another base ' +
  'must not apply it: it opens the run again (resumes) for a snapshot. Without `delta=1` every ' +
  'update carries the whole snapshot.';

/** What a live transport may carry once it asked for deltas: every RunEvent, or a delta update. */
export const WireEvent = Type.Union([UpdateEvent, DeltaUpdateEvent, LogEvent]);
export type WireEvent = Static<typeof WireEvent>;

/** Opens every subscription (and follows a gap, with `events_truncated`). */
export const SnapshotEvent = Type.Object({
  run_id: Type.String(),
  seq: Count,
  type: Type.Literal('snapshot'),
  at: Timestamp,
  snapshot: RunSnapshot,
  events_truncated: Type.Optional(Type.Boolean()),
});
export type SnapshotEvent = Static<typeof SnapshotEvent>;

/** Answer of `GET /runs/{run_id}/progress`, with `events` when `since` was given. */
export const ProgressResponse = Type.Intersect([
  RunSnapshot,
  Type.Object({
    events: Type.Optional(Type.Array(LogEvent)),
    events_truncated: Type.Optional(Type.Boolean()),
    events_more: Type.Optional(Type.Boolean()),
  }),
]);
export type ProgressResponse = Static<typeof ProgressResponse>;

/**
 * Answer of `GET /runs/{run_id}/progress?delta=1&state_seq=<U>` when the server holds the state at
 * seq U: the run's seq, and the merge patch from that state to the state now, instead of the
 * snapshot. Otherwise the answer is a ProgressResponse.
 */
export const ProgressDelta = Type.Object({
  run_id: Type.String(),
  seq: Count,
  /** The `state_seq` the patch applies to. */
  base_seq: Count,
  patch: SnapshotPatch,
  events: Type.Optional(Type.Array(LogEvent)),
  /** Present (true) only when the retained history no longer reaches back to `since`. */
  events_truncated: Type.Optional(Type.Boolean()),
  events_more: Type.Optional(Type.Boolean()),
});
export type ProgressDelta = Static<typeof ProgressDelta>;

/** Answer of `GET /runs/{run_id}/events`. */
export const EventsPage = Type.Object({
  run_id: Type.String(),
  events: Type.Array(LogEvent),
  events_truncated: Type.Boolean(),
  next_since: Count,
  seq: Count,
});
export type EventsPage = Static<typeof EventsPage>;

export const ErrorBody = Type.Object({
  error: Type.Object({ code: Type.String(), message: Type.String(), details: Type.Optional(Type.Unknown()) }),
});
export type ErrorBody = Static<typeof ErrorBody>;

export const User = Type.Object({
  user_id: Type.String(),
  username: Type.String(),
  role: Role,
  created_at: Timestamp,
});
export type User = Static<typeof User>;

export const Username = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_.@-]+$' });
export const Password = Type.String({ minLength: 8, maxLength: 256 });

export const LoginRequest = Type.Object(
  {
    username: Type.String({ minLength: 1, maxLength: 64 }),
    password: Type.String({ minLength: 1, maxLength: 256 }),
  },
  { additionalProperties: false },
);
export type LoginRequest = Static<typeof LoginRequest>;

export const LoginResponse = Type.Object({ token: Type.String(), expires_at: Timestamp, user: User });
export type LoginResponse = Static<typeof LoginResponse>;

/** Answer of `GET /auth/me`: a user, or the API token that authenticated. */
export const Me = Type.Object({
  kind: Type.Union([Type.Literal('user'), Type.Literal('token')]),
  user: Type.Union([User, Type.Null()]),
  token: Type.Union([
    Type.Object({ token_id: Type.String(), project_id: Type.String(), name: Type.String() }),
    Type.Null(),
  ]),
});
export type Me = Static<typeof Me>;

export const CreateUser = Type.Object(
  { username: Username, password: Password, role: Role },
  { additionalProperties: false },
);
export type CreateUser = Static<typeof CreateUser>;

export const ApiToken = Type.Object({
  token_id: Type.String(),
  project_id: Type.String(),
  name: Type.String(),
  created_by: Type.String(),
  created_at: Timestamp,
  revoked_at: Type.Union([Timestamp, Type.Null()]),
});
export type ApiToken = Static<typeof ApiToken>;

export const CreateApiToken = Type.Object(
  { project_id: ProjectId, name: Type.String({ minLength: 1, maxLength: 100 }) },
  { additionalProperties: false },
);
export type CreateApiToken = Static<typeof CreateApiToken>;

/** The one answer that shows a token's secret. */
export const CreatedApiToken = Type.Intersect([ApiToken, Type.Object({ token: Type.String() })]);
export type CreatedApiToken = Static<typeof CreatedApiToken>;

export const Project = Type.Object({
  project_id: Type.String(),
  name: Type.String(),
  created_at: Timestamp,
  role: Type.Union([Role, Type.Null()]),
});
export type Project = Static<typeof Project>;

export const CreateProject = Type.Object(
  { name: Type.String({ minLength: 1, maxLength: 200 }) },
  { additionalProperties: false },
);
export type CreateProject = Static<typeof CreateProject>;

export const Member = Type.Object({
  project_id: Type.String(),
  user_id: Type.String(),
  username: Type.String(),
  role: MemberRole,
});
export type Member = Static<typeof Member>;

export const AddMember = Type.Object({ user_id: UserId, role: MemberRole }, { additionalProperties: false });
export type AddMember = Static<typeof AddMember>;

export const CreateRun = Type.Object(
  {
    project_id: ProjectId,
    kind: RunKind,
    mode: Type.Optional(Type.String({ minLength: 1, maxLength: 40 })),
    config: Type.Optional(FreeFormObject(FREE_FORM_BOUNDS.runConfig)),
  },
  { additionalProperties: false },
);
export type CreateRun = Static<typeof CreateRun>;

export const RunList = Type.Object({
  runs: Type.Array(RunSnapshot),
  next_cursor: Type.Union([Type.String(), Type.Null()]),
});
export type RunList = Static<typeof RunList>;

/** Socket.IO `subscribe` payload; `delta: true` asks for delta updates (DeltaUpdateEvent). */
export const SubscribeRequest = Type.Object(
  {
    run_id: RunId,
    since: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
    delta: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type SubscribeRequest = Static<typeof SubscribeRequest>;

/** Socket.IO `subscribe` acknowledgement: the opening snapshot, or why the subscription failed. */
export type SubscribeAck =
  | { ok: true; snapshot: SnapshotEvent }
  | { ok: false; error: { code: string; message: string } };

/**
 * A run's subscription ended for good: access to it ended (logout, revoked token, membership
 * removed, login expired) or it could not be opened. Socket.IO sends it as a `run_event`, SSE as
 * `event: run_error`; nothing more of the run follows on that connection.
 */
export interface RunErrorEvent {
  run_id: string;
  type: 'error';
  error: { code: string; message: string };
}

/** SSE event name of a RunErrorEvent (not `error`: EventSource reports its own failures by that name). */
export const SSE_RUN_ERROR = 'run_error';

/** Socket.IO event names of the contract. */
export const SOCKET_EVENTS = {
  subscribe: 'subscribe',
  unsubscribe: 'unsubscribe',
  runEvent: 'run_event',
  /** The server is going away: reconnect (elsewhere). */
  reconnect: 'server_reconnect',
} as const;

/** Headers (and handshake fields) by which clients report their connection method. */
export const TRANSPORT_HEADERS = {
  transport: 'x-runcast-transport',
  fallbackFrom: 'x-runcast-fallback-from',
  fallbackReason: 'x-runcast-fallback-reason',
} as const;

/**
 * Header of `PATCH /runs/{run_id}/progress` and `POST /runs/{run_id}/logs`: a request repeated with
 * the same key for the same run is applied once and answered as the first was.
 */
export const IDEMPOTENCY_KEY_HEADER = 'idempotency-key';
/** An idempotency key: 1 to 200 printable ASCII characters. */
export const IdempotencyKey = Type.String({ minLength: 1, maxLength: 200, pattern: '^[\\x20-\\x7E]+$' });
/** The request headers that carry an idempotency key. */
export const IdempotencyHeaders = Type.Object({ [IDEMPOTENCY_KEY_HEADER]: Type.Optional(IdempotencyKey) });

const SecretText = Type.String({ minLength: 1, maxLength: 4096 });
const RepoUrl = Type.String({ minLength: 1, maxLength: 2048 });

/** One repository of a git-mirror run; its tokens override the run-wide ones. */
export const GitMirrorRepository = Type.Object(
  {
    source: RepoUrl,
    target: RepoUrl,
    source_token: Type.Optional(SecretText),
    target_token: Type.Optional(SecretText),
  },
  { additionalProperties: false },
);
export type GitMirrorRepository = Static<typeof GitMirrorRepository>;

/** `config` of a `git-mirror` run. Tokens are secrets: stored encrypted, never returned or logged. */
export const GitMirrorConfig = Type.Object(
  {
    repositories: Type.Array(GitMirrorRepository, { minItems: 1, maxItems: 200 }),
    exclude_refs: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 500 }), { maxItems: 200 })),
    rename_refs: Type.Optional(
      Type.Record(Type.String({ pattern: '^refs/' }), Type.String({ pattern: '^refs/', maxLength: 500 })),
    ),
    force: Type.Optional(Type.Boolean()),
    continue_on_error: Type.Optional(Type.Boolean()),
    source_token: Type.Optional(SecretText),
    target_token: Type.Optional(SecretText),
  },
  { additionalProperties: false },
);
export type GitMirrorConfig = Static<typeof GitMirrorConfig>;

/** Body of `POST /auth/password`. */
export const ChangePassword = Type.Object(
  { current_password: Type.String({ minLength: 1, maxLength: 256 }), new_password: Password },
  { additionalProperties: false },
);
export type ChangePassword = Static<typeof ChangePassword>;
