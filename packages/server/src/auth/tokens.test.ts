import { describe, expect, it } from 'vitest';
import {
  generateApiToken,
  looksLikeApiToken,
  parseApiToken,
  signAccessToken,
  tokenSecretMatches,
  verifyAccessToken,
} from './tokens.js';

const SECRET = 'x'.repeat(43);

describe('login tokens', () => {
  const claims = { sid: 'ses_1', sub: 'usr_1', exp: 2_000_000_000 };

  it('round-trips claims signed with the secret', () => {
    expect(verifyAccessToken(SECRET, signAccessToken(SECRET, claims), 1_000)).toEqual(claims);
  });

  it('refuses another secret, a changed payload, and an expired token', () => {
    const token = signAccessToken(SECRET, claims);
    expect(verifyAccessToken('y'.repeat(43), token, 1_000)).toBeUndefined();
    const [prefix, , signature] = token.split('.');
    const forged = Buffer.from(JSON.stringify({ ...claims, sub: 'usr_admin' })).toString('base64url');
    expect(verifyAccessToken(SECRET, `${prefix}.${forged}.${signature}`, 1_000)).toBeUndefined();
    expect(verifyAccessToken(SECRET, token, claims.exp * 1000)).toBeUndefined();
    expect(verifyAccessToken(SECRET, 'garbage', 1_000)).toBeUndefined();
  });
});

describe('API tokens', () => {
  it('are shown once as rc_<id>_<secret> and stored only as a hash', () => {
    const { tokenId, token, secretHash } = generateApiToken();
    expect(looksLikeApiToken(token)).toBe(true);
    const parsed = parseApiToken(token);
    expect(parsed?.tokenId).toBe(tokenId);
    expect(secretHash).toMatch(/^[0-9a-f]{64}$/);
    expect(token).not.toContain(secretHash);
    expect(tokenSecretMatches(parsed?.secret ?? '', secretHash)).toBe(true);
    const secret = parsed?.secret ?? '';
    const altered = `${secret.slice(0, -1)}${secret.endsWith('A') ? 'B' : 'A'}`;
    expect(tokenSecretMatches(altered, secretHash)).toBe(false);
  });

  it('refuses malformed tokens', () => {
    expect(parseApiToken('rc_tok_short_secret')).toBeUndefined();
    expect(parseApiToken('')).toBeUndefined();
  });
});
