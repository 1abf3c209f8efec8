import { AppError } from '../errors.js';
import type { CachedRecords } from '../store/cached.js';
import { ReadCache } from '../store/read-cache.js';
import type { ApiTokenRecord, SessionRecord, Store, UserRecord } from '../store/store.js';
import type { CredentialSource, Principal } from './principal.js';
import { SESSION_COOKIE } from './principal.js';
import {
  type AccessClaims,
  looksLikeApiToken,
  parseApiToken,
  tokenSecretMatches,
  verifyAccessToken,
} from './tokens.js';

const VERIFIED_TOKENS_KEPT = 10_000;

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
  /**
   * Tokens whose signature (login token) or secret (API token, mapped to the hash it matched)
   * was already checked: a client sends the same token with every request.
   */
  private readonly verified = new ReadCache<string, AccessClaims | string>(VERIFIED_TOKENS_KEPT);

  constructor(
    private readonly store: Store,
    private readonly secret: string,
    private readonly now: () => number = Date.now,
    private readonly cache?: CachedRecords,
  ) {}

  /**
   * The principal for these credentials: undefined when none were presented; throws
   * UNAUTHORIZED when some were presented and are not valid.
   */
  async authenticate(credentials: Credentials): Promise<Principal | undefined> {
    const presented = presentedToken(credentials);
    if (!presented) return undefined;
    const { token, via } = presented;
    if (looksLikeApiToken(token)) {
      const parsed = parseApiToken(token);
      const record = parsed && (await this.store.getApiToken(parsed.tokenId));
      return this.apiTokenPrincipal(token, via, parsed, record);
    }
    const claims = this.loginClaims(token);
    if (!claims) throw new AppError('UNAUTHORIZED', 'invalid or expired token; log in again');
    const session = await this.store.getSession(claims.sid);
    const user = session?.user_id === claims.sub ? await this.store.getUser(claims.sub) : undefined;
    return loginPrincipal(claims, session, user, via);
  }

  /**
   * The principal for these credentials when they are valid and every record that says so is in
   * memory; undefined otherwise (`authenticate` then decides, and explains).
   */
  cachedPrincipal(credentials: Credentials): Principal | undefined {
    const cache = this.cache;
    if (!cache) return undefined;
    try {
      const presented = presentedToken(credentials);
      if (!presented) return undefined;
      const { token, via } = presented;
      if (looksLikeApiToken(token)) {
        const parsed = parseApiToken(token);
        return this.apiTokenPrincipal(token, via, parsed, parsed && cache.cachedApiToken(parsed.tokenId));
      }
      const claims = this.loginClaims(token);
      const session = claims && cache.cachedSession(claims.sid);
      return claims && loginPrincipal(claims, session, cache.cachedUser(claims.sub), via);
    } catch {
      return undefined;
    }
  }

  private apiTokenPrincipal(
    token: string,
    via: CredentialSource,
    parsed: { tokenId: string; secret: string } | undefined,
    record: ApiTokenRecord | undefined,
  ): Principal {
    if (
      !parsed ||
      !record ||
      record.revoked_at !== null ||
      !this.secretMatches(token, parsed.secret, record)
    ) {
      throw new AppError('UNAUTHORIZED', 'invalid or revoked API token');
    }
    if (via === 'cookie') throw new AppError('UNAUTHORIZED', 'API tokens travel in the Authorization header');
    return { kind: 'token', token: record, via: 'bearer' };
  }

  /** The claims of a valid, unexpired login token; the signature is checked once per token. */
  private loginClaims(token: string): AccessClaims | undefined {
    const known = this.verified.get(token);
    if (typeof known === 'object') return known.exp * 1000 > this.now() ? known : undefined;
    const claims = verifyAccessToken(this.secret, token, this.now());
    if (claims) this.verified.set(token, claims);
    return claims;
  }

  /** Whether an API token's secret matches its record; checked once per token and stored hash. */
  private secretMatches(token: string, secret: string, record: ApiTokenRecord): boolean {
    if (this.verified.get(token) === record.secret_hash) return true;
    if (!tokenSecretMatches(secret, record.secret_hash)) return false;
    this.verified.set(token, record.secret_hash);
    return true;
  }
}

/** The token the credentials present and how; throws UNAUTHORIZED for a malformed header. */
function presentedToken(credentials: Credentials): { token: string; via: CredentialSource } | undefined {
  const header = credentials.authorization;
  if (header !== undefined && header !== '') {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match?.[1]) throw new AppError('UNAUTHORIZED', 'the Authorization header must be "Bearer <token>"');
    return { token: match[1], via: 'bearer' };
  }
  if (credentials.token !== undefined && credentials.token !== '')
    return { token: credentials.token, via: 'bearer' };
  const cookie = credentials.cookies?.[SESSION_COOKIE];
  return cookie ? { token: cookie, via: 'cookie' } : undefined;
}

/** A logged-in user's principal, if the token's session is live and its user exists. */
function loginPrincipal(
  claims: AccessClaims,
  session: SessionRecord | undefined,
  user: UserRecord | undefined,
  via: CredentialSource,
): Principal {
  if (!session || session.user_id !== claims.sub)
    throw new AppError('UNAUTHORIZED', 'session ended; log in again');
  if (!user) throw new AppError('UNAUTHORIZED', 'user no longer exists');
  return { kind: 'user', user, sessionId: session.session_id, via, expiresAtMs: claims.exp * 1000 };
}
