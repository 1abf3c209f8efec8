import type { Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

/** Resolves when `done()` holds, checking every 20 ms, or after `timeoutMs` whatever happens. */
export async function waitUntil(done: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!done() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
}

/**
 * What a graceful shutdown waits for and cuts: streaming responses still flushing their last
 * bytes (the "reconnect" frame), and connections a client opened but never used — a browser's
 * preconnect or a fetch pool keeps those, and `server.close()` would wait on them for minutes.
 */
export class ConnectionDrain {
  private readonly streams = new Set<ServerResponse>();
  private readonly unused = new Set<Socket>();

  /**
   * Starts watching the server's connections. Upgrades are watched only when something serves
   * them: an `upgrade` listener of our own would leave unserved upgrade requests hanging.
   */
  watch(server: Server, upgrades: boolean): void {
    const unused = this.unused;
    // One listener for every connection, taken off at its first request: a connection that
    // lives for hours (a WebSocket, a stream) keeps nothing of the drain's.
    function closedUnused(this: Socket): void {
      unused.delete(this);
    }
    const used = (request: { socket: Socket }): void => {
      const socket = request.socket;
      if (unused.delete(socket)) socket.off('close', closedUnused);
    };
    server.on('connection', (socket: Socket) => {
      unused.add(socket);
      socket.on('close', closedUnused);
    });
    server.on('request', used);
    if (upgrades) server.on('upgrade', used);
  }

  /** A long-lived response (an SSE stream) that shutdown must let finish writing. */
  track(response: ServerResponse): void {
    this.streams.add(response);
    response.once('close', () => this.streams.delete(response));
    response.once('finish', () => this.streams.delete(response));
  }

  /** Waits (bounded) until every tracked stream has flushed its end. */
  streamsFlushed(timeoutMs: number): Promise<void> {
    return waitUntil(() => this.streams.size === 0, timeoutMs);
  }

  /** Closes connections that never carried a request. */
  destroyUnused(): void {
    for (const socket of this.unused) socket.destroy();
    this.unused.clear();
  }
}
