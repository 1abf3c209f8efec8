import type { Server as HttpServer } from 'node:http';
import { isTerminal, SOCKET_EVENTS, type SubscribeAck, SubscribeRequest } from '@runcast/protocol';
import { Server, type Socket } from 'socket.io';
import { Encoder, PacketType } from 'socket.io-parser';
import { Compile } from 'typebox/compile';
import * as ws from 'ws';
import type { Authenticator } from '../auth/authenticator.js';
import type { Policy } from '../auth/policy.js';
import type { Principal } from '../auth/principal.js';
import { AppError } from '../errors.js';
import type { Metrics } from '../metrics.js';
import { EncodedEvent } from './encoded-event.js';
import type { Hub } from './hub.js';
import { snapshotEvent } from './sse.js';
import type { DisconnectReason, Sink } from './subscriber.js';

export interface SocketGatewayOptions {
  hub: Hub;
  policy: Policy;
  authenticator: Authenticator;
  metrics: Metrics;
  allowedOrigins: readonly string[];
  /** Parses a Cookie header the way the HTTP routes do. */
  parseCookies: (header: string) => Record<string, string>;
  path?: string;
}

interface SocketData {
  principal: Principal;
}

/** A packet encoded once for every socket: the Socket.IO string and its WebSocket frame. */
interface PreEncoded {
  packets: string[];
  options: { preEncoded: true; wsPreEncodedFrame?: unknown };
}

// Internals of socket.io / engine.io this gateway relies on, named in one place. They are the
// same calls Socket.IO's own broadcast makes (`adapter.broadcast` → `client.writeToEngine` with
// `preEncoded`), which is how one encoding serves every socket.
interface EngineSocket {
  writeBuffer: unknown[];
  transport: {
    writable: boolean;
    on(event: 'ready', fn: () => void): void;
    off(event: 'ready', fn: () => void): void;
  };
  close(discard?: boolean): void;
}
interface ClientInternals {
  writeToEngine(packets: string[], options: PreEncoded['options']): void;
}
interface FrameBuilder {
  frame(
    data: Buffer,
    options: { readOnly: boolean; mask: boolean; rsv1: boolean; opcode: number; fin: boolean },
  ): unknown;
}

const encoder = new Encoder();
// ws's module exports Sender (its frame builder); its type declarations do not list it.
const senderOf = (ws as unknown as { Sender: FrameBuilder }).Sender;

function preEncode(event: EncodedEvent): PreEncoded {
  let cached = event.cache.get('socket.io') as PreEncoded | undefined;
  if (cached) return cached;
  const packets = encoder.encode({
    type: PacketType.EVENT,
    nsp: '/',
    data: [SOCKET_EVENTS.runEvent, event.event],
  }) as string[];
  const options: PreEncoded['options'] = { preEncoded: true };
  if (packets.length === 1 && packets[0] !== undefined) {
    // "4" is Engine.IO's "message" packet type; the frame is built once, like Socket.IO's broadcast does.
    options.wsPreEncodedFrame = senderOf.frame(Buffer.from(`4${packets[0]}`), {
      readOnly: false,
      mask: false,
      rsv1: false,
      opcode: 1,
      fin: true,
    });
  }
  cached = { packets, options };
  event.cache.set('socket.io', cached);
  return cached;
}

/** One Socket.IO socket as a Hub sink. */
class SocketSink implements Sink {
  readonly transport = 'websocket' as const;

  constructor(private readonly socket: Socket) {}

  private get engine(): EngineSocket {
    return this.socket.conn as unknown as EngineSocket;
  }

  isBusy(): boolean {
    const engine = this.engine;
    return engine.writeBuffer.length > 0 || !engine.transport.writable;
  }

  write(events: readonly EncodedEvent[]): void {
    const client = this.socket.client as unknown as ClientInternals;
    for (const event of events) {
      const { packets, options } = preEncode(event);
      client.writeToEngine(packets, options);
    }
  }

  runEnded(): void {}

  close(reason: DisconnectReason): void {
    if (reason === 'SERVER_SHUTDOWN') this.socket.emit(SOCKET_EVENTS.reconnect, { reason });
    // Closing the transport (rather than a server-side `disconnect`) makes clients reconnect.
    this.engine.close(reason === 'SLOW_CONSUMER');
  }
}

const validSubscribe = Compile(SubscribeRequest);

function refusal(err: unknown): SubscribeAck {
  if (err instanceof AppError) return { ok: false, error: { code: err.code, message: err.message } };
  return { ok: false, error: { code: 'INTERNAL', message: 'internal error' } };
}

/** The Socket.IO gateway on the server's HTTP server, WebSocket transport only. */
export function attachSocketGateway(httpServer: HttpServer, options: SocketGatewayOptions): Server {
  const { hub, policy, authenticator, metrics } = options;
  const io = new Server<Record<string, never>, Record<string, never>, Record<string, never>, SocketData>(
    httpServer,
    {
      path: options.path ?? '/socket.io',
      transports: ['websocket'],
      serveClient: false,
    },
  );

  io.use((socket, next) => {
    const handshake = socket.handshake;
    const auth = (handshake.auth ?? {}) as Record<string, unknown>;
    const cookieHeader = handshake.headers.cookie;
    authenticator
      .authenticate({
        authorization: handshake.headers.authorization,
        token: typeof auth.token === 'string' ? auth.token : undefined,
        cookies: cookieHeader ? options.parseCookies(cookieHeader) : undefined,
      })
      .then((principal) => {
        if (!principal) throw new AppError('UNAUTHORIZED', 'send a token in the handshake auth or log in');
        if (principal.via === 'cookie') {
          const origin = handshake.headers.origin;
          const host = handshake.headers.host;
          const own = [`http://${host}`, `https://${host}`];
          if (origin === undefined || (!own.includes(origin) && !options.allowedOrigins.includes(origin))) {
            throw new AppError('ORIGIN_MISMATCH', 'cross-origin socket refused');
          }
        }
        socket.data.principal = principal;
        metrics.recordClientReport(auth.transport ?? 'websocket', auth.fallback_from, auth.fallback_reason);
        next();
      })
      .catch((err: unknown) => {
        const error = err instanceof AppError ? err : new AppError('UNAUTHORIZED', 'authentication failed');
        next(Object.assign(new Error(error.message), { data: { code: error.code } }));
      });
  });

  io.on('connection', (socket) => {
    const sink = new SocketSink(socket);
    const subscriber = hub.attach(sink);
    const engine = socket.conn as unknown as EngineSocket;
    const onReady = () => subscriber.flush();
    engine.transport.on('ready', onReady);
    socket.on('disconnect', () => {
      engine.transport.off('ready', onReady);
      hub.detach(subscriber);
    });

    socket.on(SOCKET_EVENTS.subscribe, (payload: unknown, ack: unknown) => {
      const answer = typeof ack === 'function' ? (ack as (reply: SubscribeAck) => void) : () => {};
      if (!validSubscribe.Check(payload)) {
        answer({ ok: false, error: { code: 'INVALID_INPUT', message: 'subscribe takes {run_id, since?}' } });
        return;
      }
      const { run_id, since } = payload;
      policy
        .requireRun(socket.data.principal, run_id)
        .then(() => hub.subscribe(subscriber, run_id, since))
        .then((replay) => {
          if (!replay) throw new AppError('RUN_NOT_FOUND', `run ${run_id} not found`);
          if (!socket.connected) return;
          // First the missed logs, then the snapshot (the ack), then live events.
          sink.write(replay.events.map((log) => new EncodedEvent(log)));
          answer({ ok: true, snapshot: snapshotEvent(replay) });
          if (isTerminal(replay.run.status)) hub.unsubscribe(subscriber, run_id);
          else subscriber.openRun(run_id, replay.run.seq);
        })
        .catch((err: unknown) => {
          hub.unsubscribe(subscriber, run_id);
          answer(refusal(err));
        });
    });

    socket.on(SOCKET_EVENTS.unsubscribe, (payload: unknown) => {
      const runId = (payload as { run_id?: unknown } | null)?.run_id;
      if (typeof runId === 'string') hub.unsubscribe(subscriber, runId);
    });
  });

  return io;
}
