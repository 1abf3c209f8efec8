import {
  Agent,
  createServer,
  type IncomingMessage,
  request,
  type Server,
  type ServerResponse,
} from 'node:http';
import { connect, type Socket } from 'node:net';

/** What the proxy does with a WebSocket upgrade. */
export type WebSocketBehaviour =
  /** Relays it both ways, as a proxy configured for WebSockets does. */
  | 'relay'
  /** Answers 403: a proxy that forbids upgrades. */
  | 'refuse'
  /** Relays the server's 101, then closes both sides: some corporate proxies do this. */
  | 'close-after-upgrade'
  /** Relays the server's 101, then nothing more either way: the connection looks open and is dead. */
  | 'black-hole';

/** How the network between a viewer and the server misbehaves. */
export interface NetworkBehaviour {
  webSocket: WebSocketBehaviour;
  /**
   * Holds `text/event-stream` bodies back until this many bytes are held or the stream ends, like
   * a reverse proxy whose response buffering is on. Absent: streams are relayed as they come.
   */
  bufferEventStreamBytes?: number;
  /**
   * Cuts any connection on which no byte moved either way for this long, like HAProxy's
   * `timeout client` / `timeout server`: a request still waiting for its answer gets 504, an
   * answer under way or a WebSocket is closed.
   */
  idleTimeoutMs?: number;
}

/** What the proxy saw and did. */
export interface NetworkProxyStats {
  requests: number;
  upgrades: number;
  /** Requests, streams and WebSockets cut for being idle (idle keep-alive sockets not counted). */
  idleCuts: number;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade']);
const HEAD_END = Buffer.from('\r\n\r\n');

function endToEnd(headers: IncomingMessage['headers']): IncomingMessage['headers'] {
  const out: IncomingMessage['headers'] = {};
  for (const [name, value] of Object.entries(headers)) if (!HOP_BY_HOP.has(name)) out[name] = value;
  return out;
}

/** An HTTP proxy on loopback in front of the Runcast server, misbehaving as `behaviour` says. */
export class NetworkProxy {
  readonly stats: NetworkProxyStats = { requests: 0, upgrades: 0, idleCuts: 0 };
  private readonly sockets = new Set<Socket>();
  /** The answer each client socket is waiting for or receiving, to tell a 504 from a cut. */
  private readonly inFlight = new WeakMap<Socket, ServerResponse>();
  /** Client sockets that became WebSocket tunnels: their idle cuts are counted where they are set up. */
  private readonly tunnels = new WeakSet<Socket>();
  private readonly agent = new Agent({ keepAlive: true });
  private readonly server: Server;
  private port = 0;

  private constructor(
    private readonly targetPort: number,
    private readonly behaviour: NetworkBehaviour,
  ) {
    this.server = createServer((req, res) => this.forward(req, res));
    this.server.on('connection', (socket: Socket) => this.track(socket));
    this.server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) =>
      this.upgrade(req, socket, head),
    );
    const idleMs = behaviour.idleTimeoutMs;
    if (idleMs !== undefined) this.server.setTimeout(idleMs, (socket: Socket) => this.onIdle(socket));
  }

  /** Listens on a free loopback port in front of `127.0.0.1:<targetPort>`. */
  static async start(targetPort: number, behaviour: NetworkBehaviour): Promise<NetworkProxy> {
    const proxy = new NetworkProxy(targetPort, behaviour);
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    const address = proxy.server.address();
    if (address === null || typeof address === 'string') throw new Error('the proxy has no port');
    proxy.port = address.port;
    return proxy;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Closes every connection and stops listening. */
  close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    this.agent.destroy();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private track(socket: Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
  }

  private forward(req: IncomingMessage, res: ServerResponse): void {
    this.stats.requests += 1;
    this.inFlight.set(req.socket, res);
    res.on('close', () => {
      if (this.inFlight.get(req.socket) === res) this.inFlight.delete(req.socket);
    });
    const upstream = request(
      {
        host: '127.0.0.1',
        port: this.targetPort,
        method: req.method,
        path: req.url,
        headers: endToEnd(req.headers),
        agent: this.agent,
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, endToEnd(answer.headers));
        const held = this.behaviour.bufferEventStreamBytes;
        if (held !== undefined && (answer.headers['content-type'] ?? '').includes('text/event-stream')) {
          res.flushHeaders();
          this.holdBack(answer, res, held);
        } else {
          answer.pipe(res);
        }
        res.on('close', () => answer.destroy());
      },
    );
    upstream.on('error', () => {
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    res.on('close', () => upstream.destroy());
    req.pipe(upstream);
  }

  /** Relays `answer` in blocks of `limit` bytes, and what is left when it ends. */
  private holdBack(answer: IncomingMessage, res: ServerResponse, limit: number): void {
    let held: Buffer[] = [];
    let size = 0;
    const release = () => {
      if (size > 0) res.write(Buffer.concat(held));
      held = [];
      size = 0;
    };
    answer.on('data', (chunk: Buffer) => {
      held.push(chunk);
      size += chunk.length;
      if (size >= limit) release();
    });
    answer.on('end', () => {
      release();
      res.end();
    });
  }

  private onIdle(socket: Socket): void {
    if (this.tunnels.has(socket)) return;
    const res = this.inFlight.get(socket);
    if (!res) {
      // An idle keep-alive connection between requests: closed, as proxies do, but no one waited.
      socket.destroy();
      return;
    }
    this.stats.idleCuts += 1;
    if (res.headersSent) socket.destroy();
    else res.writeHead(504, { 'content-type': 'text/plain', connection: 'close' }).end('idle timeout');
  }

  private upgrade(req: IncomingMessage, client: Socket, head: Buffer): void {
    this.stats.upgrades += 1;
    this.tunnels.add(client);
    const mode = this.behaviour.webSocket;
    if (mode === 'refuse') {
      client.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
      return;
    }
    const server = connect(this.targetPort, '127.0.0.1');
    this.track(server);
    const closeBoth = () => {
      client.destroy();
      server.destroy();
    };
    client.on('error', closeBoth);
    server.on('error', closeBoth);
    const idleMs = this.behaviour.idleTimeoutMs;
    if (idleMs !== undefined) {
      for (const side of [client, server]) {
        side.setTimeout(idleMs, () => {
          if (client.destroyed) return;
          this.stats.idleCuts += 1;
          closeBoth();
        });
      }
    }
    let requestHead = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
    for (let i = 0; i < req.rawHeaders.length; i += 2)
      requestHead += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
    server.write(`${requestHead}\r\n`);
    if (head.length > 0) server.write(head);
    if (mode === 'relay') {
      server.pipe(client);
      client.pipe(server);
      server.on('close', () => client.destroy());
      client.on('close', () => server.destroy());
      return;
    }
    // Only the server's answer to the upgrade gets through; what follows it is dropped.
    let answer = Buffer.alloc(0);
    let answered = false;
    client.on('data', () => {});
    client.on('close', () => server.destroy());
    server.on('data', (chunk: Buffer) => {
      if (answered) return;
      answer = Buffer.concat([answer, chunk]);
      const end = answer.indexOf(HEAD_END);
      if (end < 0) return;
      answered = true;
      client.write(answer.subarray(0, end + HEAD_END.length));
      if (mode === 'close-after-upgrade') {
        client.end();
        server.destroy();
      }
    });
  }
}
