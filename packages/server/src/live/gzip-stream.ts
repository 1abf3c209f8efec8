import { constants, crc32, deflateRawSync } from 'node:zlib';
import { Crc32Append } from './crc32-append.js';

/**
 * A piece written to this many streams counts into the later ones' checksums by table
 * (`Crc32Append`, a few nanoseconds) rather than by reading its bytes again (`zlib.crc32`, a
 * quarter of a microsecond for a few hundred bytes): building the table costs about as much as
 * this many reads.
 */
const APPEND_TABLE_AFTER_USES = 8;

/**
 * Bytes compressed on their own: deflate blocks that refer to nothing before them and end on a
 * byte boundary (a sync flush), so that the same bytes continue any gzip stream. One piece of an
 * event is made once and written to every stream that carries the event.
 */
export class DeflatedPiece {
  private uses = 0;
  private append: Crc32Append | undefined;

  constructor(
    /** The bytes before compression (the stream's checksum and length count them). */
    readonly raw: Buffer,
    readonly deflated: Buffer,
  ) {}

  /** The CRC-32 of a stream whose CRC-32 was `crc`, once it carries this piece too. */
  crcAfter(crc: number): number {
    if (this.append) return this.append.after(crc);
    if (++this.uses < APPEND_TABLE_AFTER_USES) return crc32(this.raw, crc);
    this.append = new Crc32Append(crc32(this.raw), this.raw.length);
    return this.append.after(crc);
  }
}

/** Shorter texts go as a stored block: compressing them would save a few bytes for a zlib call. */
const STORED_BELOW_BYTES = 128;
/**
 * zlib's fast matcher: on a replay (pages of similar log events) it compresses within a few
 * percent of the default level, at about half the CPU.
 */
const LEVEL = 1;
/** The bytes zlib keeps ahead of its matches, which a window must hold besides what it refers to. */
const ZLIB_LOOKAHEAD = 262;
/** A gzip member's header: deflate, no name, no time, unknown OS (RFC 1952). */
const GZIP_HEADER = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
/** The last block (BFINAL, fixed Huffman codes, end of block alone), byte-aligned. */
const FINAL_BLOCK = Buffer.from([0x03, 0x00]);

/** `text` as one stored (uncompressed) deflate block, in one allocation; at most 65,535 bytes. */
function storedPiece(text: string, length: number): DeflatedPiece {
  const block = Buffer.allocUnsafe(5 + length);
  block[0] = 0; // not final, stored; the rest of the byte is padding
  block.writeUInt16LE(length, 1);
  block.writeUInt16LE(~length & 0xffff, 3);
  block.write(text, 5);
  return new DeflatedPiece(block.subarray(5), block);
}

/**
 * zlib's memory for one piece, sized to it: a window no larger than the text, and an output
 * buffer no larger than needed (a 32 KB window, the default hash table and a 16 KB output
 * buffer would allocate ~300 KB per call, which the allocator then keeps as heap).
 */
function deflateOptions(length: number, maxWindowBits = 15) {
  // zlib matches no further back than its window less its lookahead (MIN_LOOKAHEAD, 262 bytes).
  const windowBits = Math.min(maxWindowBits, Math.max(9, Math.ceil(Math.log2(length + ZLIB_LOOKAHEAD))));
  return {
    level: LEVEL,
    windowBits,
    memLevel: Math.max(1, windowBits - 7),
    chunkSize: Math.min(16 * 1024, Math.max(1024, length)),
    finishFlush: constants.Z_SYNC_FLUSH,
  };
}

/**
 * `raw` as raw deflate blocks ending on a sync flush (`00 00 ff ff`), its matches referring back
 * at most into `history` — bytes the decoder is known to have just produced — and never further.
 */
export function deflateAfter(raw: Buffer, history?: Buffer, maxWindowBits = 15): Buffer {
  const options = deflateOptions((history?.length ?? 0) + raw.length, maxWindowBits);
  if (!history || history.length === 0) return deflateRawSync(raw, options);
  const dictionary = history.subarray(Math.max(0, history.length - 2 ** options.windowBits));
  return deflateRawSync(raw, { ...options, dictionary });
}

/** Compresses `text` into a piece that continues any gzip stream (see DeflatedPiece). */
export function deflatePiece(text: string): DeflatedPiece {
  const length = Buffer.byteLength(text);
  if (length < STORED_BELOW_BYTES) return storedPiece(text, length);
  const raw = Buffer.from(text);
  return new DeflatedPiece(raw, deflateAfter(raw));
}

/**
 * The bytes a stream ended with, as far as a piece may refer back to them: the last shared
 * piece it wrote (`after`), then what it wrote of its own since (`suffix`, a few bytes: an id
 * line). Streams with the same tail can share a piece compressed after it.
 */
export interface StreamTail {
  readonly after: DeflatedPiece;
  readonly suffix: Buffer;
}

/** Own bytes a tail may hold after its shared piece; past them the stream has no usable tail. */
const MAX_SUFFIX_BYTES = 256;

/**
 * Compresses `text` into a piece that continues only a stream ending with `tail`: its matches
 * may refer back into those bytes, which every gzip decoder still holds in its window. Two
 * progress updates of a run differ in a few numbers, so the second costs a few dozen bytes where
 * alone it would cost most of its length.
 */
export function deflatePieceAfter(text: string, tail: StreamTail): DeflatedPiece {
  const raw = Buffer.from(text);
  const history = tail.suffix.length > 0 ? Buffer.concat([tail.after.raw, tail.suffix]) : tail.after.raw;
  return new DeflatedPiece(raw, deflateAfter(raw, history));
}

const NO_BYTES = Buffer.alloc(0);

/**
 * One gzip member written a piece at a time, every piece decodable as soon as it arrives: there
 * is no compressor to hold bytes back, and nothing of the connection's is kept between writes
 * but a checksum, a length and its tail (a reference to the last shared piece, and the few own
 * bytes after it). A piece shared by every stream costs each one a CRC update (a few table
 * lookups once the piece is widely shared, see `DeflatedPiece.crcAfter`); compressed after
 * the tail the streams share, it compresses as well as in a stream whose window spans them.
 */
export class GzipStream {
  private crc = 0;
  private size = 0;
  private started = false;
  private lastShared: DeflatedPiece | undefined;
  private suffix: Buffer = NO_BYTES;

  /**
   * Counts `piece` into the member's checksum and length; answers the header to send before it
   * when it is the first. A `shared` piece (an event's, written to many streams) starts the
   * stream's tail; a piece of its own extends it.
   */
  add(piece: DeflatedPiece, shared = false): Buffer | undefined {
    this.crc = piece.crcAfter(this.crc);
    this.size = (this.size + piece.raw.length) >>> 0;
    if (shared) {
      this.lastShared = piece;
      this.suffix = NO_BYTES;
    } else if (this.lastShared) {
      if (this.suffix.length + piece.raw.length > MAX_SUFFIX_BYTES) this.lastShared = undefined;
      else this.suffix = Buffer.concat([this.suffix, piece.raw]);
    }
    if (this.started) return undefined;
    this.started = true;
    return GZIP_HEADER;
  }

  /** The bytes that send `piece`: the header first on the first call. */
  next(piece: DeflatedPiece, shared = false): Buffer[] {
    const header = this.add(piece, shared);
    return header ? [header, piece.deflated] : [piece.deflated];
  }

  /** What the stream ended with, if a piece may be compressed after it. */
  tail(): StreamTail | undefined {
    return this.lastShared ? { after: this.lastShared, suffix: this.suffix } : undefined;
  }

  /**
   * Whether the stream ends with `tail` (the same shared piece, the same own bytes after it): a
   * piece compressed after it continues this stream. Asked of every stream for every event, so
   * it makes nothing.
   */
  endsWith(tail: StreamTail): boolean {
    return this.lastShared === tail.after && (this.suffix === tail.suffix || this.suffix.equals(tail.suffix));
  }

  /** The bytes that end the member: the last block, the CRC-32 and the length mod 2^32. */
  end(): Buffer {
    const trailer = Buffer.allocUnsafe(8);
    trailer.writeUInt32LE(this.crc >>> 0, 0);
    trailer.writeUInt32LE(this.size, 4);
    return Buffer.concat(this.started ? [FINAL_BLOCK, trailer] : [GZIP_HEADER, FINAL_BLOCK, trailer]);
  }
}
