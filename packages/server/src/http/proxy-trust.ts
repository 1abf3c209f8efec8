import type { IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';

/**
 * RUNCAST_TRUST_PROXY: nobody (false), every peer (true), the nearest N hops, or the proxies at
 * these addresses and subnets.
 */
export type TrustProxy = boolean | number | readonly string[];

/** Names accepted in an address list, for the ranges proxies usually sit in. */
const NAMED_RANGES: Record<string, readonly string[]> = {
  loopback: ['127.0.0.0/8', '::1/128'],
  linklocal: ['169.254.0.0/16', 'fe80::/10'],
  uniquelocal: ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', 'fc00::/7'],
};

/**
 * Node reports an IPv4 peer of a dual-stack socket as `::ffff:a.b.c.d`; subnets are written in
 * plain IPv4, so the address is compared in that form.
 */
function plainAddress(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped?.[1] ?? address;
}

/** Adds `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or subnet, or a range name to `list`. */
function addEntry(list: BlockList, entry: string): void {
  const named = NAMED_RANGES[entry];
  if (named) {
    for (const range of named) addEntry(list, range);
    return;
  }
  const [address = '', prefix, extra] = entry.split('/');
  const family = isIP(address);
  const maxPrefix = family === 4 ? 32 : 128;
  const bits = prefix === undefined ? maxPrefix : /^\d{1,3}$/.test(prefix) ? Number(prefix) : -1;
  if (family === 0 || extra !== undefined || bits < 0 || bits > maxPrefix) {
    throw new Error(`"${entry}" is not an IP address, a CIDR subnet or loopback/linklocal/uniquelocal`);
  }
  list.addSubnet(address, bits, family === 4 ? 'ipv4' : 'ipv6');
}

/** Parses RUNCAST_TRUST_PROXY; throws an Error naming the bad entry. */
export function parseTrustProxy(raw: string | undefined): TrustProxy {
  const value = (raw ?? '').trim();
  if (value === '' || /^(0|false|no|off)$/i.test(value)) return false;
  if (/^(true|yes|on)$/i.test(value)) return true;
  if (/^\d+$/.test(value)) return Number(value);
  const entries = value.split(',').map((entry) => entry.trim());
  // Parsed once here so that a typo stops the server at start-up.
  for (const entry of entries) addEntry(new BlockList(), entry);
  return entries;
}

function lastEntry(header: string | string[] | undefined): string | undefined {
  const value = Array.isArray(header) ? header.join(',') : header;
  if (value === undefined) return undefined;
  const last = value.slice(value.lastIndexOf(',') + 1).trim();
  return last === '' ? undefined : last;
}

/**
 * Whose `X-Forwarded-*` headers count. One instance serves Fastify (its `trustProxy` function,
 * hence `request.ip`) and the Socket.IO handshake, which Fastify never sees, so that both read a
 * request the same way.
 */
export class ProxyTrust {
  /** Fastify's `trustProxy` function: is the sender of hop `hop` (0 = the peer) a trusted proxy? */
  readonly trusts: (address: string, hop: number) => boolean;

  constructor(setting: TrustProxy) {
    if (setting === true) this.trusts = () => true;
    else if (setting === false) this.trusts = () => false;
    else if (typeof setting === 'number') this.trusts = (_address, hop) => hop < setting;
    else {
      const list = new BlockList();
      for (const entry of setting) addEntry(list, entry);
      this.trusts = (address) => {
        const plain = plainAddress(address);
        const family = isIP(plain);
        return family !== 0 && list.check(plain, family === 4 ? 'ipv4' : 'ipv6');
      };
    }
  }

  private peerTrusted(request: IncomingMessage): boolean {
    const peer = request.socket.remoteAddress;
    return peer !== undefined && this.trusts(peer, 0);
  }

  /**
   * The client's address: walking from the peer back through `X-Forwarded-For`, the first hop
   * not sent by a trusted proxy (the way Fastify computes `request.ip` from the same function).
   */
  clientAddress(request: IncomingMessage): string {
    const forwardedFor = request.headers['x-forwarded-for'];
    const hops = [request.socket.remoteAddress ?? ''];
    if (forwardedFor !== undefined) {
      const list = Array.isArray(forwardedFor) ? forwardedFor.join(',') : forwardedFor;
      hops.push(
        ...list
          .split(',')
          .map((hop) => hop.trim())
          .reverse(),
      );
    }
    for (let hop = 0; hop < hops.length - 1; hop++) {
      if (!this.trusts(hops[hop] ?? '', hop)) return hops[hop] ?? '';
    }
    return hops[hops.length - 1] ?? '';
  }

  /** The scheme the client used: `X-Forwarded-Proto` from a trusted peer, else this connection's. */
  protocol(request: IncomingMessage): 'http' | 'https' {
    if (this.peerTrusted(request)) {
      const forwarded = lastEntry(request.headers['x-forwarded-proto'])?.toLowerCase();
      if (forwarded === 'http' || forwarded === 'https') return forwarded;
    }
    return (request.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
  }

  /**
   * The origin the client addressed — scheme, host and port — or undefined when the host is
   * unusable. From a trusted peer, `X-Forwarded-Host` replaces `Host`, and `X-Forwarded-Port`
   * supplies the port a proxy's `Host` (nginx's `$host`) leaves out.
   */
  origin(request: IncomingMessage): string | undefined {
    const trusted = this.peerTrusted(request);
    let host = (trusted ? lastEntry(request.headers['x-forwarded-host']) : undefined) ?? request.headers.host;
    if (host === undefined || host === '') return undefined;
    const port = trusted ? lastEntry(request.headers['x-forwarded-port']) : undefined;
    if (port !== undefined && /^\d{1,5}$/.test(port) && !/:\d*$/.test(host.replace(/^\[[^\]]*\]/, ''))) {
      host = `${host}:${port}`;
    }
    try {
      const url = new URL(`${this.protocol(request)}://${host}`);
      // Anything besides a host and a port (a path, credentials) is not a Host header.
      if (url.pathname !== '/' || url.username !== '' || url.search !== '') return undefined;
      return url.origin;
    } catch {
      return undefined;
    }
  }
}

/**
 * True when `origin` (an `Origin` header) names the same scheme, host and port as `own`; a
 * default port matches its absence (`https://example.com` is `https://example.com:443`).
 */
export function sameOrigin(origin: string, own: string | undefined): boolean {
  if (own === undefined) return false;
  try {
    return new URL(origin).origin === own;
  } catch {
    return false;
  }
}
