import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { newId } from '../ids.js';

/** What a login token carries: the session it belongs to, its user and its expiry. */
export interface AccessClaims {
  sid: string;
  sub: string;
  /** Expiry, seconds since the epoch. */
  exp: number;
}

const ACCESS_PREFIX = 'rct';

function sign(secret: string, payload: string): string {
  return createHmac('sha256', secret).update(payload).digest('base64url');
}

/** Signs login claims into a compact bearer token `rct.<claims>.<hmac>`. */
export function signAccessToken(secret: string, claims: AccessClaims): string {
  const payload = Buffer.from(JSON.stringify(claims)).toString('base64url');
  return `${ACCESS_PREFIX}.${payload}.${sign(secret, `${ACCESS_PREFIX}.${payload}`)}`;
}

/** The claims of a valid, unexpired login token; undefined for anything else. */
export function verifyAccessToken(
  secret: string,
  token: string,
  nowMs = Date.now(),
): AccessClaims | undefined {
  const parts = token.split('.');
  if (parts.length !== 3 || parts[0] !== ACCESS_PREFIX) return undefined;
  const [, payload = '', signature = ''] = parts;
  const expected = Buffer.from(sign(secret, `${ACCESS_PREFIX}.${payload}`));
  const given = Buffer.from(signature);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) return undefined;
  let claims: AccessClaims;
  try {
    claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as AccessClaims;
  } catch {
    return undefined;
  }
  if (typeof claims.sid !== 'string' || typeof claims.sub !== 'string' || typeof claims.exp !== 'number')
    return undefined;
  return claims.exp * 1000 > nowMs ? claims : undefined;
}

// Worker API tokens: `rc_<token_id>_<secret>`. The id finds the row; only a hash of the secret is
// stored. The secret has 256 bits of entropy, so a fast hash is enough (no password stretching).
const API_TOKEN = /^rc_(tok_[0-9A-HJKMNP-TV-Z]{26})_([A-Za-z0-9_-]{43})$/;

/** True when the string has the shape of an API token (rather than a login token). */
export function looksLikeApiToken(token: string): boolean {
  return token.startsWith('rc_');
}

/** A new API token: its id, the full token to show once, and the hash to store. */
export function generateApiToken(): { tokenId: string; token: string; secretHash: string } {
  const tokenId = newId('tok');
  const secret = randomBytes(32).toString('base64url');
  return { tokenId, token: `rc_${tokenId}_${secret}`, secretHash: hashTokenSecret(secret) };
}

/** Splits an API token into its id and secret; undefined when malformed. */
export function parseApiToken(token: string): { tokenId: string; secret: string } | undefined {
  const match = API_TOKEN.exec(token);
  return match ? { tokenId: match[1] ?? '', secret: match[2] ?? '' } : undefined;
}

export function hashTokenSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

/** Constant-time comparison of a presented secret with a stored hash. */
export function tokenSecretMatches(secret: string, storedHash: string): boolean {
  const given = Buffer.from(hashTokenSecret(secret), 'hex');
  const stored = Buffer.from(storedHash, 'hex');
  return given.length === stored.length && timingSafeEqual(given, stored);
}
