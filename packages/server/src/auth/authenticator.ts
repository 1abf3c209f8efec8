import { AppError } from '../errors.js';
import type { Store } from '../store/store.js';
import type { Principal } from './principal.js';
import { SESSION_COOKIE } from './principal.js';
import { looksLikeApiToken, parseApiToken, tokenSecretMatches, verifyAccessToken } from './tokens.js';

/** The credential-bearing parts of a request, whatever the transport. */
export interface Credentials {
  authorization?: string | undefined;
  /** Parsed cookies. */
  cookies?: Record<string, string | undefined> | undefined;
  /** A token handed over out of band (the Socket.IO handshake's `auth.token`). */
  token?: string | undefined;
}

/**
 * Turns credentials into a Principal. Shared by REST, SSE and Socket.IO so that every transport
 * accepts exactly the same credentials — and none from a URL.
 */
export class Authenticator {
  constructor(
    private readonly store: Store,
    private readonly secret: string,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * The principal for these credentials: undefined when none were presented; throws
   * UNAUTHORIZED when some were presented and are not valid.
   */
  async authenticate(credentials: Credentials): Promise<Principal | undefined> {
    const header = credentials.authorization;
    if (header !== undefined && header !== '') {
      const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
      if (!match?.[1])
        throw new AppError('UNAUTHORIZED', 'the Authorization header must be "Bearer <token>"');
      return this.fromToken(match[1], 'bearer');
    }
    if (credentials.token !== undefined && credentials.token !== '') {
      return this.fromToken(credentials.token, 'bearer');
    }
    const cookie = credentials.cookies?.[SESSION_COOKIE];
    if (cookie) return this.fromToken(cookie, 'cookie');
    return undefined;
  }

  private async fromToken(token: string, via: 'bearer' | 'cookie'): Promise<Principal> {
    if (looksLikeApiToken(token)) {
      const parsed = parseApiToken(token);
      const record = parsed && (await this.store.getApiToken(parsed.tokenId));
      if (
        !parsed ||
        !record ||
        record.revoked_at !== null ||
        !tokenSecretMatches(parsed.secret, record.secret_hash)
      ) {
        throw new AppError('UNAUTHORIZED', 'invalid or revoked API token');
      }
      if (via === 'cookie')
        throw new AppError('UNAUTHORIZED', 'API tokens travel in the Authorization header');
      return { kind: 'token', token: record, via: 'bearer' };
    }
    const claims = verifyAccessToken(this.secret, token, this.now());
    if (!claims) throw new AppError('UNAUTHORIZED', 'invalid or expired token; log in again');
    const session = await this.store.getSession(claims.sid);
    if (!session || session.user_id !== claims.sub)
      throw new AppError('UNAUTHORIZED', 'session ended; log in again');
    const user = await this.store.getUser(claims.sub);
    if (!user) throw new AppError('UNAUTHORIZED', 'user no longer exists');
    return { kind: 'user', user, sessionId: session.session_id, via };
  }
}
