import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { EncodedEvent } from './encoded-event.js';
import {
  type DeflatedPiece,
  deflatePiece,
  deflatePieceAfter,
  GzipStream,
  type StreamTail,
} from './gzip-stream.js';

/**
 * How an SSE response's bytes reach its connection: as they are (`PlainSseWriter`) or gzipped
 * (`GzipSseWriter`). Every write is sent whole at once: nothing waits in a buffer for more.
 */
export interface SseWriter {
  /** Headers the writer's encoding adds to the response. */
  readonly headers: Readonly<Record<string, string>>;
  /** Writes text of this stream alone (the opening, keepalives, errors); the headers go first. */
  writeText(text: string): void;
  /**
   * Writes the frames of `events`, their encoded bytes shared by every stream that writes them:
   * the single-run frames (`EncodedEvent.sse`), or with `ids` (a multiplexed stream's cursors,
   * one per event) `id: <ids[i]>` followed by the shared `sseWithoutId`.
   */
  writeEvents(events: readonly EncodedEvent[], ids?: readonly string[]): void;
  /** True while the connection's buffer is full. */
  isBusy(): boolean;
  /** Ends the response after what was written. */
  end(): void;
}

/** `parts` as one HTTP/1.1 chunk: what `res.write` of their bytes sends on a chunked response, in one buffer. */
function httpChunk(parts: readonly Buffer[]): Buffer {
  let length = 0;
  for (const part of parts) length += part.length;
  return Buffer.concat([Buffer.from(`${length.toString(16)}\r\n`, 'latin1'), ...parts, CRLF]);
}
const CRLF = Buffer.from('\r\n');

/**
 * The connection of a response that may be written to directly once the response has started:
 * a chunked response on a connection it owns. Then a chunk written to the socket is exactly what
 * `res.write` sends, in one write: `res.write` corks the socket, writes size, data and CRLF
 * separately and sends them as one `writev` on the next tick. Undefined otherwise.
 */
function directSocket(res: ServerResponse, allowed: boolean): Socket | undefined {
  const socket = res.socket;
  return allowed && socket && res.chunkedEncoding ? socket : undefined;
}

/** Shared by both writers: the response, its direct connection, and drain notifications. */
abstract class ResponseWriter implements SseWriter {
  abstract readonly headers: Readonly<Record<string, string>>;
  protected direct: Socket | undefined;
  private started = false;

  constructor(
    protected readonly res: ServerResponse,
    /** Whether frames may go straight to the socket (single-run streams). */
    private readonly directAllowed: boolean,
    /** Called whenever the connection takes writes again after a full buffer. */
    private readonly drained: () => void,
  ) {}

  abstract writeText(text: string): void;
  abstract writeEvents(events: readonly EncodedEvent[], ids?: readonly string[]): void;

  /** Writes through the response (headers first, on the first write), then sets up direct writes. */
  protected writeThroughResponse(chunk: string | Buffer): void {
    this.res.write(chunk);
    if (this.started) return;
    this.started = true;
    const drained = this.drained;
    const socket = directSocket(this.res, this.directAllowed);
    if (socket) {
      this.direct = socket;
      socket.on('drain', drained);
      this.res.once('close', () => socket.off('drain', drained));
    } else {
      this.res.on('drain', drained);
    }
  }

  isBusy(): boolean {
    return this.direct ? this.direct.writableNeedDrain : this.res.writableNeedDrain;
  }

  end(): void {
    this.res.end();
  }
}

/** Today's bytes: text through the response, shared event chunks straight to the socket. */
export class PlainSseWriter extends ResponseWriter {
  readonly headers = {};

  writeText(text: string): void {
    this.writeThroughResponse(text);
  }

  writeEvents(events: readonly EncodedEvent[], ids?: readonly string[]): void {
    const [first] = events;
    if (!first) return;
    const direct = this.direct;
    if (!direct) {
      let chunk = '';
      for (let i = 0; i < events.length; i++) {
        const event = events[i] as EncodedEvent;
        chunk += ids ? `id: ${ids[i]}\n${event.sseWithoutId}` : event.sse;
      }
      this.writeThroughResponse(chunk);
      return;
    }
    // A connection the client already ended takes nothing more (writing would raise an error).
    if (!direct.writable) return;
    direct.write(events.length === 1 ? first.sseChunk : Buffer.concat(events.map((event) => event.sseChunk)));
  }
}

/** A piece and the HTTP chunk that carries it on a direct connection. */
interface ChunkedPiece {
  piece: DeflatedPiece;
  chunk: Buffer;
}

/** A frame compressed after the tail of the first stream that wrote it (see `deflatePieceAfter`). */
interface PieceAfter extends ChunkedPiece {
  tail: StreamTail;
}

/**
 * An event's frames gzipped once for every stream: the single-run frame and `sseWithoutId` for
 * multiplexed streams, each alone and after the tail the streams share (the run's previous
 * frame, usually), each made on first use.
 */
export class GzipFrames {
  // Every field is set from the start, so that all events' frames have one shape (an object
  // grown field by field in varying order makes the fan-out's lookups polymorphic).
  single: ChunkedPiece | undefined = undefined;
  singleAfter: PieceAfter | undefined = undefined;
  withoutId: ChunkedPiece | undefined = undefined;
  withoutIdAfter: PieceAfter | undefined = undefined;
}

function chunked(piece: DeflatedPiece): ChunkedPiece {
  return { piece, chunk: httpChunk([piece.deflated]) };
}

/**
 * The event's frame (single-run or without id) for `stream`: compressed after the stream's tail
 * when the first stream to write this frame had the same tail (the streams of a run share their
 * frames in the same order, so this is the rule), compressed alone otherwise.
 */
function framePiece(event: EncodedEvent, multiplexed: boolean, stream: GzipStream): ChunkedPiece {
  event.sseGzip ??= new GzipFrames();
  const frames = event.sseGzip;
  const text = multiplexed ? event.sseWithoutId : event.sse;
  let after = multiplexed ? frames.withoutIdAfter : frames.singleAfter;
  if (!after) {
    const tail = stream.tail();
    if (tail) {
      after = { tail, ...chunked(deflatePieceAfter(text, tail)) };
      if (multiplexed) frames.withoutIdAfter = after;
      else frames.singleAfter = after;
    }
  }
  if (after && stream.endsWith(after.tail)) return after;
  let alone = multiplexed ? frames.withoutId : frames.single;
  if (!alone) {
    alone = chunked(deflatePiece(text));
    if (multiplexed) frames.withoutId = alone;
    else frames.single = alone;
  }
  return alone;
}

/**
 * A gzip stream (`Content-Encoding: gzip`) whose every write is decodable on arrival. Events are
 * compressed once each (after the run's previous frame, which the streams that carry the run
 * wrote last, and alone for a stream that did not) and their pieces shared by every stream (see
 * `GzipStream`): the CPU of a fan-out stays a CRC per stream and event, and a stream holds no
 * compressor between writes.
 * Text of one stream (the opening with its replay, keepalives) is compressed per write.
 */
export class GzipSseWriter extends ResponseWriter {
  readonly headers = { 'content-encoding': 'gzip' };
  private readonly gzip = new GzipStream();

  writeText(text: string): void {
    this.send(this.gzip.next(deflatePiece(text)));
  }

  writeEvents(events: readonly EncodedEvent[], ids?: readonly string[]): void {
    const first = events[0];
    if (first === undefined) return;
    if (ids) {
      // The id line is this stream's own (a short stored block); the rest is the event's shared piece.
      const parts: Buffer[] = [];
      for (let i = 0; i < events.length; i++) {
        parts.push(...this.gzip.next(deflatePiece(`id: ${ids[i]}\n`)));
        const { piece } = framePiece(events[i] as EncodedEvent, true, this.gzip);
        parts.push(...this.gzip.next(piece, true));
      }
      this.send(parts);
      return;
    }
    const direct = this.direct;
    if (events.length === 1 && direct !== undefined) {
      const frame = framePiece(first, false, this.gzip);
      const header = this.gzip.add(frame.piece, true);
      // The common write of a fan-out: one event, its chunk shared; this stream's own cost is a CRC update.
      if (header) this.send([header, frame.piece.deflated]);
      else if (direct.writable) direct.write(frame.chunk);
      return;
    }
    const parts: Buffer[] = [];
    for (const event of events)
      parts.push(...this.gzip.next(framePiece(event, false, this.gzip).piece, true));
    this.send(parts);
  }

  private send(parts: readonly Buffer[]): void {
    const direct = this.direct;
    if (!direct) {
      this.writeThroughResponse(parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts));
      return;
    }
    if (direct.writable) direct.write(httpChunk(parts));
  }

  override end(): void {
    // The last block and the trailer, which let the client check what it decoded.
    this.send([this.gzip.end()]);
    this.res.end();
  }
}
