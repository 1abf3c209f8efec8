import type { Server as HttpServer } from 'node:http';
import { SOCKET_EVENTS, type SubscribeAck, SubscribeRequest } from '@runcast/protocol';
import { Server, type Socket } from 'socket.io';
import { Encoder, PacketType } from 'socket.io-parser';
import { Compile } from 'typebox/compile';
import * as ws from 'ws';
import type { Authenticator, Credentials } from '../auth/authenticator.js';
import { originAllowed } from '../auth/plugin.js';
import type { Policy } from '../auth/policy.js';
import type { Principal } from '../auth/principal.js';
import { AppError } from '../errors.js';
import type { ProxyTrust } from '../http/proxy-trust.js';
import type { Metrics } from '../metrics.js';
import type { EncodedEvent } from './encoded-event.js';
import type { Hub } from './hub.js';
import { failureOf } from './sse.js';
import type { DisconnectReason, RunFailure, Sink } from './subscriber.js';

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
}

interface SocketData {
  principal: Principal;
  /** The handshake's credentials, checked again at every subscribe. */
  credentials: Credentials;
}

// Internals of socket.io / engine.io / ws this gateway relies on, named in one place. Events go
// out the way Socket.IO's own broadcast sends a pre-encoded packet (`adapter.broadcast` →
// engine.io's WebSocket transport → `ws` `Sender.sendFrame` with a frame built once, see
// websockets/ws#617), minus the per-socket packet objects and events of the layers between.
interface EngineSocket {
  readyState: string;
  writeBuffer: unknown[];
  transport: {
    writable: boolean;
    /** The `ws` WebSocket of engine.io's WebSocket transport. */
    socket?: WsSocket;
    on(event: 'ready', fn: () => void): void;
    off(event: 'ready', fn: () => void): void;
  };
  close(discard?: boolean): void;
}
interface WsSocket {
  readyState: number;
  _sender?: FrameSender;
}
interface FrameSender {
  sendFrame(list: readonly Buffer[], cb?: (err?: Error) => void): void;
}
interface FrameBuilder {
  frame(
    data: Buffer,
    options: { readOnly: boolean; mask: boolean; rsv1: boolean; opcode: number; fin: boolean },
  ): Buffer[];
}

const encoder = new Encoder();
// ws's module exports Sender (its frame builder); its type declarations do not list it.
const senderOf = (ws as unknown as { Sender: FrameBuilder }).Sender;
const TEXT_FRAME = { readOnly: false, mask: false, rsv1: false, opcode: 1, fin: true };
const WS_OPEN = 1;

/**
 * The `run_event` packet of an event as one WebSocket text frame, built once for every socket:
 * header and payload in one buffer, so that each socket's write is one `write`, not a `writev`.
 */
export function socketFrame(event: EncodedEvent): readonly Buffer[] {
  if (event.socketFrame) return event.socketFrame;
  // An event is JSON: it encodes into one packet (only binary attachments would add more).
  const [packet] = encoder.encode({
    type: PacketType.EVENT,
    nsp: '/',
    data: [SOCKET_EVENTS.runEvent, event.event],
  }) as string[];
  // "4" is Engine.IO's "message" packet type.
  const frame = [Buffer.concat(senderOf.frame(Buffer.from(`4${packet}`), TEXT_FRAME))];
  event.socketFrame = frame;
  return frame;
}

/** One Socket.IO socket as a Hub sink. */
class SocketSink implements Sink {
  readonly transport = 'websocket' as const;
  private readonly engine: EngineSocket;
  private readonly ws: WsSocket;
  private readonly sender: FrameSender;
  /** A frame of ours is still being handed to the kernel; `drained` follows when it is. */
  private writing = false;
  private readonly onSent = (): void => {
    this.writing = false;
    this.drained();
  };

  constructor(
    private readonly socket: Socket,
    /** Called when the connection can take the next write. */
    private readonly drained: () => void,
  ) {
    this.engine = socket.conn as unknown as EngineSocket;
    const ws = this.engine.transport.socket;
    const sender = ws?._sender;
    // Checked here, at the first connection, rather than losing events later.
    if (!ws || typeof sender?.sendFrame !== 'function') {
      throw new Error('engine.io or ws changed: no WebSocket under the transport or no Sender.sendFrame');
    }
    this.ws = ws;
    this.sender = sender;
  }

  isBusy(): boolean {
    const engine = this.engine;
    return this.writing || engine.writeBuffer.length > 0 || !engine.transport.writable;
  }

  write(events: readonly EncodedEvent[]): void {
    const [first] = events;
    // A connection on its way out takes nothing more; its client resumes from its last seq.
    if (!first || this.engine.readyState !== 'open' || this.ws.readyState !== WS_OPEN) return;
    const frame = events.length === 1 ? socketFrame(first) : [Buffer.concat(events.flatMap(socketFrame))];
    // Straight to the socket rather than through engine.io's queue: ordered with engine.io's own
    // writes (acks, pings) because both are synchronous while engine.io's queue is empty, which
    // `isBusy` ensures before the Hub writes.
    this.writing = true;
    this.sender.sendFrame(frame, this.onSent);
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
    this.engine.close(reason === 'SLOW_CONSUMER');
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

  io.on('connection', (socket) => {
    const sink = new SocketSink(socket, () => subscriber.flush());
    const subscriber = hub.attach(sink, socket.data.principal);
    const engine = socket.conn as unknown as EngineSocket;
    // What the Hub queued while engine.io was writing goes out once engine.io is done.
    const onReady = () => subscriber.flush();
    engine.transport.on('ready', onReady);
    socket.on('disconnect', () => {
      engine.transport.off('ready', onReady);
      hub.detach(subscriber);
    });

    socket.on(SOCKET_EVENTS.subscribe, (payload: unknown, ack: unknown) => {
      const answer = typeof ack === 'function' ? (ack as (reply: SubscribeAck) => void) : () => {};
      if (!validSubscribe.Check(payload)) {
        answer({
          ok: false,
          error: { code: 'INVALID_INPUT', message: 'subscribe takes {run_id, since?, delta?}' },
        });
        return;
      }
      const { run_id, since, delta } = payload;
      // Checked again at every subscribe: credentials that ended since the handshake open nothing.
      authenticator
        .authenticate(socket.data.credentials)
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
    });

    socket.on(SOCKET_EVENTS.unsubscribe, (payload: unknown) => {
      const runId = (payload as { run_id?: unknown } | null)?.run_id;
      if (typeof runId === 'string') hub.unsubscribe(subscriber, runId);
    });
  });

  return io;
}
