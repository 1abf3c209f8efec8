import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { ProxyTrust, parseTrustProxy, sameOrigin } from './proxy-trust.js';

/** A request as the server sees it: the peer's address and the headers. */
function request(peer: string, headers: Record<string, string> = {}, encrypted = false): IncomingMessage {
  return { socket: { remoteAddress: peer, encrypted }, headers } as unknown as IncomingMessage;
}

const PROXIED = {
  host: 'runcast.example',
  'x-forwarded-for': '203.0.113.7',
  'x-forwarded-proto': 'https',
  'x-forwarded-host': 'runcast.example:8443',
};

describe('RUNCAST_TRUST_PROXY', () => {
  it.each([
    ['', false],
    ['false', false],
    ['true', true],
    ['2', 2],
    ['10.0.0.0/8, loopback,::1', ['10.0.0.0/8', 'loopback', '::1']],
  ])('reads %j', (raw, expected) => {
    expect(parseTrustProxy(raw)).toEqual(expected);
  });

  it.each(['10.0.0.0/33', 'proxy.example', '10.0.0.1/8/1', '::1/129'])('refuses %j', (raw) => {
    expect(() => parseTrustProxy(raw)).toThrow(raw);
  });
});

describe('ProxyTrust', () => {
  it('ignores forwarded headers from an untrusted peer', () => {
    const trust = new ProxyTrust(false);
    const req = request('10.0.0.5', PROXIED);
    expect(trust.clientAddress(req)).toBe('10.0.0.5');
    expect(trust.protocol(req)).toBe('http');
    expect(trust.origin(req)).toBe('http://runcast.example');
  });

  it('reads them from a peer in a trusted subnet, IPv4-mapped or not', () => {
    const trust = new ProxyTrust(['10.0.0.0/8']);
    for (const peer of ['10.0.0.5', '::ffff:10.0.0.5']) {
      const req = request(peer, PROXIED);
      expect(trust.clientAddress(req)).toBe('203.0.113.7');
      expect(trust.protocol(req)).toBe('https');
      expect(trust.origin(req)).toBe('https://runcast.example:8443');
    }
    expect(trust.clientAddress(request('192.0.2.1', PROXIED))).toBe('192.0.2.1');
  });

  it('stops at the first untrusted hop of X-Forwarded-For, so a client cannot forge its address', () => {
    const trust = new ProxyTrust(['loopback', '10.0.0.0/8']);
    const req = request('127.0.0.1', { 'x-forwarded-for': '198.51.100.1, 203.0.113.7, 10.1.1.1' });
    expect(trust.clientAddress(req)).toBe('203.0.113.7');
  });

  it('trusts a hop count from the peer on', () => {
    const req = request('127.0.0.1', { 'x-forwarded-for': '198.51.100.1, 203.0.113.7' });
    expect(new ProxyTrust(1).clientAddress(req)).toBe('203.0.113.7');
    expect(new ProxyTrust(2).clientAddress(req)).toBe('198.51.100.1');
    expect(new ProxyTrust(true).clientAddress(req)).toBe('198.51.100.1');
  });

  it("adds X-Forwarded-Port to a Host without one (nginx's $host), and drops a default port", () => {
    const trust = new ProxyTrust(true);
    const port = (host: string, forwardedPort?: string, proto = 'https') =>
      trust.origin(
        request('127.0.0.1', {
          host,
          'x-forwarded-proto': proto,
          ...(forwardedPort ? { 'x-forwarded-port': forwardedPort } : {}),
        }),
      );
    expect(port('runcast.example', '8443')).toBe('https://runcast.example:8443');
    expect(port('runcast.example', '443')).toBe('https://runcast.example');
    expect(port('runcast.example:9443', '8443')).toBe('https://runcast.example:9443');
    expect(port('[::1]', '8443')).toBe('https://[::1]:8443');
    expect(port('runcast.example:80', undefined, 'http')).toBe('http://runcast.example');
  });

  it('takes the nearest proxy’s value when a header was appended to', () => {
    const trust = new ProxyTrust(true);
    const req = request('127.0.0.1', { host: 'a', 'x-forwarded-proto': 'http, https' });
    expect(trust.protocol(req)).toBe('https');
  });

  it('has no origin for a Host that is not one', () => {
    const trust = new ProxyTrust(false);
    expect(trust.origin(request('127.0.0.1', { host: 'evil.example/path' }))).toBeUndefined();
    expect(trust.origin(request('127.0.0.1', { host: 'user@evil.example' }))).toBeUndefined();
    expect(trust.origin(request('127.0.0.1', {}))).toBeUndefined();
  });
});

describe('sameOrigin', () => {
  it('compares scheme, host and port, a default port matching its absence', () => {
    expect(sameOrigin('https://runcast.example', 'https://runcast.example')).toBe(true);
    expect(sameOrigin('https://runcast.example:443', 'https://runcast.example')).toBe(true);
    expect(sameOrigin('https://RUNCAST.example', 'https://runcast.example')).toBe(true);
    expect(sameOrigin('http://runcast.example', 'https://runcast.example')).toBe(false);
    expect(sameOrigin('https://runcast.example:8443', 'https://runcast.example')).toBe(false);
    expect(sameOrigin('null', 'https://runcast.example')).toBe(false);
    expect(sameOrigin('https://runcast.example', undefined)).toBe(false);
  });
});
