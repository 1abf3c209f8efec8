import { join } from 'node:path';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify, { type FastifyInstance, LogController } from 'fastify';
import { Authenticator } from './auth/authenticator.js';
import authPlugin from './auth/plugin.js';
import { Policy } from './auth/policy.js';
import { authRoutes } from './auth/routes.js';
import { ensureAdmin, loadOrCreateSecret } from './bootstrap.js';
import type { Bus } from './bus/bus.js';
import { MemoryBus } from './bus/memory.js';
import type { Config } from './config.js';
import { registerErrorHandling } from './http/error-handler.js';
import { createValidatorCompiler } from './http/validation.js';
import { projectRoutes } from './projects/routes.js';
import { runRoutes } from './runs/routes.js';
import { RunService } from './runs/run-service.js';
import { SeqWaiters } from './runs/seq-waiters.js';
import { SqliteStore } from './store/sqlite.js';
import type { Store } from './store/store.js';

export type { Config } from './config.js';
export { loadConfig } from './config.js';

/** A built server and the services behind it. */
export interface Runcast {
  app: FastifyInstance;
  store: Store;
  bus: Bus;
  runs: RunService;
  /** Stops accepting, ends waits, closes the store. */
  close(): Promise<void>;
}

export interface BuildOptions {
  /** Where the bootstrap admin's generated password is announced; stdout by default. */
  announce?: (message: string) => void;
  /** A pino destination for the server's own log lines (tests capture them). */
  logStream?: NodeJS.WritableStream;
}

const ROOT_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Runcast</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#1f2933}</style>
</head><body><h1>Runcast</h1>
<p>Live progress for long migrations over WebSocket, Server-Sent Events and polling.</p>
<p>The API is served under <code>/api/v1</code>; its reference is at <a href="/docs">/docs</a>.</p>
</body></html>`;

/** Builds the Fastify app with every plugin registered; call `app.listen` to serve. */
export async function buildApp(config: Config, options: BuildOptions = {}): Promise<Runcast> {
  const secret = loadOrCreateSecret(config);
  const store = new SqliteStore({
    file: join(config.dataDir, 'runcast.db'),
    eventRetention: config.eventRetention,
    synchronous: config.sqliteSynchronous,
  });
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
    trustProxy: false,
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.setValidatorCompiler(createValidatorCompiler());
  registerErrorHandling(app);

  const bus = new MemoryBus((err) => app.log.error({ err }, 'bus listener failed'));
  const runs = new RunService(store, bus);
  const waiters = new SeqWaiters(bus);
  const policy = new Policy(store);
  const authenticator = new Authenticator(store, secret);

  app.addHook('onResponse', async (request, reply) => {
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
  });

  await app.register(swagger, {
    openapi: {
      info: { title: 'Runcast API', version: '1' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  await app.register(authPlugin, { authenticator, allowedOrigins: config.allowedOrigins });

  await app.register(
    async (api) => {
      await api.register(authRoutes, {
        store,
        policy,
        secret,
        tokenTtlS: config.tokenTtlS,
        loginRateLimitPerMin: config.loginRateLimitPerMin,
        cookieSecure: config.cookieSecure,
        allowedOrigins: config.allowedOrigins,
      });
      await api.register(projectRoutes, { store, policy });
      await api.register(runRoutes, { runs, policy, waiters, eventsPageLimit: config.eventsPageLimit });
    },
    { prefix: '/api/v1' },
  );

  app.get('/healthz', { schema: { hide: true } }, async () => ({ status: 'ok' }));
  app.get('/readyz', { schema: { hide: true } }, async (_request, reply) => {
    try {
      await store.ping();
      return { status: 'ready' };
    } catch {
      return reply.code(503).send({ error: { code: 'NOT_READY', message: 'the store does not answer' } });
    }
  });
  app.get('/', { schema: { hide: true } }, async (_request, reply) =>
    reply.type('text/html').send(ROOT_PAGE),
  );

  await ensureAdmin(store, config.adminPassword, options.announce ?? ((message) => console.log(message)));

  let closed = false;
  return {
    app,
    store,
    bus,
    runs,
    async close() {
      if (closed) return;
      closed = true;
      waiters.close();
      await app.close();
      await bus.close();
      await store.close();
    },
  };
}
