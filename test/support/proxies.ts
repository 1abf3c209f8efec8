import { createServer as createHttpServer, request as httpRequest, type Server } from 'node:http';
import { connect, createServer as createTcpServer, type Socket } from 'node:net';

/** A misbehaving network between a client and the server, on loopback. */
export interface HttpProxy {
  url: string;
  /** Refuse WebSocket upgrades (a corporate proxy that breaks WebSockets). */
  blockWebSocket: boolean;
  /** Hold back `text/event-stream` bodies until they end (a reverse proxy that buffers). */
  bufferEventStreams: boolean;
  close(): Promise<void>;
}

/** An HTTP proxy to `target` (http://127.0.0.1:port) whose misbehaviour the test switches. */
export async function startHttpProxy(target: string): Promise<HttpProxy> {
  const upstream = new URL(target);
  const sockets = new Set<Socket>();
  const proxy: HttpProxy = {
    url: '',
    blockWebSocket: false,
    bufferEventStreams: false,
    close: () => closeServer(server, sockets),
  };
  const server: Server = createHttpServer((req, res) => {
    const forwarded = httpRequest(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
      },
      (upstreamRes) => {
        const isStream = (upstreamRes.headers['content-type'] ?? '').includes('text/event-stream');
        res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.headers);
        if (isStream && proxy.bufferEventStreams) {
          // Everything is held until the upstream response ends — which a live stream never does.
          const held: Buffer[] = [];
          upstreamRes.on('data', (chunk: Buffer) => held.push(chunk));
          upstreamRes.on('end', () => res.end(Buffer.concat(held)));
        } else {
          upstreamRes.pipe(res);
        }
        res.on('close', () => upstreamRes.destroy());
      },
    );
    forwarded.on('error', () => res.destroy());
    req.pipe(forwarded);
    res.on('close', () => forwarded.destroy());
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('upgrade', (req, socket, head) => {
    if (proxy.blockWebSocket) {
      socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    const out = connect(Number(upstream.port), upstream.hostname, () => {
      let head1 = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2)
        head1 += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      out.write(`${head1}\r\n`);
      if (head.length > 0) out.write(head);
      out.pipe(socket);
      socket.pipe(out);
    });
    sockets.add(out);
    out.on('close', () => {
      sockets.delete(out);
      socket.destroy();
    });
    out.on('error', () => socket.destroy());
    socket.on('error', () => out.destroy());
    socket.on('close', () => out.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  proxy.url = `http://127.0.0.1:${address.port}`;
  return proxy;
}

/** A TCP proxy that cuts every connection after a random lifetime. */
export interface ChaosProxy {
  url: string;
  /** Connections cut so far. */
  readonly cuts: number;
  /** Stop cutting (the network heals). */
  heal(): void;
  close(): Promise<void>;
}

export async function startChaosProxy(
  targetPort: number,
  lifetimeMs: { min: number; max: number },
  random: () => number = Math.random,
): Promise<ChaosProxy> {
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let cuts = 0;
  let healed = false;
  const server = createTcpServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    sockets.add(client);
    sockets.add(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', () => {
      sockets.delete(client);
      end();
    });
    upstream.on('close', () => {
      sockets.delete(upstream);
      end();
    });
    if (!healed) {
      const timer = setTimeout(
        () => {
          timers.delete(timer);
          if (healed || client.destroyed) return;
          cuts += 1;
          end();
        },
        lifetimeMs.min + random() * (lifetimeMs.max - lifetimeMs.min),
      );
      timers.add(timer);
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  return {
    url: `http://127.0.0.1:${address.port}`,
    get cuts() {
      return cuts;
    },
    heal() {
      healed = true;
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
    },
    async close() {
      healed = true;
      for (const timer of timers) clearTimeout(timer);
      await closeServer(server, sockets);
    },
  };
}

/**
 * A TCP proxy whose answers trickle at about `bytesPerS` (what the client sends passes freely):
 * makes a fast local server a slow remote one, such as a large git repository far away.
 */
export async function startSlowProxy(
  targetPort: number,
  bytesPerS: number,
): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createTcpServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => socket.destroy());
      socket.on('close', () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.on('data', (chunk: Buffer) => {
      client.write(chunk);
      upstream.pause();
      setTimeout(() => upstream.resume(), (chunk.length / bytesPerS) * 1000);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no port');
  return { port: address.port, close: () => closeServer(server, sockets) };
}

function closeServer(
  server: Server | ReturnType<typeof createTcpServer>,
  sockets: Set<Socket>,
): Promise<void> {
  for (const socket of sockets) socket.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}
