import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { parseTrustProxy, type TrustProxy } from './http/proxy-trust.js';

/** Every setting of the server, read from env and flags once and validated. */
export interface Config {
  host: string;
  port: number;
  dataDir: string;
  /** Password of the bootstrap `admin` on first start; generated and printed once when unset. */
  adminPassword: string | undefined;
  /** Token signing key; generated and kept in the data dir when unset. */
  secret: string | undefined;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** Largest accepted request body. */
  bodyLimitBytes: number;
  /**
   * Time to receive a whole request, headers and body (408 after it). Responses are not bound by
   * it: SSE streams, long-polls and WebSocket upgrades stay open.
   */
  requestTimeoutMs: number;
  /** Time to receive a request's headers; at most `requestTimeoutMs`. */
  headersTimeoutMs: number;
  /** Log events kept per run for replay. */
  eventRetention: number;
  /** Lifetime of a login token. */
  tokenTtlS: number;
  /** Failed logins allowed per client address, and per username, within a minute. */
  loginRateLimitPerMin: number;
  /** Origins besides the server's own that may send cookie-authenticated state changes. */
  allowedOrigins: string[];
  /** Set the Secure flag on the session cookie even on requests that came over plain HTTP. */
  cookieSecure: boolean;
  /** Whose `X-Forwarded-*` headers give the client's address, scheme and host. */
  trustProxy: TrustProxy;
  /** The path everything is served under (`/runcast`), or '' for the root. */
  basePath: string;
  /**
   * PostgreSQL connection URL (`RUNCAST_DATABASE_URL`): when set, the store is PostgreSQL, shared
   * by every node; otherwise SQLite in the data dir.
   */
  databaseUrl: string | undefined;
  /** SQLite `synchronous`: NORMAL survives a process crash; FULL also a power loss. */
  sqliteSynchronous: 'NORMAL' | 'FULL';
  /** Most events one `GET /progress?since=` or `/events` answer carries. */
  eventsPageLimit: number;
  /** Interval of SSE keep-alive events. */
  sseKeepaliveMs: number;
  /** Reconnect delay SSE streams ask clients to use (`retry:`). */
  sseRetryMs: number;
  /** Socket.IO heartbeat: a ping every interval, the connection closed when no pong came within the timeout. */
  wsPingIntervalMs: number;
  wsPingTimeoutMs: number;
  /** Bytes a live subscriber may have queued before it is disconnected as too slow. */
  subscriberQueueLimitBytes: number;
  /** When set, `/metrics` is also served without authentication on this port (and host). */
  metricsPort: number | undefined;
  metricsHost: string;
  /** Runs the runner executes at once. */
  runnerConcurrency: number;
  /**
   * This node's id, the owner of the runs it executes (`RUNCAST_NODE_ID`, unique per node); when
   * unset, random at each start on PostgreSQL, and fixed with the embedded store's one node.
   */
  nodeId: string | undefined;
  /**
   * How long a node's claim on a run holds unless renewed (renewed every third of it): a node
   * that dies loses its runs to another node after it.
   */
  runLeaseMs: number;
  /**
   * git-mirror runs may name local paths and `file://` URLs: repositories on the server's own
   * disk. Off by default; tests and single-user setups turn it on.
   */
  gitAllowLocal: boolean;
  /** The dashboard's build, served at `/`. */
  webDir: string;
  /** Live gateways to serve; polling is always on (it is the REST API). */
  gateways: { websocket: boolean; sse: boolean };
  /**
   * gzip for JSON answers of at least `minBytes` to clients that accept it (`RUNCAST_HTTP_COMPRESSION`,
   * `RUNCAST_COMPRESSION_MIN_BYTES`); the dashboard's files are precompressed at build time.
   */
  httpCompression: { enabled: boolean; minBytes: number };
  /** `gzip`: SSE streams whose client accepts gzip are compressed (`RUNCAST_SSE_COMPRESSION`). */
  sseCompression: SseCompression;
  /** Socket.IO's per-message deflate, for clients that offer it (`RUNCAST_WS_COMPRESSION`). */
  wsCompression: boolean;
}

/** Whether SSE streams are compressed for clients that accept it. */
export type SseCompression = 'off' | 'gzip';

/** A setting with a bad value; the message names it, on one line. */
export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID';
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

type Env = Record<string, string | undefined>;

const FLAGS = {
  host: { type: 'string' },
  port: { type: 'string' },
  'data-dir': { type: 'string' },
  'log-level': { type: 'string' },
} as const;

function integer(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw)) throw new ConfigError(`${name} must be an integer, got "${raw}"`);
  const value = Number(raw);
  if (value < min || value > max)
    throw new ConfigError(`${name} must be between ${min} and ${max}, got ${raw}`);
  return value;
}

function oneOf<T extends string>(
  name: string,
  raw: string | undefined,
  allowed: readonly T[],
  fallback: T,
): T {
  if (raw === undefined || raw === '') return fallback;
  const value = raw.trim();
  if (!(allowed as readonly string[]).includes(value)) {
    throw new ConfigError(`${name} must be one of ${allowed.join(', ')}, got "${raw}"`);
  }
  return value as T;
}

function boolean(name: string, raw: string | undefined, fallback: boolean): boolean {
  if (raw === undefined || raw === '') return fallback;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new ConfigError(`${name} must be true or false, got "${raw}"`);
}

/** A postgres:// or postgresql:// URL with a host; the message never repeats it (it may hold a password). */
function databaseUrl(raw: string | undefined): string | undefined {
  if (raw === undefined || raw.trim() === '') return undefined;
  let url: URL;
  try {
    url = new URL(raw.trim());
  } catch {
    throw new ConfigError('RUNCAST_DATABASE_URL must be a postgres:// or postgresql:// URL');
  }
  if (!['postgres:', 'postgresql:'].includes(url.protocol) || url.hostname === '') {
    throw new ConfigError('RUNCAST_DATABASE_URL must be a postgres:// or postgresql:// URL with a host');
  }
  return raw.trim();
}

function gateways(raw: string | undefined): Config['gateways'] {
  if (raw === undefined || raw.trim() === '') return { websocket: true, sse: true };
  const names = raw.split(',').map((name) => name.trim());
  for (const name of names) {
    if (!['websocket', 'sse', 'polling'].includes(name)) {
      throw new ConfigError(`RUNCAST_TRANSPORTS entries must be websocket, sse or polling, got "${name}"`);
    }
  }
  return { websocket: names.includes('websocket'), sse: names.includes('sse') };
}

function basePath(raw: string | undefined): string {
  const value = (raw ?? '').trim().replace(/\/+$/, '');
  if (value === '') return '';
  if (!/^(\/[A-Za-z0-9._~-]+)+$/.test(value)) {
    throw new ConfigError(`RUNCAST_BASE_PATH must look like /runcast or /apps/runcast, got "${raw}"`);
  }
  return value;
}

function trustProxy(raw: string | undefined): TrustProxy {
  try {
    return parseTrustProxy(raw);
  } catch (err) {
    throw new ConfigError(
      `RUNCAST_TRUST_PROXY must be true, a hop count or a comma-separated list of addresses: ${(err as Error).message}`,
    );
  }
}

/** Reads the configuration from `env` and command-line `args` (flags win over env). */
export function loadConfig(env: Env = process.env, args: string[] = []): Config {
  let flags: Record<string, string | undefined>;
  try {
    flags = parseArgs({ args, options: FLAGS, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new ConfigError((err as Error).message.split('\n')[0] ?? 'bad command-line flag');
  }
  const host = flags.host ?? env.HOST ?? '127.0.0.1';
  if (host.trim() === '') throw new ConfigError('HOST must not be empty');
  const secret = env.RUNCAST_SECRET || undefined;
  if (secret !== undefined && secret.length < 32) {
    throw new ConfigError('RUNCAST_SECRET must be at least 32 characters');
  }
  const nodeId = env.RUNCAST_NODE_ID || undefined;
  if (nodeId !== undefined && !/^[A-Za-z0-9._-]{1,64}$/.test(nodeId)) {
    throw new ConfigError('RUNCAST_NODE_ID must be 1 to 64 letters, digits, dots, dashes or underscores');
  }
  const adminPassword = env.RUNCAST_ADMIN_PASSWORD || undefined;
  if (adminPassword !== undefined && adminPassword.length < 8) {
    throw new ConfigError('RUNCAST_ADMIN_PASSWORD must be at least 8 characters');
  }
  const allowedOrigins = (env.RUNCAST_ALLOWED_ORIGINS ?? '')
    .split(',')
    .map((origin) => origin.trim())
    .filter(Boolean);
  for (const origin of allowedOrigins) {
    if (!/^https?:\/\/[^/]+$/.test(origin)) {
      throw new ConfigError(
        `RUNCAST_ALLOWED_ORIGINS entries must look like https://host[:port], got "${origin}"`,
      );
    }
  }
  const requestTimeoutMs = integer(
    'RUNCAST_REQUEST_TIMEOUT_MS',
    env.RUNCAST_REQUEST_TIMEOUT_MS,
    30_000,
    100,
    3_600_000,
  );
  const headersTimeoutMs = integer(
    'RUNCAST_HEADERS_TIMEOUT_MS',
    env.RUNCAST_HEADERS_TIMEOUT_MS,
    Math.min(10_000, requestTimeoutMs),
    100,
    3_600_000,
  );
  if (headersTimeoutMs > requestTimeoutMs) {
    throw new ConfigError(
      `RUNCAST_HEADERS_TIMEOUT_MS (${headersTimeoutMs}) must not exceed RUNCAST_REQUEST_TIMEOUT_MS (${requestTimeoutMs})`,
    );
  }
  return {
    host,
    port: integer('PORT', flags.port ?? env.PORT, 8080, 0, 65535),
    dataDir: flags['data-dir'] ?? env.RUNCAST_DATA_DIR ?? './data',
    adminPassword,
    secret,
    logLevel: oneOf(
      'LOG_LEVEL',
      flags['log-level'] ?? env.LOG_LEVEL,
      ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
      'info',
    ),
    bodyLimitBytes: integer('RUNCAST_BODY_LIMIT', env.RUNCAST_BODY_LIMIT, 256 * 1024, 1024, 64 * 1024 * 1024),
    requestTimeoutMs,
    headersTimeoutMs,
    eventRetention: integer('RUNCAST_EVENT_RETENTION', env.RUNCAST_EVENT_RETENTION, 10_000, 1, 10_000_000),
    tokenTtlS: integer('RUNCAST_TOKEN_TTL_S', env.RUNCAST_TOKEN_TTL_S, 12 * 3600, 60, 30 * 86400),
    loginRateLimitPerMin: integer('RUNCAST_LOGIN_RATE_LIMIT', env.RUNCAST_LOGIN_RATE_LIMIT, 10, 1, 100_000),
    allowedOrigins,
    cookieSecure: boolean('RUNCAST_COOKIE_SECURE', env.RUNCAST_COOKIE_SECURE, false),
    trustProxy: trustProxy(env.RUNCAST_TRUST_PROXY),
    basePath: basePath(env.RUNCAST_BASE_PATH),
    databaseUrl: databaseUrl(env.RUNCAST_DATABASE_URL),
    sqliteSynchronous: oneOf(
      'RUNCAST_SQLITE_SYNCHRONOUS',
      env.RUNCAST_SQLITE_SYNCHRONOUS,
      ['NORMAL', 'FULL'],
      'NORMAL',
    ),
    eventsPageLimit: integer('RUNCAST_EVENTS_PAGE_LIMIT', env.RUNCAST_EVENTS_PAGE_LIMIT, 1000, 1, 100_000),
    sseKeepaliveMs: integer('RUNCAST_SSE_KEEPALIVE_MS', env.RUNCAST_SSE_KEEPALIVE_MS, 15_000, 10, 3_600_000),
    sseRetryMs: integer('RUNCAST_SSE_RETRY_MS', env.RUNCAST_SSE_RETRY_MS, 2000, 0, 600_000),
    wsPingIntervalMs: integer(
      'RUNCAST_WS_PING_INTERVAL_MS',
      env.RUNCAST_WS_PING_INTERVAL_MS,
      25_000,
      100,
      3_600_000,
    ),
    wsPingTimeoutMs: integer(
      'RUNCAST_WS_PING_TIMEOUT_MS',
      env.RUNCAST_WS_PING_TIMEOUT_MS,
      20_000,
      100,
      3_600_000,
    ),
    subscriberQueueLimitBytes: integer(
      'RUNCAST_SUBSCRIBER_QUEUE_LIMIT',
      env.RUNCAST_SUBSCRIBER_QUEUE_LIMIT,
      8 * 1024 * 1024,
      1024,
      1024 * 1024 * 1024,
    ),
    metricsPort: env.RUNCAST_METRICS_PORT
      ? integer('RUNCAST_METRICS_PORT', env.RUNCAST_METRICS_PORT, 0, 0, 65535)
      : undefined,
    metricsHost: env.RUNCAST_METRICS_HOST || '127.0.0.1',
    gateways: gateways(env.RUNCAST_TRANSPORTS),
    runnerConcurrency: integer('RUNCAST_RUNNER_CONCURRENCY', env.RUNCAST_RUNNER_CONCURRENCY, 2, 1, 64),
    nodeId,
    runLeaseMs: integer('RUNCAST_RUN_LEASE_MS', env.RUNCAST_RUN_LEASE_MS, 15_000, 300, 3_600_000),
    gitAllowLocal: boolean('RUNCAST_GIT_ALLOW_LOCAL', env.RUNCAST_GIT_ALLOW_LOCAL, false),
    webDir: env.RUNCAST_WEB_DIR || fileURLToPath(new URL('../../web/dist', import.meta.url)),
    httpCompression: {
      enabled: boolean('RUNCAST_HTTP_COMPRESSION', env.RUNCAST_HTTP_COMPRESSION, true),
      minBytes: integer(
        'RUNCAST_COMPRESSION_MIN_BYTES',
        env.RUNCAST_COMPRESSION_MIN_BYTES,
        1024,
        0,
        64 * 1024 * 1024,
      ),
    },
    sseCompression: oneOf('RUNCAST_SSE_COMPRESSION', env.RUNCAST_SSE_COMPRESSION, ['off', 'gzip'], 'gzip'),
    wsCompression: boolean('RUNCAST_WS_COMPRESSION', env.RUNCAST_WS_COMPRESSION, true),
  };
}
