import { io, type Socket } from 'socket.io-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  ADMIN_PASSWORD,
  makeWorld,
  startServer,
  type TestServer,
} from '../../packages/server/src/test-support/server.js';

// The test client connects over loopback, so with RUNCAST_TRUST_PROXY=loopback it plays the
// proxy: the X-Forwarded-* headers it sends are what nginx or HAProxy would send.
const PUBLIC = 'https://runcast.example';

function forwarded(extra: Record<string, string> = {}): Record<string, string> {
  return { 'x-forwarded-proto': 'https', 'x-forwarded-host': 'runcast.example', ...extra };
}

async function login(
  server: TestServer,
  headers: Record<string, string>,
  password = ADMIN_PASSWORD,
  username = 'admin',
): Promise<Response> {
  return fetch(`${server.url}/api/v1/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ username, password }),
  });
}

async function codeOf(answer: Response): Promise<string | undefined> {
  return ((await answer.json()) as { error?: { code: string } }).error?.code;
}

const sessionCookie = (answer: Response) => answer.headers.get('set-cookie')?.split(';')[0] ?? '';

describe('behind a trusted proxy (RUNCAST_TRUST_PROXY)', () => {
  let server: TestServer;
  const sockets: Socket[] = [];
  beforeAll(async () => {
    server = await startServer({ RUNCAST_TRUST_PROXY: 'loopback', RUNCAST_LOGIN_RATE_LIMIT: '3' });
  });
  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.close();
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  it('logs the dashboard in over TLS terminated by the proxy, with a Secure cookie', async () => {
    const answer = await login(server, { origin: PUBLIC, ...forwarded() });
    expect(answer.status).toBe(200);
    expect(answer.headers.get('set-cookie')).toMatch(/;\s*Secure/i);
  });

  it("takes the port from X-Forwarded-Port when the proxy's Host has none ($host)", async () => {
    const origin = `${PUBLIC}:8443`;
    expect((await login(server, { origin, ...forwarded({ 'x-forwarded-port': '8443' }) })).status).toBe(200);
    expect(
      (await login(server, { origin, ...forwarded({ 'x-forwarded-host': 'runcast.example:8443' }) })).status,
    ).toBe(200);
    const portless = await login(server, { origin, ...forwarded() });
    expect(portless.status).toBe(403);
    expect(await codeOf(portless)).toBe('ORIGIN_MISMATCH');
  });

  it('checks cookie-authenticated changes against the forwarded origin', async () => {
    const cookie = sessionCookie(await login(server, { origin: PUBLIC, ...forwarded() }));
    const create = (origin: string) =>
      fetch(`${server.url}/api/v1/projects`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', cookie, origin, ...forwarded() },
        body: JSON.stringify({ name: `from ${origin}` }),
      });
    expect((await create(PUBLIC)).status).toBe(201);
    const foreign = await create('https://evil.example');
    expect(foreign.status).toBe(403);
    expect(await codeOf(foreign)).toBe('ORIGIN_MISMATCH');
    // The scheme counts too: the page was served over https.
    expect((await create('http://runcast.example')).status).toBe(403);
  });

  it('checks the Socket.IO handshake against the forwarded origin', async () => {
    const cookie = sessionCookie(await login(server, { origin: PUBLIC, ...forwarded() }));
    const handshake = (origin: string) =>
      new Promise<string>((resolve) => {
        const socket = io(server.url, {
          transports: ['websocket'],
          reconnection: false,
          extraHeaders: { cookie, origin, ...forwarded() },
        });
        sockets.push(socket);
        socket.on('connect', () => resolve('connected'));
        socket.on('connect_error', (err) =>
          resolve((err as Error & { data?: { code: string } }).data?.code ?? ''),
        );
      });
    expect(await handshake(PUBLIC)).toBe('connected');
    expect(await handshake('https://evil.example')).toBe('ORIGIN_MISMATCH');
  });

  it('limits failed logins per real client address, not per proxy', async () => {
    const from = (address: string) => ({ 'x-forwarded-for': address });
    for (let i = 0; i < 3; i++) {
      expect((await login(server, from('198.51.100.1'), 'wrong-password', 'nobody')).status).toBe(401);
    }
    const limited = await login(server, from('198.51.100.1'));
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    // Another client behind the same proxy is not affected.
    expect((await login(server, from('198.51.100.2'))).status).toBe(200);
  });

  it('limits failed logins per username without locking its owner out', async () => {
    await makeWorld(server.url); // creates the user viewer
    const attempt = (address: string, password: string) =>
      login(server, { 'x-forwarded-for': address }, password, 'viewer');
    for (const address of ['192.0.2.1', '192.0.2.2', '192.0.2.3']) {
      expect((await attempt(address, 'wrong-password')).status).toBe(401);
    }
    // The username is under attack: an address that failed on it waits…
    expect((await attempt('192.0.2.1', 'viewer-password')).status).toBe(429);
    // …while the owner, from an address without failures, logs in.
    expect((await attempt('192.0.2.50', 'viewer-password')).status).toBe(200);
  });
});

describe('without RUNCAST_TRUST_PROXY', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startServer({ RUNCAST_LOGIN_RATE_LIMIT: '3' });
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  it('ignores forwarded scheme and host: anyone could send them', async () => {
    const answer = await login(server, { origin: PUBLIC, ...forwarded() });
    expect(answer.status).toBe(403);
    expect(await codeOf(answer)).toBe('ORIGIN_MISMATCH');
    const direct = await login(server, { origin: server.url, ...forwarded() });
    expect(direct.status).toBe(200);
    expect(direct.headers.get('set-cookie')).not.toMatch(/Secure/i);
  });

  it('ignores X-Forwarded-For: every client is the peer', async () => {
    for (let i = 0; i < 3; i++) {
      const answer = await login(server, { 'x-forwarded-for': `203.0.113.${i}` }, 'wrong-password', 'nobody');
      expect(answer.status).toBe(401);
    }
    expect((await login(server, { 'x-forwarded-for': '203.0.113.99' })).status).toBe(429);
  });
});

describe('RUNCAST_COOKIE_SECURE', () => {
  it('marks the cookie Secure even over plain HTTP', async () => {
    const server = await startServer({ RUNCAST_COOKIE_SECURE: 'true' });
    try {
      const answer = await login(server, {});
      expect(answer.headers.get('set-cookie')).toMatch(/;\s*Secure/i);
    } finally {
      await server.close();
    }
  });
});
