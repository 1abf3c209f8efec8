import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import cors from '@fastify/cors';
import fastifyStatic from '@fastify/static';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import {
  DELTA_STREAM_DOC,
  DeltaUpdateEvent,
  ProgressDelta,
  RunSnapshot,
  SnapshotPatch,
  TRANSPORT_HEADERS,
  UpdateEvent,
} from '@runcast/protocol';
import Fastify, {
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
} from 'fastify';
import { Authenticator } from './auth/authenticator.js';
import authPlugin, { requirePrincipal } from './auth/plugin.js';
import { Policy } from './auth/policy.js';
import { authRoutes } from './auth/routes.js';
import { ensureAdmin, loadOrCreateSecret } from './bootstrap.js';
import type { Bus } from './bus/bus.js';
import { createBus } from './bus/create-bus.js';
import type { Config } from './config.js';
import { AppError } from './errors.js';
import { answerOutsideBasePath, stripBasePath } from './http/base-path.js';
import { answerClientError } from './http/client-error.js';
import { registerCompression } from './http/compression.js';
import { ConnectionDrain, waitUntil } from './http/drain.js';
import { registerErrorHandling, sendError } from './http/error-handler.js';
import { registerJsonBodyParser } from './http/json-body.js';
import { ProxyTrust } from './http/proxy-trust.js';
import { createValidatorCompiler } from './http/validation.js';
import { Hub } from './live/hub.js';
import { attachSocketGateway } from './live/socket.js';
import { sseRoutes } from './live/sse.js';
import { Metrics } from './metrics.js';
import { projectRoutes } from './projects/routes.js';
import { GitMirrorExecutor, type GitMirrorHooks } from './runner/executors/git-mirror.js';
import { newNodeId, Runner } from './runner/runner.js';
import { SecretBox } from './runner/secrets.js';
import { PollFastPath } from './runs/poll-fast-path.js';
import { runRoutes } from './runs/routes.js';
import { RunService } from './runs/run-service.js';
import { CachedStore } from './store/cached.js';
import { type ClusterKeys, loadClusterKeys } from './store/cluster-keys.js';
import { createStore } from './store/create-store.js';
import type { Store } from './store/store.js';

export type { Config } from './config.js';
export { loadConfig } from './config.js';

/** A built server and the services behind it. */
export interface Runcast {
  app: FastifyInstance;
  store: Store;
  bus: Bus;
  runs: RunService;
  runner: Runner;
  hub: Hub;
  /** The unauthenticated metrics listener, when RUNCAST_METRICS_PORT is set. */
  metricsServer: Server | undefined;
  metrics: Metrics;
  /** Stops accepting, ends waits, closes the store. */
  close(): Promise<void>;
}

export interface BuildOptions {
  /** Where the bootstrap admin's generated password is announced; stdout by default. */
  announce?: (message: string) => void;
  /** A pino destination for the server's own log lines (tests capture them). */
  logStream?: NodeJS.WritableStream;
  /** Test seams of the git-mirror executor. */
  gitMirrorHooks?: GitMirrorHooks;
}

/** A bare HTTP listener that answers `GET /metrics` and nothing else. */
function createMetricsServer(metrics: Metrics): Server {
  return createServer((request, response) => {
    if (request.method !== 'GET' || request.url?.split('?')[0] !== '/metrics') {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    metrics.registry.metrics().then(
      (text) => response.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
      () => response.writeHead(500).end(),
    );
  });
}

/** How long shutdown waits for live clients to receive their "reconnect" (inside main's 10 s). */
const SHUTDOWN_DRAIN_MS = 5000;
/** Fastify's default, kept now that the server is made here. */
const KEEP_ALIVE_TIMEOUT_MS = 72_000;

/**
 * How often Node looks for requests past their timeouts: its default (30 s) would let a request
 * outlive a short timeout by that much, so a quarter of the timeout, within 250 ms .. 30 s.
 */
function timeoutCheckIntervalMs(config: Config): number {
  return Math.min(30_000, Math.max(250, Math.floor(config.headersTimeoutMs / 4)));
}

const rootPage = (basePath: string) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Runcast</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#1f2933}</style>
</head><body><h1>Runcast</h1>
<p>Live progress for long migrations over WebSocket, Server-Sent Events and polling.</p>
<p>The API is served under <code>${basePath}/api/v1</code>; its reference is at <a href="${basePath}/docs">${basePath}/docs</a>.</p>
</body></html>`;

/**
 * Serves the dashboard's build at `/`, with client-side routes (`/runs/…`, `/projects/…`)
 * answered by its index.html. Without a build, `/` explains where the API is.
 */
async function serveDashboard(app: FastifyInstance, webDir: string, basePath: string): Promise<void> {
  const indexFile = join(webDir, 'index.html');
  if (!existsSync(indexFile)) {
    const page = rootPage(basePath);
    app.get('/', { schema: { hide: true } }, async (_request, reply) => reply.type('text/html').send(page));
    return;
  }
  // The build's URLs are relative (Vite `base: './'`): this <base> makes them resolve under the
  // path the server is mounted at from any deep link, and tells the dashboard that path.
  const index = readFileSync(indexFile, 'utf8').replace('<head>', `<head>\n    <base href="${basePath}/" />`);
  // The build writes `.br` and `.gz` beside each file worth compressing (see vite.config.ts):
  // served to clients that accept them, with the original's content type and `Vary`.
  await app.register(fastifyStatic, { root: webDir, wildcard: false, index: false, preCompressed: true });
  const page = async (_request: unknown, reply: FastifyReply) =>
    reply.type('text/html; charset=utf-8').header('cache-control', 'no-cache').send(index);
  for (const route of ['/', '/runs/*', '/projects/*', '/projects', '/login']) {
    app.get(route, { schema: { hide: true } }, page);
  }
}

/** One line per answered request. */
function logRequest(request: FastifyRequest, reply: FastifyReply): void {
  request.log.info(
    {
      method: request.method,
      url: request.url.split('?')[0],
      status: reply.statusCode,
      ms: Math.round(reply.elapsedTime),
      ip: request.ip,
    },
    'request',
  );
}

/** Builds the Fastify app with every plugin registered; call `app.listen` to serve. */
export async function buildApp(config: Config, options: BuildOptions = {}): Promise<Runcast> {
  // Alone, in-process; on PostgreSQL, LISTEN/NOTIFY between the nodes sharing the database.
  const bus = await createBus({
    databaseUrl: config.databaseUrl,
    onError: (err) => app.log.warn({ err }, 'bus connection failed; it is replaced and its listeners resync'),
  });
  // What requests read stays in memory. On SQLite this process is the only writer; on PostgreSQL
  // other nodes write too (multi-writer: cache invalidation is driven by the bus).
  let store: CachedStore;
  try {
    store = new CachedStore(
      await createStore(config, {
        onStorageFull: (full, err) => {
          if (full)
            app.log.error({ err }, 'storage is full: writes answer 507 STORAGE_FULL until space returns');
          else app.log.warn('storage has room again: writes are accepted');
        },
        onError: (err) => app.log.warn({ err }, 'an idle database connection failed; it will be replaced'),
        notifier: bus.commitNotifier,
      }),
    );
  } catch (err) {
    await bus.close();
    throw err;
  }
  // Every node on one database signs tokens and seals git secrets with the same keys.
  let keys: ClusterKeys | undefined;
  try {
    keys =
      config.databaseUrl === undefined ? undefined : await loadClusterKeys(config.databaseUrl, config.secret);
  } catch (err) {
    await store.close();
    await bus.close();
    throw err;
  }
  const secret = keys?.signingSecret ?? loadOrCreateSecret(config);
  const secretBox = keys ? new SecretBox(keys.sealingKey) : SecretBox.forDataDir(config.dataDir);
  let pollFastPath: PollFastPath | undefined;
  const proxyTrust = new ProxyTrust(config.trustProxy);
  const { basePath } = config;
  const app = Fastify({
    logger: {
      level: config.logLevel,
      redact: {
        paths: [
          'req.headers.authorization',
          'req.headers.cookie',
          'res.headers["set-cookie"]',
          '*.password',
          '*.token',
        ],
        censor: '[redacted]',
      },
      ...(options.logStream ? { stream: options.logStream } : {}),
    },
    // One line per request, from the onResponse hook below, instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.bodyLimitBytes,
    // Errors Fastify answers before routing (bad URL encoding, overlong parameters) get the
    // contract's body too.
    frameworkErrors: (err, _request, reply) => {
      sendError(reply, new AppError('INVALID_INPUT', err.message));
    },
    // request.ip (logs, the login throttle) is the client's address behind trusted proxies.
    trustProxy: proxyTrust.trusts,
    // Malformed requests and request timeouts, refused by Node before Fastify sees them.
    clientErrorHandler: answerClientError,
    // The HTTP server Fastify would make, with one addition: a poll answered from memory skips
    // routing (see PollFastPath).
    serverFactory: (handler) => {
      // requestTimeout ends when the request (headers and body) has arrived, not the response:
      // a body trickled in byte by byte is cut, an SSE stream or a long-poll is not.
      const server = createServer(
        {
          requestTimeout: config.requestTimeoutMs,
          headersTimeout: config.headersTimeoutMs,
          connectionsCheckingInterval: timeoutCheckIntervalMs(config),
        },
        (request, response) => {
          // Socket.IO takes its requests (`<base>/socket.io`) before this handler.
          if (basePath !== '' && !stripBasePath(request, basePath)) {
            answerOutsideBasePath(response, basePath);
            return;
          }
          if (!pollFastPath?.tryAnswer(request, response)) handler(request, response);
        },
      );
      server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
      return server;
    },
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.setValidatorCompiler(createValidatorCompiler());
  // JSON only: a text/plain body is what a cross-site form can send without a preflight.
  app.removeContentTypeParser('text/plain');
  registerJsonBodyParser(app);
  registerErrorHandling(app);
  if (config.httpCompression.enabled) registerCompression(app, { minBytes: config.httpCompression.minBytes });

  // Directory writes are announced on the bus, and every node's cache follows them.
  const detachCache = store.attach(bus);
  const runner = new Runner(
    {
      concurrency: config.runnerConcurrency,
      workRoot: join(config.dataDir, 'work'),
      // The embedded store has one node: a fixed id lets it take back its runs at once on restart.
      nodeId: config.nodeId ?? (config.databaseUrl === undefined ? 'embedded' : newNodeId()),
      leaseMs: config.runLeaseMs,
    },
    app.log,
  ).register(
    new GitMirrorExecutor(secretBox, {
      allowLocal: config.gitAllowLocal,
      hooks: options.gitMirrorHooks,
    }),
  );
  const runs = new RunService(store, bus, runner);
  const metrics = new Metrics();
  const drain = new ConnectionDrain();
  const policy = new Policy(store, store);
  const hub = new Hub(bus, runs, metrics, {
    maxQueuedBytes: config.subscriberQueueLimitBytes,
    canRead: async (principal, projectId) => (await policy.projectAccess(principal, projectId)) !== undefined,
  });
  const authenticator = new Authenticator(store, secret, Date.now, store);

  // Decided once: building the line costs more than the rest of a 304 when nobody reads it.
  if (['trace', 'debug', 'info'].includes(config.logLevel)) {
    app.addHook('onResponse', (request, reply, done) => {
      logRequest(request, reply);
      done();
    });
  }

  await app.register(swagger, {
    openapi: {
      info: {
        title: 'Runcast API',
        version: '1',
        description:
          'Live progress of runs over Socket.IO (`/socket.io`: `subscribe {run_id, since?, delta?}`, ' +
          '`run_event`), Server-Sent Events (`…/stream`) and polling (`…/progress`). ' +
          DELTA_STREAM_DOC,
      },
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
        // As plain JSON Schema: the wire's event shapes, which no route's schema names.
        schemas: JSON.parse(
          JSON.stringify({ RunSnapshot, UpdateEvent, DeltaUpdateEvent, SnapshotPatch, ProgressDelta }),
        ),
      },
      security: [{ bearer: [] }],
      ...(basePath !== '' ? { servers: [{ url: basePath }] } : {}),
    },
  });
  await app.register(swaggerUi, {
    routePrefix: '/docs',
    ...(basePath !== '' ? { indexPrefix: basePath } : {}),
  });
  if (config.allowedOrigins.length > 0) {
    // A dashboard built for another origin (split deployment) calls the API cross-origin.
    await app.register(cors, {
      origin: [...config.allowedOrigins],
      credentials: true,
      allowedHeaders: [
        'authorization',
        'content-type',
        'last-event-id',
        'if-none-match',
        ...Object.values(TRANSPORT_HEADERS),
      ],
      exposedHeaders: ['etag', 'retry-after'],
      methods: ['GET', 'POST', 'PATCH', 'DELETE'],
    });
  }
  await app.register(authPlugin, { authenticator, allowedOrigins: config.allowedOrigins, proxyTrust });
  pollFastPath = new PollFastPath({
    authenticator,
    policy,
    metrics,
    parseCookies: (header) => app.parseCookie(header),
  });

  await app.register(
    async (api) => {
      await api.register(authRoutes, {
        store,
        bus,
        policy,
        secret,
        tokenTtlS: config.tokenTtlS,
        loginRateLimitPerMin: config.loginRateLimitPerMin,
        cookieSecure: config.cookieSecure,
        allowedOrigins: config.allowedOrigins,
        proxyTrust,
        cookiePath: basePath || '/',
      });
      await api.register(projectRoutes, { store, policy });
      await api.register(runRoutes, { runs, policy, hub, metrics, eventsPageLimit: config.eventsPageLimit });
      if (config.gateways.sse) {
        await api.register(sseRoutes, {
          hub,
          policy,
          metrics,
          keepaliveMs: config.sseKeepaliveMs,
          retryMs: config.sseRetryMs,
          drain,
          compression: config.sseCompression,
        });
      }
    },
    { prefix: '/api/v1' },
  );

  const io = config.gateways.websocket
    ? attachSocketGateway(app.server, {
        hub,
        policy,
        authenticator,
        metrics,
        allowedOrigins: config.allowedOrigins,
        proxyTrust,
        parseCookies: (header) => app.parseCookie(header),
        path: `${basePath}/socket.io`,
        pingIntervalMs: config.wsPingIntervalMs,
        pingTimeoutMs: config.wsPingTimeoutMs,
        compression: config.wsCompression,
      })
    : undefined;
  drain.watch(app.server, io !== undefined);
  // Before the server stops accepting: tell every live client to reconnect (elsewhere) and wake
  // every long-poll, so that closing does not wait on streams that never end by themselves.
  app.addHook('preClose', async () => {
    pollFastPath?.disable();
    hub.closeAll('SERVER_SHUTDOWN');
    drain.destroyUnused();
    // The reconnect frames must reach the clients before their connections are closed.
    await Promise.all([
      drain.streamsFlushed(SHUTDOWN_DRAIN_MS),
      waitUntil(() => (io?.engine.clientsCount ?? 0) === 0, SHUTDOWN_DRAIN_MS),
    ]);
    io?.engine.close();
  });

  app.get('/metrics', { schema: { hide: true } }, async (request, reply) => {
    policy.requireAdmin(requirePrincipal(request));
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }));
  app.get('/readyz', { schema: { hide: true } }, async (_request, reply) => {
    try {
      await store.ping();
      return { status: 'ready' };
    } catch (err) {
      // 503 whatever the cause, so that any load balancer takes the node out; the code says why.
      const cause =
        err instanceof AppError && err.code === 'STORAGE_FULL'
          ? err
          : new AppError('NOT_READY', 'the store does not answer');
      return reply.code(503).send({ error: { code: cause.code, message: cause.message } });
    }
  });
  await serveDashboard(app, config.webDir, basePath);

  // Scrapers on a private address get /metrics without credentials; elsewhere it needs an admin.
  const metricsServer = config.metricsPort !== undefined ? createMetricsServer(metrics) : undefined;
  if (metricsServer) {
    await new Promise<void>((resolve, reject) => {
      metricsServer.once('error', reject);
      metricsServer.listen(config.metricsPort, config.metricsHost, () => resolve());
    });
  }

  await ensureAdmin(store, config.adminPassword, options.announce ?? ((message) => console.log(message)));
  await runner.start(runs, bus, store);

  let closed = false;
  return {
    app,
    store,
    bus,
    runs,
    runner,
    hub,
    metrics,
    metricsServer,
    async close() {
      if (closed) return;
      closed = true;
      await app.close();
      metricsServer?.closeAllConnections();
      await new Promise((resolve) => (metricsServer ? metricsServer.close(resolve) : resolve(undefined)));
      await runner.close();
      hub.close();
      detachCache();
      await bus.close();
      await store.close();
    },
  };
}
