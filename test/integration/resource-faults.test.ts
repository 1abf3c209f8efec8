import { connect, type Socket } from 'node:net';
import { EventSource } from 'eventsource';
import { io } from 'socket.io-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { within } from '../support/async.js';

// Faults of the server's resources: clients that hold connections open by sending slowly. Each is
// answered in the contract's terms.

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
