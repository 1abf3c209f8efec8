import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventSource } from 'eventsource';
import { io } from 'socket.io-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type Answer,
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { within } from '../support/async.js';

// Faults of the server's resources: a full disk, and clients that hold connections open by
// sending slowly. Each is answered in the contract's terms, and the server recovers by itself.

function expectError(answer: Answer, status: number, code: string): void {
  expect(answer.status, JSON.stringify(answer.body).slice(0, 300)).toBe(status);
  expect(answer.body).toEqual({ error: { code, message: expect.any(String) } });
}

async function readyz(url: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`${url}/readyz`);
  return { status: res.status, body: await res.json() };
}

/** Mounts a tmpfs of `size` on a new temp dir, or answers why it cannot (not root, no mount). */
function mountTmpfs(size: string): { dir: string } | { skip: string } {
  if (process.getuid?.() !== 0) return { skip: 'mounting a tmpfs needs root' };
  const dir = mkdtempSync(join(tmpdir(), 'runcast-full-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' });
    return { dir };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    return { skip: `mount failed: ${(err as Error).message.split('\n')[0]}` };
  }
}

/** Writes a file until the file system has no byte left. */
function fillDisk(file: string): void {
  const fd = openSync(file, 'w');
  const chunk = Buffer.alloc(256 * 1024, 1);
  try {
    for (;;) writeSync(fd, chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    closeSync(fd);
  }
}

const tmpfs = mountTmpfs('16m');

describe.skipIf('skip' in tmpfs)('a full disk', () => {
  const dataDir = 'dir' in tmpfs ? tmpfs.dir : '';
  const filler = join(dataDir, 'filler');
  let server: TestServer;
  let world: World;

  beforeAll(async () => {
    server = await startServer({ RUNCAST_DATA_DIR: join(dataDir, 'data') });
    world = await makeWorld(server.url);
  });
  afterAll(async () => {
    rmSync(filler, { force: true });
    await server?.close();
    execFileSync('umount', [dataDir]);
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('answers writes 507 STORAGE_FULL and /readyz 503, and recovers by itself when space returns', async () => {
    const runId = world.runId;
    const entries = Array.from({ length: 50 }, (_, i) => ({
      level: 'info',
      message: `line ${i} ${'x'.repeat(2000)}`,
    }));
    expect((await world.worker.patch(`/runs/${runId}/progress`, { status: 'RUNNING' })).status).toBe(200);
    const seqBefore = (await world.operator.get(`/runs/${runId}`)).body.seq;
    expect((await readyz(server.url)).status).toBe(200);

    fillDisk(filler);
    expectError(await world.worker.post(`/runs/${runId}/logs`, { entries }), 507, 'STORAGE_FULL');
    expectError(
      await world.worker.patch(`/runs/${runId}/progress`, { current_stage: 'y'.repeat(400) }),
      507,
      'STORAGE_FULL',
    );
    expectError(
      await world.anonymous.post('/auth/login', { username: 'operator', password: 'operator-password' }),
      507,
      'STORAGE_FULL',
    );
    expectError(await world.operator.post('/projects', { name: 'while full' }), 507, 'STORAGE_FULL');
    const notReady = await readyz(server.url);
    expect(notReady.status).toBe(503);
    expect(notReady.body).toEqual({ error: { code: 'STORAGE_FULL', message: expect.any(String) } });
    // Reads still answer, and nothing refused was stored.
    const during = await world.operator.get(`/runs/${runId}`);
    expect(during.status).toBe(200);
    expect(during.body.seq).toBe(seqBefore);

    rmSync(filler);
    expect((await readyz(server.url)).status).toBe(200);
    const logged = await world.worker.post(`/runs/${runId}/logs`, { entries });
    expect(logged.status, JSON.stringify(logged.body)).toBe(201);
    expect(logged.body.first_seq).toBe(seqBefore + 1);
    expect((await world.worker.patch(`/runs/${runId}/progress`, { stage: 'APPLY' })).status).toBe(200);
    expect(
      (await world.anonymous.post('/auth/login', { username: 'operator', password: 'operator-password' }))
        .status,
    ).toBe(200);
    const events = await world.operator.get(`/runs/${runId}/events?since=${seqBefore}`);
    expect(events.body.events).toHaveLength(entries.length);

    // Logged once when the disk filled, not once per refused request.
    expect(server.errorLogs.map((line) => JSON.parse(line).msg)).toEqual([
      'storage is full: writes answer 507 STORAGE_FULL until space returns',
    ]);
    server.errorLogs.length = 0;
  });
});

describe('slow requests', () => {
  const REQUEST_TIMEOUT_MS = 2000;
  let server: TestServer;
  let world: World;
  const sockets: Socket[] = [];

  beforeAll(async () => {
    server = await startServer({
      RUNCAST_REQUEST_TIMEOUT_MS: String(REQUEST_TIMEOUT_MS),
      RUNCAST_HEADERS_TIMEOUT_MS: '1000',
      RUNCAST_SSE_KEEPALIVE_MS: '500',
    });
    world = await makeWorld(server.url);
  });
  afterAll(async () => {
    for (const socket of sockets) socket.destroy();
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  /**
   * A connection that sends `head` and then one byte of `trickle` every 200 ms; resolves with what
   * the server sent once the server closes it.
   */
  function slowClient(head: string, trickle: string): Promise<string> {
    const { hostname, port } = new URL(server.url);
    const socket = connect(Number(port), hostname);
    sockets.push(socket);
    const received: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    return new Promise<string>((resolve) => {
      socket.on('data', (chunk) => received.push(chunk));
      socket.on('error', () => {});
      socket.on('close', () => {
        clearInterval(timer);
        resolve(Buffer.concat(received).toString('utf8'));
      });
      socket.write(head);
      let sent = 0;
      timer = setInterval(() => {
        if (sent < trickle.length && socket.writable) socket.write(trickle[sent++]!);
      }, 200);
    });
  }

  it('cuts bodies and headers sent byte by byte, and leaves SSE, long-polls and WebSockets open', async () => {
    const runId = world.runId;
    const token = world.worker.token!;
    const started = Date.now();

    // Long-lived responses, opened alongside the slow requests: none may be cut.
    const seq = (await world.operator.get(`/runs/${runId}`)).body.seq;
    const longPoll = world.operator.get(`/runs/${runId}/progress?since=${seq}&wait=5`);
    const keepalives: number[] = [];
    const es = new EventSource(`${server.url}/api/v1/runs/${runId}/stream`, {
      fetch: (input, init) =>
        fetch(input, { ...init, headers: { ...init?.headers, authorization: `Bearer ${token}` } }),
    });
    es.addEventListener('keepalive', () => keepalives.push(Date.now()));
    const socket = io(server.url, {
      transports: ['websocket'],
      auth: { token },
      reconnection: false,
      forceNew: true,
    });
    let socketDisconnected = false;
    socket.on('disconnect', () => {
      socketDisconnected = true;
    });

    const body = JSON.stringify({ level: 'info', message: 'x'.repeat(60) });
    const slowBodies = Array.from({ length: 5 }, () =>
      slowClient(
        `POST /api/v1/runs/${runId}/logs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`,
        body,
      ),
    );
    const slowHeaders = Array.from({ length: 3 }, () =>
      slowClient('GET /healthz HTTP/1.1\r\n', 'X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n'),
    );

    const answers = await within(
      Promise.all([...slowBodies, ...slowHeaders]),
      15_000,
      'the server to close slow requests',
    );
    for (const raw of answers) {
      // Cut with the contract's 408, long before the trickle would have ended.
      expect(raw).toMatch(/^HTTP\/1\.1 408 /);
      expect(JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4))).toEqual({
        error: { code: 'REQUEST_TIMEOUT', message: expect.any(String) },
      });
    }

    // The long-poll waited out its 5 s, well past the request timeout, and answered as usual.
    const polled = await longPoll;
    expect(polled.status).toBe(304);
    expect(Date.now() - started).toBeGreaterThan(REQUEST_TIMEOUT_MS);
    expect(es.readyState).toBe(EventSource.OPEN);
    expect(keepalives.filter((at) => at - started > REQUEST_TIMEOUT_MS).length).toBeGreaterThan(0);
    expect(socket.connected).toBe(true);
    expect(socketDisconnected).toBe(false);
    es.close();
    socket.close();

    const seqAfter = (await world.operator.get(`/runs/${runId}`)).body.seq;
    expect(seqAfter).toBe(seq);
  });
});
