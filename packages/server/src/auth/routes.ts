import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import {
  type ApiToken,
  ChangePassword,
  CreateApiToken,
  CreateUser,
  LoginRequest,
  type Me,
  TokenId,
  type User,
} from '@runcast/protocol';
import { Type } from 'typebox';
import type { Bus } from '../bus/bus.js';
import { AppError } from '../errors.js';
import type { ProxyTrust } from '../http/proxy-trust.js';
import { newId } from '../ids.js';
import type { ApiTokenRecord, Store, UserRecord } from '../store/store.js';
import { LoginThrottle, SharedLoginThrottle } from './login-throttle.js';
import { hashPassword, verifyPassword } from './passwords.js';
import { originAllowed, requirePrincipal } from './plugin.js';
import type { Policy } from './policy.js';
import { SESSION_COOKIE } from './principal.js';
import { generateApiToken, signAccessToken } from './tokens.js';

export interface AuthRoutesOptions {
  store: Store;
  /** Carries login attempts to every node's login limit. */
  bus: Bus;
  policy: Policy;
  secret: string;
  tokenTtlS: number;
  loginRateLimitPerMin: number;
  /** Mark the session cookie Secure even on a request that came over plain HTTP. */
  cookieSecure: boolean;
  allowedOrigins: readonly string[];
  /** Whose forwarded client address and scheme count. */
  proxyTrust: ProxyTrust;
  /** The path the session cookie is scoped to (RUNCAST_BASE_PATH, or `/`). */
  cookiePath: string;
}

export const toUser = (user: UserRecord): User => ({
  user_id: user.user_id,
  username: user.username,
  role: user.role,
  created_at: user.created_at,
});

const toApiToken = (token: ApiTokenRecord): ApiToken => ({
  token_id: token.token_id,
  project_id: token.project_id,
  name: token.name,
  created_by: token.created_by,
  created_at: token.created_at,
  revoked_at: token.revoked_at,
});

// Compared against when the username is unknown, so a miss costs as much time as a hit.
const DUMMY_HASH = hashPassword('runcast-timing-equaliser');

/** Login, logout, me; users (admins); worker API tokens (admins and project operators). */
export const authRoutes: FastifyPluginAsyncTypebox<AuthRoutesOptions> = async (app, options) => {
  const { store, policy } = options;
  const { proxyTrust, cookiePath } = options;
  // Counted on every node: attempts travel over the bus.
  const loginThrottle = new SharedLoginThrottle(
    new LoginThrottle(options.loginRateLimitPerMin, 60_000),
    options.bus,
  );
  app.addHook('onClose', async () => loginThrottle.close());

  app.post(
    '/auth/login',
    { config: { public: true }, schema: { body: LoginRequest, tags: ['auth'] } },
    async (request, reply) => {
      // A login form posted from another site would log the victim in as the attacker.
      if (
        request.headers.origin !== undefined &&
        !originAllowed(request.raw, proxyTrust, options.allowedOrigins)
      ) {
        throw new AppError('ORIGIN_MISMATCH', 'cross-origin login refused');
      }
      const { username, password } = request.body;
      // request.ip is the client's address behind trusted proxies (Fastify's trustProxy).
      const waitS = loginThrottle.admit(request.ip, username);
      if (waitS > 0) {
        reply.header('retry-after', String(waitS));
        throw new AppError('RATE_LIMITED', `too many failed logins; try again in ${waitS} s`);
      }
      const user = await store.getUserByUsername(username);
      const ok = await verifyPassword(password, user?.password_hash ?? (await DUMMY_HASH));
      if (!user || !ok) {
        loginThrottle.failed(request.ip, username);
        throw new AppError('UNAUTHORIZED', 'wrong username or password');
      }
      loginThrottle.succeeded(request.ip, username);
      const nowMs = Date.now();
      const expiresAt = new Date(nowMs + options.tokenTtlS * 1000);
      const sessionId = newId('ses');
      await store.createSession({
        session_id: sessionId,
        user_id: user.user_id,
        created_at: new Date(nowMs).toISOString(),
        expires_at: expiresAt.toISOString(),
      });
      const token = signAccessToken(options.secret, {
        sid: sessionId,
        sub: user.user_id,
        exp: Math.floor(expiresAt.getTime() / 1000),
      });
      reply.setCookie(SESSION_COOKIE, token, {
        httpOnly: true,
        sameSite: 'strict',
        // Browsers refuse to send a Secure cookie over plain HTTP: Secure only when the client
        // came over HTTPS (directly or through a trusted TLS-terminating proxy), or when forced.
        secure: options.cookieSecure || proxyTrust.protocol(request.raw) === 'https',
        path: cookiePath,
        expires: expiresAt,
      });
      return { token, expires_at: expiresAt.toISOString(), user: toUser(user) };
    },
  );

  app.post(
    '/auth/logout',
    { config: { public: true }, schema: { tags: ['auth'] } },
    async (request, reply) => {
      const principal = request.principal;
      if (principal?.kind === 'user') await store.deleteSession(principal.sessionId);
      reply.clearCookie(SESSION_COOKIE, { path: cookiePath });
      return reply.code(204).send();
    },
  );

  app.get('/auth/me', { schema: { tags: ['auth'] } }, async (request): Promise<Me> => {
    const principal = requirePrincipal(request);
    if (principal.kind === 'user') return { kind: 'user', user: toUser(principal.user), token: null };
    const { token_id, project_id, name } = principal.token;
    return { kind: 'token', user: null, token: { token_id, project_id, name } };
  });

  app.post('/auth/password', { schema: { body: ChangePassword, tags: ['auth'] } }, async (request, reply) => {
    const principal = requirePrincipal(request);
    if (principal.kind !== 'user') throw new AppError('FORBIDDEN', 'an API token has no password');
    if (!(await verifyPassword(request.body.current_password, principal.user.password_hash))) {
      throw new AppError('UNAUTHORIZED', 'the current password is wrong');
    }
    // Every session of the user ends, this one included: log in again with the new password.
    await store.setPassword(principal.user.user_id, await hashPassword(request.body.new_password));
    reply.clearCookie(SESSION_COOKIE, { path: cookiePath });
    return reply.code(204).send();
  });

  app.post('/users', { schema: { body: CreateUser, tags: ['users'] } }, async (request, reply) => {
    policy.requireAdmin(requirePrincipal(request));
    const user: UserRecord = {
      user_id: newId('usr'),
      username: request.body.username,
      role: request.body.role,
      password_hash: await hashPassword(request.body.password),
      created_at: new Date().toISOString(),
    };
    await store.createUser(user);
    return reply.code(201).send(toUser(user));
  });

  app.get('/users', { schema: { tags: ['users'] } }, async (request) => {
    policy.requireAdmin(requirePrincipal(request));
    return { users: (await store.listUsers()).map(toUser) };
  });

  app.post('/tokens', { schema: { body: CreateApiToken, tags: ['tokens'] } }, async (request, reply) => {
    const principal = requirePrincipal(request);
    if (principal.kind !== 'user') throw new AppError('FORBIDDEN', 'an API token cannot create API tokens');
    await policy.requireProject(principal, request.body.project_id, true);
    const { tokenId, token, secretHash } = generateApiToken();
    const record: ApiTokenRecord = {
      token_id: tokenId,
      project_id: request.body.project_id,
      name: request.body.name,
      secret_hash: secretHash,
      created_by: principal.user.user_id,
      created_at: new Date().toISOString(),
      revoked_at: null,
    };
    await store.createApiToken(record);
    return reply.code(201).send({ ...toApiToken(record), token });
  });

  app.get('/tokens', { schema: { tags: ['tokens'] } }, async (request) => {
    const projectIds = await policy.writableProjectIds(requirePrincipal(request));
    return { tokens: (await store.listApiTokens(projectIds)).map(toApiToken) };
  });

  app.delete(
    '/tokens/:token_id',
    { schema: { params: Type.Object({ token_id: TokenId }), tags: ['tokens'] } },
    async (request, reply) => {
      const principal = requirePrincipal(request);
      const token = await store.getApiToken(request.params.token_id);
      const writable = await policy.writableProjectIds(principal);
      if (!token || (writable !== 'all' && !writable.includes(token.project_id))) {
        throw new AppError('TOKEN_NOT_FOUND', `token ${request.params.token_id} not found`);
      }
      await store.revokeApiToken(token.token_id, new Date().toISOString());
      return reply.code(204).send();
    },
  );
};
