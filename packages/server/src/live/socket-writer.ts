import { SOCKET_EVENTS } from '@runcast/protocol';
import type { Socket } from 'socket.io';
import { Encoder, PacketType } from 'socket.io-parser';
import * as ws from 'ws';
import type { EncodedEvent } from './encoded-event.js';

// Internals of socket.io / engine.io / ws the Socket.IO gateway relies on, named in this file
// only. Without per-message deflate, events go out the way Socket.IO's own broadcast sends a
// pre-encoded packet (`adapter.broadcast` → engine.io's WebSocket transport → `ws`
// `Sender.sendFrame` with a frame built once, see websockets/ws#617), minus the per-socket packet
// objects and events of the layers between. engine.io takes that path only while per-message
// deflate is off; so does this file: a connection that negotiated it is written through `ws`'s
// `send`, which compresses.

/** engine.io's socket under a Socket.IO socket. */
export interface EngineSocket {
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
  /** The negotiated extensions, comma-separated (public in ws). */
  extensions: string;
  send(data: string, cb?: (err?: Error) => void): void;
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
const PER_MESSAGE_DEFLATE = 'permessage-deflate';

/** The engine.io socket of a Socket.IO socket. */
export function engineOf(socket: Socket): EngineSocket {
  return socket.conn as unknown as EngineSocket;
}

/** The engine.io `message` packet of an event's `run_event`, as text, built once for every socket. */
function socketPacket(event: EncodedEvent): string {
  if (event.socketPacket === undefined) {
    // An event is JSON: it encodes into one packet (only binary attachments would add more).
    const [packet] = encoder.encode({
      type: PacketType.EVENT,
      nsp: '/',
      data: [SOCKET_EVENTS.runEvent, event.event],
    }) as string[];
    // "4" is Engine.IO's "message" packet type.
    event.socketPacket = `4${packet}`;
  }
  return event.socketPacket;
}

/**
 * The `run_event` packet of an event as one uncompressed WebSocket text frame, built once for
 * every socket: header and payload in one buffer, so that each socket's write is one `write`.
 */
export function socketFrame(event: EncodedEvent): readonly Buffer[] {
  if (event.socketFrame) return event.socketFrame;
  const frame = [Buffer.concat(senderOf.frame(Buffer.from(socketPacket(event)), TEXT_FRAME))];
  event.socketFrame = frame;
  return frame;
}

/** How a Socket.IO connection's `run_event` packets reach its WebSocket. */
export interface SocketWriter {
  /** True while a write of ours is in flight, or engine.io has writes of its own queued. */
  isBusy(): boolean;
  /** Writes the events' packets in order; the writer's `drained` follows once they are sent. */
  write(events: readonly EncodedEvent[]): void;
}

/** What both writers share: the connection's state and the one write in flight. */
abstract class WebSocketWriter implements SocketWriter {
  /** A write of ours is still being handed to the kernel; `drained` follows when it is. */
  private writing = false;
  protected readonly onSent = (): void => {
    this.writing = false;
    this.drained();
  };

  constructor(
    protected readonly engine: EngineSocket,
    protected readonly ws: WsSocket,
    /** Called when the connection can take the next write. */
    private readonly drained: () => void,
  ) {}

  isBusy(): boolean {
    const engine = this.engine;
    return this.writing || engine.writeBuffer.length > 0 || !engine.transport.writable;
  }

  write(events: readonly EncodedEvent[]): void {
    // A connection on its way out takes nothing more; its client resumes from its last seq.
    if (events.length === 0 || this.engine.readyState !== 'open' || this.ws.readyState !== WS_OPEN) return;
    // Straight to ws rather than through engine.io's queue: ordered with engine.io's own writes
    // (acks, pings) because both reach ws's Sender while engine.io's queue is empty, which
    // `isBusy` ensures before the Hub writes.
    this.writing = true;
    this.send(events);
  }

  /** Sends the events' packets, calling `onSent` once the last is sent. */
  protected abstract send(events: readonly EncodedEvent[]): void;
}

/** Prebuilt uncompressed frames, one `sendFrame` per write: the fast path. */
class FrameWriter extends WebSocketWriter {
  constructor(
    engine: EngineSocket,
    socket: WsSocket,
    private readonly sender: FrameSender,
    drained: () => void,
  ) {
    super(engine, socket, drained);
  }

  protected send(events: readonly EncodedEvent[]): void {
    const [first] = events;
    const frame =
      events.length === 1 && first ? socketFrame(first) : [Buffer.concat(events.flatMap(socketFrame))];
    this.sender.sendFrame(frame, this.onSent);
  }
}

/**
 * Per-message deflate: each packet is a message through `ws`'s `send`, which compresses it with
 * the connection's deflate context and queues it behind any message still being compressed, so
 * that order holds with engine.io's own writes. The packet's text is built once for every socket.
 */
class DeflateWriter extends WebSocketWriter {
  protected send(events: readonly EncodedEvent[]): void {
    const last = events.length - 1;
    for (let i = 0; i < last; i++) this.ws.send(socketPacket(events[i] as EncodedEvent));
    this.ws.send(socketPacket(events[last] as EncodedEvent), this.onSent);
  }
}

/**
 * The writer of a connection: through ws's compressor when it negotiated per-message deflate,
 * prebuilt frames otherwise. Throws if engine.io or ws changed under the gateway, at the first
 * connection rather than losing events later.
 */
export function socketWriterFor(socket: Socket, drained: () => void): SocketWriter {
  const engine = engineOf(socket);
  const wsSocket = engine.transport.socket;
  if (!wsSocket || typeof wsSocket.send !== 'function' || typeof wsSocket.extensions !== 'string') {
    throw new Error('engine.io or ws changed: no WebSocket under the transport');
  }
  if (wsSocket.extensions.split(',').includes(PER_MESSAGE_DEFLATE)) {
    return new DeflateWriter(engine, wsSocket, drained);
  }
  const sender = wsSocket._sender;
  if (typeof sender?.sendFrame !== 'function') {
    throw new Error('engine.io or ws changed: no Sender.sendFrame under the WebSocket');
  }
  return new FrameWriter(engine, wsSocket, sender, drained);
}
