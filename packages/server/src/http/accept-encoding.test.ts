import { describe, expect, it } from 'vitest';
import { negotiateCoding, varyOnAcceptEncoding } from './accept-encoding.js';

describe('Accept-Encoding negotiation', () => {
  it.each([
    [undefined, undefined],
    ['', undefined],
    ['identity', undefined],
    ['gzip, deflate', 'gzip'],
    ['gzip, deflate, br, zstd', 'br'],
    ['br;q=0, gzip;q=0.5', 'gzip'],
    ['GZIP;Q=1.0', 'gzip'],
    ['x-gzip', 'gzip'],
    ['*', 'br'],
    ['*;q=0.1, br;q=0', 'gzip'],
    ['*;q=0', undefined],
    ['gzip;q=0', undefined],
    [['deflate', 'gzip'], 'gzip'],
  ] as const)('%j accepts %s of br, gzip', (header, expected) => {
    expect(negotiateCoding(header as string | string[] | undefined, ['br', 'gzip'])).toBe(expected);
  });

  it('adds Accept-Encoding to Vary once', () => {
    expect(varyOnAcceptEncoding(undefined)).toBe('Accept-Encoding');
    expect(varyOnAcceptEncoding('Origin')).toBe('Origin, Accept-Encoding');
    expect(varyOnAcceptEncoding('origin, accept-encoding')).toBe('origin, accept-encoding');
    expect(varyOnAcceptEncoding('*')).toBe('*');
  });
});
