import type { Server as HttpServer } from 'node:http';
import { SOCKET_EVENTS, type SubscribeAck, SubscribeRequest } from '@runcast/protocol';
import { Server, type Socket } from 'socket.io';
import { Compile } from 'typebox/compile';
import type { Authenticator, Credentials } from '../auth/authenticator.js';
import { originAllowed } from '../auth/plugin.js';
import type { Policy } from '../auth/policy.js';
import type { Principal } from '../auth/principal.js';
import { AppError } from '../errors.js';
import type { ProxyTrust } from '../http/proxy-trust.js';
import type { Metrics } from '../metrics.js';
import type { EncodedEvent } from './encoded-event.js';
import type { Hub } from './hub.js';
import {
  BoundedDeflateServer,
  DEFLATE_WINDOW_BITS,
  engineOf,
  type SocketWriter,
  socketWriterFor,
} from './socket-writer.js';
import { failureOf } from './sse.js';
import type { DisconnectReason, RunFailure, Sink, Subscriber } from './subscriber.js';

export interface SocketGatewayOptions {
  hub: Hub;
  policy: Policy;
  authenticator: Authenticator;
  metrics: Metrics;
  allowedOrigins: readonly string[];
  /** Whose forwarded scheme and host name the server's own origin, as for HTTP routes. */
  proxyTrust: ProxyTrust;
  /** Parses a Cookie header the way the HTTP routes do. */
  parseCookies: (header: string) => Record<string, string>;
  /** `<base path>/socket.io`. */
  path: string;
  /** Heartbeat: a ping every interval; no pong within the timeout closes the connection. */
  pingIntervalMs: number;
  pingTimeoutMs: number;
  /** Per-message deflate for clients that offer it. */
  compression: boolean;
}

/**
 * Per-message deflate as negotiated: a 1 KB server window (server_max_window_bits, announced to
 * the client), which the shared compressed frames use; the client compresses each message on its
 * own (client_no_context_takeover) with at most a 512-byte window, so the server inflates it with
 * an inflater it then frees (see `BoundedDeflateServer`).
 */
const PER_MESSAGE_DEFLATE = {
  serverMaxWindowBits: DEFLATE_WINDOW_BITS,
  clientNoContextTakeover: true,
  clientMaxWindowBits: 9,
};

interface SocketData {
  principal: Principal;
  /** The handshake's credentials, checked again at every subscribe. */
  credentials: Credentials;
  /** Set once connected: the connection as a Hub sink, its subscriber, and its flush. */
  sink: SocketSink;
  subscriber: Subscriber;
  flush: () => void;
}
type GatewaySocket = Socket<Record<string, never>, Record<string, never>, Record<string, never>, SocketData>;

/** One Socket.IO socket as a Hub sink. */
class SocketSink implements Sink {
  readonly transport = 'websocket' as const;

  constructor(
    private readonly socket: Socket,
    /** Prebuilt frames, or ws's compressor when the connection negotiated per-message deflate. */
    private readonly writer: SocketWriter,
  ) {}

  isBusy(): boolean {
    return this.writer.isBusy();
  }

  write(events: readonly EncodedEvent[]): void {
    this.writer.write(events);
  }

  runEnded(): void {}

  runFailed(runId: string, failure: RunFailure): void {
    this.socket.emit(SOCKET_EVENTS.runEvent, { run_id: runId, type: 'error', error: failure });
  }

  close(reason: DisconnectReason): void {
    if (reason === 'ACCESS_ENDED') {
      // A server-side disconnect: Socket.IO clients do not reconnect by themselves after it.
      this.socket.disconnect(true);
      return;
    }
    if (reason === 'SERVER_SHUTDOWN') this.socket.emit(SOCKET_EVENTS.reconnect, { reason });
    // Closing the transport (rather than a server-side `disconnect`) makes clients reconnect.
    engineOf(this.socket).close(reason === 'SLOW_CONSUMER');
  }
}

const validSubscribe = Compile(SubscribeRequest);

function refusal(err: unknown): SubscribeAck {
  return { ok: false, error: failureOf(err) };
}

/** The Socket.IO gateway on the server's HTTP server, WebSocket transport only. */
export function attachSocketGateway(httpServer: HttpServer, options: SocketGatewayOptions): Server {
  const { hub, policy, authenticator, metrics } = options;
  const io = new Server<Record<string, never>, Record<string, never>, Record<string, never>, SocketData>(
    httpServer,
    {
      path: options.path,
      transports: ['websocket'],
      // A proxy that cuts idle connections sooner than the ping interval needs a shorter one.
      pingInterval: options.pingIntervalMs,
      pingTimeout: options.pingTimeoutMs,
      serveClient: false,
      perMessageDeflate: options.compression ? PER_MESSAGE_DEFLATE : false,
      wsEngine: BoundedDeflateServer,
    },
  );

  io.use((socket, next) => {
    const handshake = socket.handshake;
    const auth = (handshake.auth ?? {}) as Record<string, unknown>;
    const cookieHeader = handshake.headers.cookie;
    const credentials: Credentials = {
      authorization: handshake.headers.authorization,
      token: typeof auth.token === 'string' ? auth.token : undefined,
      cookies: cookieHeader ? options.parseCookies(cookieHeader) : undefined,
    };
    authenticator
      .authenticate(credentials)
      .then((principal) => {
        if (!principal) throw new AppError('UNAUTHORIZED', 'send a token in the handshake auth or log in');
        // Browsers send Origin with every WebSocket handshake; a cookie without one is refused.
        if (
          principal.via === 'cookie' &&
          (handshake.headers.origin === undefined ||
            !originAllowed(socket.request, options.proxyTrust, options.allowedOrigins))
        ) {
          throw new AppError('ORIGIN_MISMATCH', 'cross-origin socket refused');
        }
        socket.data.principal = principal;
        socket.data.credentials = credentials;
        metrics.recordClientReport(auth.transport ?? 'websocket', auth.fallback_from, auth.fallback_reason);
        next();
      })
      .catch((err: unknown) => {
        const error = err instanceof AppError ? err : new AppError('UNAUTHORIZED', 'authentication failed');
        next(Object.assign(new Error(error.message), { data: { code: error.code } }));
      });
  });

  // One function per event for every connection (`this` is the socket): a connection holds its
  // state in `socket.data`, not in closures of its own.
  function onSubscribe(this: GatewaySocket, payload: unknown, ack: unknown): void {
    const answer = typeof ack === 'function' ? (ack as (reply: SubscribeAck) => void) : () => {};
    if (!validSubscribe.Check(payload)) {
      answer({
        ok: false,
        error: { code: 'INVALID_INPUT', message: 'subscribe takes {run_id, since?, delta?}' },
      });
      return;
    }
    const { run_id, since, delta } = payload;
    const { subscriber, sink } = this.data;
    // Checked again at every subscribe: credentials that ended since the handshake open nothing.
    authenticator
      .authenticate(this.data.credentials)
      .then((principal) => {
        if (!principal) throw new AppError('UNAUTHORIZED', 'log in again');
        return policy.requireRun(principal, run_id);
      })
      .then(() =>
        hub.open(
          subscriber,
          run_id,
          since,
          {
            // First the missed logs, then the snapshot (the ack), then live events.
            logs: (events) => sink.write(events),
            snapshot: (event) => answer({ ok: true, snapshot: event }),
          },
          { delta: delta === true },
        ),
      )
      .catch((err: unknown) => answer(refusal(err)));
  }
  function onUnsubscribe(this: GatewaySocket, payload: unknown): void {
    const runId = (payload as { run_id?: unknown } | null)?.run_id;
    if (typeof runId === 'string') hub.unsubscribe(this.data.subscriber, runId);
  }
  function onDisconnect(this: GatewaySocket): void {
    engineOf(this).transport.off('ready', this.data.flush);
    hub.detach(this.data.subscriber);
  }

  io.on('connection', (socket) => {
    // What the Hub queued while a write was in flight, or engine.io was writing, goes out once
    // the connection can take it.
    const flush = () => subscriber.flush();
    const sink = new SocketSink(socket, socketWriterFor(socket, flush));
    const subscriber = hub.attach(sink, socket.data.principal);
    Object.assign(socket.data, { sink, subscriber, flush });
    engineOf(socket).transport.on('ready', flush);
    // Socket.IO puts every socket in a room of its own id, a Set per connection; the gateway never
    // addresses a socket by room (the Hub writes to each subscriber), so it leaves it. This holds
    // while the gateway uses neither `socket.broadcast`/`socket.to` (which skip the sender by
    // that room) nor connection state recovery (with which `socket.emit` goes through it).
    void socket.leave(socket.id);
    socket.on('disconnect', onDisconnect);
    socket.on(SOCKET_EVENTS.subscribe, onSubscribe);
    socket.on(SOCKET_EVENTS.unsubscribe, onUnsubscribe);
  });

  return io;
}
