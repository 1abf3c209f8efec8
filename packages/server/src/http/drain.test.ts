import { once } from 'node:events';
import { Agent, createServer, request, type Server } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ConnectionDrain } from './drain.js';

let server: Server | undefined;
afterEach(async () => {
  const listening = server;
  server = undefined;
  if (!listening) return;
  listening.closeAllConnections();
  await new Promise((resolve) => listening.close(resolve));
});

type Listener = (...args: unknown[]) => void;

describe('ConnectionDrain', () => {
  it('cuts connections that never carried a request, and keeps nothing on those that did', async () => {
    const drain = new ConnectionDrain();
    const atConnection = new Map<Socket, Listener[]>();
    const served: Socket[] = [];
    server = createServer({ keepAlive: true }, (req, res) => {
      served.push(req.socket);
      res.end('ok');
    });
    drain.watch(server, false);
    server.on('connection', (socket: Socket) =>
      atConnection.set(socket, socket.listeners('close') as Listener[]),
    );
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;

    const idle = connect(port, '127.0.0.1');
    await once(idle, 'connect');
    const agent = new Agent({ keepAlive: true });
    const body = await new Promise<string>((resolve, reject) => {
      request({ port, host: '127.0.0.1', agent }, (res) => {
        res.setEncoding('utf8');
        let text = '';
        res.on('data', (chunk: string) => {
          text += chunk;
        });
        res.on('end', () => resolve(text));
      })
        .on('error', reject)
        .end();
    });
    expect(body).toBe('ok');
    // The drain's close listener left the connection at its first request (a WebSocket or a
    // stream lives for hours on it).
    const dropped = served.map((socket) => {
      const now = socket.listeners('close');
      return (atConnection.get(socket) ?? []).filter((listener) => !now.includes(listener)).length;
    });
    expect(dropped).toEqual([1]);

    const idleClosed = once(idle, 'close');
    drain.destroyUnused();
    await idleClosed;
    // The connection that carried a request is still open in the client's pool.
    expect(Object.values(agent.freeSockets).flat()).toHaveLength(1);
    agent.destroy();
  });
});
