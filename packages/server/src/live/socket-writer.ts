import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { SOCKET_EVENTS } from '@runcast/protocol';
import type { Socket } from 'socket.io';
import { PacketType } from 'socket.io-parser';
import * as ws from 'ws';
import type { EncodedEvent } from './encoded-event.js';
import { deflateAfter } from './gzip-stream.js';

// Internals of socket.io / engine.io / ws the Socket.IO gateway relies on, named in this file
// only. Without per-message deflate, events go out the way Socket.IO's own broadcast sends a
// pre-encoded packet (`adapter.broadcast` → engine.io's WebSocket transport → `ws`
// `Sender.sendFrame` with a frame built once, see websockets/ws#617), minus the per-socket packet
// objects and events of the layers between. engine.io takes that path only while per-message
// deflate is off; this file takes it either way: with per-message deflate the frames are
// compressed once for every socket here, and ws compresses nothing (`BoundedDeflateServer`).

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
  /** The negotiated extensions' objects; permessage-deflate's `params` are what was agreed. */
  _extensions?: Record<string, PerMessageDeflate | undefined>;
}
/** ws's permessage-deflate extension of one connection. */
interface PerMessageDeflate {
  params?: { server_max_window_bits?: number; client_no_context_takeover?: boolean };
  /** ws's copy of the server's options for the extension, one per connection. */
  _options?: object;
  /** Inflates one fragment of a message the client compressed; `fin` on its last. */
  decompress(data: Buffer, fin: boolean, callback: (err: Error | null, result?: Buffer) => void): void;
  /** The inflater, made by `decompress` when there is none. */
  _inflate: { close(): void } | null;
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

/**
 * A `run_event` packet up to its event: Engine.IO "message" (4), then Socket.IO's EVENT on the
 * main namespace, with no ack id, and its data array `["run_event", <event>]`.
 */
const RUN_EVENT_PACKET_HEAD = `4${PacketType.EVENT}["${SOCKET_EVENTS.runEvent}",`;

// ws's module exports Sender (its frame builder); its type declarations do not list it.
const senderOf = (ws as unknown as { Sender: FrameBuilder }).Sender;
const TEXT_FRAME = { readOnly: false, mask: false, rsv1: false, opcode: 1, fin: true };
/** A compressed message's frame (RSV1: permessage-deflate, RFC 7692). */
const COMPRESSED_TEXT_FRAME = { ...TEXT_FRAME, rsv1: true };
/** The `00 00 ff ff` a sync flush ends with, which a permessage-deflate sender leaves out. */
const SYNC_FLUSH_TAIL = 4;
/**
 * The deflate window of compressed frames, and the gateway's `serverMaxWindowBits`: 1 KB, enough
 * for the packet before (a progress update's packet is a few hundred bytes).
 */
export const DEFLATE_WINDOW_BITS = 10;
const WS_OPEN = 1;
const PER_MESSAGE_DEFLATE = 'permessage-deflate';

/** The engine.io socket of a Socket.IO socket. */
export function engineOf(socket: Socket): EngineSocket {
  return socket.conn as unknown as EngineSocket;
}

/** The engine.io `message` packet of an event's `run_event`, as text, built once for every socket. */
function socketPacket(event: EncodedEvent): string {
  // The event's JSON, made once for every transport, inside the packet's array: what Socket.IO's
  // encoder writes for it, without a second JSON.stringify of the event.
  event.socketPacket ??= `${RUN_EVENT_PACKET_HEAD}${event.json}]`;
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

/**
 * An event's `run_event` packet as compressed frames, each made once for every socket: alone,
 * and after the packet before it (kept as its text, never as the event, so that no event holds
 * the run's history).
 */
export interface DeflatedFrames {
  alone?: Buffer;
  after?: { previousPacket: string; frame: Buffer };
}

function compressedFrame(packet: string, previousPacket?: string): Buffer {
  const history = previousPacket === undefined ? undefined : Buffer.from(previousPacket);
  const deflated = deflateAfter(Buffer.from(packet), history, DEFLATE_WINDOW_BITS);
  return Buffer.concat(
    senderOf.frame(deflated.subarray(0, deflated.length - SYNC_FLUSH_TAIL), COMPRESSED_TEXT_FRAME),
  );
}

/**
 * The event's compressed frame for a socket whose last compressed message was `previousPacket`:
 * made after that packet when the first socket to send this event had sent the same one (the
 * sockets of a run get its events in the same order, so this is the rule), alone otherwise.
 */
function deflatedFrame(event: EncodedEvent, previousPacket: string | undefined): Buffer {
  event.socketDeflate ??= {};
  const frames = event.socketDeflate;
  if (previousPacket !== undefined) {
    frames.after ??= { previousPacket, frame: compressedFrame(socketPacket(event), previousPacket) };
    if (frames.after.previousPacket === previousPacket) return frames.after.frame;
  }
  frames.alone ??= compressedFrame(socketPacket(event));
  return frames.alone;
}

/** How a Socket.IO connection's `run_event` packets reach its WebSocket. */
export interface SocketWriter {
  /** True while a write of ours is in flight, or engine.io has writes of its own queued. */
  isBusy(): boolean;
  /** Writes the events' packets in order; the writer's `drained` follows once they are sent. */
  write(events: readonly EncodedEvent[]): void;
}

/** Prebuilt uncompressed frames, one `sendFrame` per write: the fast path. */
class FrameWriter implements SocketWriter {
  /** A write of ours is still being handed to the kernel; `drained` follows when it is. */
  private writing = false;
  protected readonly onSent = (): void => {
    this.writing = false;
    this.drained();
  };

  constructor(
    private readonly engine: EngineSocket,
    private readonly ws: WsSocket,
    private readonly sender: FrameSender,
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

  protected send(events: readonly EncodedEvent[]): void {
    const [first] = events;
    const frame =
      events.length === 1 && first ? socketFrame(first) : [Buffer.concat(events.flatMap(socketFrame))];
    this.sendFrames(frame);
  }

  protected sendFrames(frames: readonly Buffer[]): void {
    this.sender.sendFrame(frames, this.onSent);
  }
}

/**
 * Per-message deflate with frames made once for every socket: each event's packet is compressed
 * after the packet before it, which the client's inflater holds in its window when it was this
 * socket's last compressed message (else the frame made alone goes). `ws` compresses nothing of
 * the connection's itself (see `socketWriterFor`): the client's window holds only these frames.
 */
class SharedDeflateWriter extends FrameWriter {
  private lastPacket: string | undefined;

  protected override send(events: readonly EncodedEvent[]): void {
    const frames: Buffer[] = [];
    for (const event of events) {
      frames.push(deflatedFrame(event, this.lastPacket));
      this.lastPacket = socketPacket(event);
    }
    this.sendFrames(frames.length === 1 ? frames : [Buffer.concat(frames)]);
  }
}

/**
 * The writer of a connection: shared compressed frames when it negotiated per-message deflate
 * with a window that holds them, prebuilt plain frames otherwise (an uncompressed message is
 * always allowed). Throws if engine.io or ws changed under the gateway, at the first connection
 * rather than losing events later.
 */
export function socketWriterFor(socket: Socket, drained: () => void): SocketWriter {
  const engine = engineOf(socket);
  const wsSocket = engine.transport.socket;
  if (!wsSocket || typeof wsSocket.send !== 'function' || typeof wsSocket.extensions !== 'string') {
    throw new Error('engine.io or ws changed: no WebSocket under the transport');
  }
  const sender = wsSocket._sender;
  if (typeof sender?.sendFrame !== 'function') {
    throw new Error('engine.io or ws changed: no Sender.sendFrame under the WebSocket');
  }
  const deflate = wsSocket._extensions?.[PER_MESSAGE_DEFLATE];
  const windowBits = deflate?.params?.server_max_window_bits ?? 15;
  // A client that asked for a smaller window than the shared frames use gets them uncompressed.
  if (!deflate || windowBits < DEFLATE_WINDOW_BITS) return new FrameWriter(engine, wsSocket, sender, drained);
  return new SharedDeflateWriter(engine, wsSocket, sender, drained);
}

/**
 * Per-message deflate bounded to what the shared frames need, on every connection that
 * negotiates it, before engine.io writes its first packet:
 * - ws compresses nothing of its own (engine.io's open packet, acks, pings; see
 *   `UncompressedSends`): its compressor would cost the connection ~80 KB, and a message it
 *   compressed with a context of its own would refer back to bytes that are not where it thinks
 *   in the client's window, which holds the shared frames too;
 * - what the client compresses is inflated with an inflater made for the message and released
 *   after it, which `client_no_context_takeover` (asked of every client) allows: an idle
 *   connection holds no zlib state at all;
 * - what ws keeps per connection for the extension is made small: the agreed parameters as a
 *   plain object instead of a dictionary, and the server's options shared instead of copied.
 */
function boundDeflate(wsSocket: WsSocket, server: { options?: object }): void {
  const deflate = wsSocket._extensions?.[PER_MESSAGE_DEFLATE];
  if (!deflate) return;
  if (typeof deflate.decompress !== 'function' || !deflate.params || !deflate._options) {
    throw new Error('ws changed: no PerMessageDeflate.decompress under the WebSocket');
  }
  deflate.params = { ...deflate.params };
  server.options ??= deflate._options;
  deflate._options = server.options;
  if (deflate.params.client_no_context_takeover === true) deflate.decompress = decompressAlone;
}

/** ws's `decompress` for a message that stands alone: the inflater goes with the message. */
function decompressAlone(
  this: PerMessageDeflate,
  data: Buffer,
  fin: boolean,
  callback: (err: Error | null, result?: Buffer) => void,
): void {
  // The prototype's: ws's own, which makes the inflater when there is none.
  const decompress = (Object.getPrototypeOf(this) as PerMessageDeflate).decompress;
  decompress.call(this, data, fin, (err, result) => {
    if (fin && this._inflate) {
      this._inflate.close();
      this._inflate = null;
    }
    callback(err, result);
  });
}

/** ws's WebSocket for the gateway: a message it sends itself goes uncompressed. */
class UncompressedSends extends ws.WebSocket {
  override send(data: unknown, options?: unknown, cb?: unknown): void {
    const send = super.send as (data: unknown, options: object, cb?: unknown) => void;
    if (typeof options === 'function') send.call(this, data, NO_COMPRESSION, options);
    else send.call(this, data, { ...(options as object | undefined), compress: false }, cb);
  }
}
const NO_COMPRESSION = { compress: false };

/**
 * ws's server as engine.io's `wsEngine`, bounding per-message deflate on each connection it
 * accepts (see `boundDeflate`).
 */
export class BoundedDeflateServer extends ws.WebSocketServer {
  /** ws's copy of the extension's options, shared by every connection. */
  private readonly deflateOptions: { options?: object } = {};

  constructor(options: ws.ServerOptions, callback?: () => void) {
    super({ ...options, WebSocket: UncompressedSends }, callback);
  }

  override handleUpgrade(
    request: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    callback: (client: ws.WebSocket, request: IncomingMessage) => void,
  ): void {
    super.handleUpgrade(request, socket, head, (client, upgraded) => {
      boundDeflate(client as unknown as WsSocket, this.deflateOptions);
      callback(client, upgraded);
    });
  }
}
