import { connect, createServer, type Server, type Socket } from 'node:net';

/** Bytes that crossed the relay since the last reset, each way, and the HTTP requests among them. */
export interface ByteCount {
  /** Server to client: response heads and bodies, WebSocket frames, TLS-free, as on the wire. */
  down: number;
  /** Client to server. */
  up: number;
  /** HTTP requests that went up (a request line seen at the start of a client write). */
  requests: number;
}

const REQUEST_LINE = /^(GET|POST|PATCH|PUT|DELETE|HEAD|OPTIONS) \//;

/**
 * A TCP relay on loopback in front of a server that counts every byte each way: what a client
 * costs on the network, headers and framing included, whatever its transport.
 */
export class ByteRelay {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private count: ByteCount = { down: 0, up: 0, requests: 0 };

  private constructor(
    private readonly targetPort: number,
    readonly port: number,
    server: Server,
  ) {
    this.server = server;
  }

  /** A relay to `127.0.0.1:targetPort` on a free port. */
  static async start(targetPort: number): Promise<ByteRelay> {
    let relay: ByteRelay | undefined;
    const server = createServer((client) => relay?.accept(client));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('the relay has no port');
    relay = new ByteRelay(targetPort, address.port, server);
    return relay;
  }

  /** The count since the last reset; resets it. */
  take(): ByteCount {
    const taken = this.count;
    this.count = { down: 0, up: 0, requests: 0 };
    return taken;
  }

  private accept(client: Socket): void {
    const upstream = connect({ host: '127.0.0.1', port: this.targetPort });
    this.sockets.add(client);
    this.sockets.add(upstream);
    client.on('data', (data: Buffer) => {
      this.count.up += data.length;
      if (REQUEST_LINE.test(data.toString('latin1', 0, 8))) this.count.requests++;
      upstream.write(data);
    });
    upstream.on('data', (data: Buffer) => {
      this.count.down += data.length;
      client.write(data);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      this.sockets.delete(client);
      this.sockets.delete(upstream);
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', end);
    upstream.on('error', end);
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
