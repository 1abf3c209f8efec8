import type { IncomingMessage } from 'node:http';
import cookie from '@fastify/cookie';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { AppError } from '../errors.js';
import { type ProxyTrust, sameOrigin } from '../http/proxy-trust.js';
import type { Authenticator } from './authenticator.js';
import type { Principal } from './principal.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Who sent the request; undefined when no credentials came with it. */
    principal: Principal | undefined;
  }
  interface FastifyContextConfig {
    /** The route answers without credentials (login, logout). */
    public?: boolean;
  }
}

export interface AuthPluginOptions {
  authenticator: Authenticator;
  /** Origins besides the server's own allowed to send cookie-authenticated state changes. */
  allowedOrigins: readonly string[];
  /** Whose forwarded scheme and host name the server's own origin. */
  proxyTrust: ProxyTrust;
}

const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** The principal of a request that must be authenticated; UNAUTHORIZED otherwise. */
export function requirePrincipal(request: FastifyRequest): Principal {
  if (!request.principal) throw new AppError('UNAUTHORIZED', 'log in or send an API token');
  return request.principal;
}

/**
 * True when the browser says the request comes from this server's own origin — the scheme, host
 * and port the client addressed, as forwarded by a trusted proxy — or from an allowed one.
 * Used by HTTP routes and the Socket.IO handshake alike.
 */
export function originAllowed(
  request: IncomingMessage,
  proxyTrust: ProxyTrust,
  allowedOrigins: readonly string[],
): boolean {
  const origin = request.headers.origin;
  if (origin === undefined) {
    // Browsers send Origin on every cross-site state change; without it, trust only an explicit
    // same-origin fetch-metadata header.
    return request.headers['sec-fetch-site'] === 'same-origin';
  }
  return allowedOrigins.includes(origin) || sameOrigin(origin, proxyTrust.origin(request));
}

async function authPlugin(app: FastifyInstance, options: AuthPluginOptions): Promise<void> {
  await app.register(cookie);
  app.decorateRequest('principal', undefined);
  app.addHook('onRequest', async (request) => {
    request.principal = await options.authenticator.authenticate({
      authorization: request.headers.authorization,
      cookies: request.cookies,
    });
    // Refused before validation: a caller without credentials learns nothing about the input rules.
    const route = request.routeOptions;
    if (!request.principal && route.url?.startsWith('/api/') && route.config.public !== true) {
      throw new AppError('UNAUTHORIZED', 'log in or send an API token');
    }
    if (request.principal?.via === 'cookie' && !SAFE_METHODS.has(request.method)) {
      if (!originAllowed(request.raw, options.proxyTrust, options.allowedOrigins)) {
        throw new AppError(
          'ORIGIN_MISMATCH',
          'cross-origin request refused: the Origin header does not match',
        );
      }
    }
  });
}

/** Authenticates every request (header or cookie, never the URL) and guards cookie-borne writes. */
export default fp(authPlugin, { name: 'runcast-auth' });
