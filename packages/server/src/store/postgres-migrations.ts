/**
 * Versioned schema of the PostgreSQL store. Entry i brings the schema to version i + 1; a
 * migration is never edited once released — a change is a new entry.
 *
 * Times stay ISO 8601 text and JSON stays text, as in SQLite: what is read back is exactly what was
 * stored (event bodies go on the wire as they are), and both stores share one record shape.
 */
export const POSTGRES_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE users (
    user_id text PRIMARY KEY,
    username text NOT NULL UNIQUE,
    role text NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    password_hash text NOT NULL,
    created_at text NOT NULL
  );
  CREATE TABLE sessions (
    session_id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    created_at text NOT NULL,
    expires_at text NOT NULL
  );
  CREATE INDEX sessions_by_user ON sessions(user_id);
  CREATE INDEX sessions_by_expiry ON sessions(expires_at);
  CREATE TABLE projects (
    project_id text PRIMARY KEY,
    name text NOT NULL,
    created_by text NOT NULL,
    created_at text NOT NULL
  );
  CREATE TABLE project_members (
    project_id text NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    user_id text NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('operator', 'viewer')),
    PRIMARY KEY (project_id, user_id)
  );
  CREATE INDEX project_members_by_user ON project_members(user_id);
  CREATE TABLE api_tokens (
    token_id text PRIMARY KEY,
    project_id text NOT NULL REFERENCES projects(project_id) ON DELETE CASCADE,
    name text NOT NULL,
    secret_hash text NOT NULL,
    created_by text NOT NULL,
    created_at text NOT NULL,
    revoked_at text
  );
  CREATE INDEX api_tokens_by_project ON api_tokens(project_id);
  CREATE TABLE runs (
    run_id text PRIMARY KEY,
    project_id text NOT NULL REFERENCES projects(project_id),
    kind text NOT NULL,
    mode text,
    status text NOT NULL,
    stage text,
    current_stage text,
    progress text,
    stats text,
    error text,
    config text,
    seq bigint NOT NULL,
    created_by text NOT NULL,
    created_at text NOT NULL,
    started_at text,
    finished_at text,
    updated_at text NOT NULL,
    retry_of text,
    log_count bigint NOT NULL DEFAULT 0,
    pruned_through_seq bigint NOT NULL DEFAULT 0
  );
  CREATE INDEX runs_by_project ON runs(project_id, run_id);
  CREATE INDEX runs_by_status ON runs(status, run_id);
  CREATE TABLE run_events (
    run_id text NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    type text NOT NULL,
    at text NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (run_id, seq)
  );
  CREATE TABLE idempotency_keys (
    run_id text NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    key text NOT NULL,
    fingerprint text NOT NULL,
    response text NOT NULL,
    created_at text NOT NULL,
    PRIMARY KEY (run_id, key)
  );
  CREATE INDEX idempotency_keys_by_age ON idempotency_keys(created_at);
  `,
  // 2: which node executes a run (its id, until when its lease holds in ms since the epoch by the
  // database's clock, the fencing number incremented at each claim), and the keys every node
  // must share.
  `
  ALTER TABLE runs ADD COLUMN owner text;
  ALTER TABLE runs ADD COLUMN lease_until bigint;
  ALTER TABLE runs ADD COLUMN fence bigint NOT NULL DEFAULT 0;
  CREATE TABLE cluster_keys (
    name text PRIMARY KEY,
    value text,
    secret_hash text,
    created_at timestamptz NOT NULL DEFAULT now()
  );
  `,
  // 3: a batch written without locking its runs first checks, inside its one statement, that
  // every run was where the batch expected it; otherwise the statement (and its notifications)
  // is undone with this error, and the batch is written again under the runs' locks.
  `
  CREATE FUNCTION runcast_expect_runs(written bigint, wanted bigint) RETURNS bigint
  LANGUAGE plpgsql AS $$
  BEGIN
    IF written <> wanted THEN
      RAISE EXCEPTION 'runcast: % of % runs were not where the batch expected them', wanted - written, wanted
        USING ERRCODE = 'RC409';
    END IF;
    RETURN written;
  END
  $$;
  `,
];
