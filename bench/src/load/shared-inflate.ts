import { inflateRawSync, constants as zlib } from 'node:zlib';
import type WebSocket from 'ws';

/**
 * Inflation for a load of many connections that receive the same compressed units (permessage-
 * deflate messages, or gzip pieces that each end on a sync flush), without a zlib stream per
 * connection. A unit is inflated at once against a dictionary that is a suffix of the
 * connection's true window: zlib then gives exactly what the connection's own inflater would, or
 * fails ("invalid distance too far back") if the unit refers further back — never other bytes.
 * So a unit is first inflated after the connection's last message (its last SSE frame, or its
 * last WebSocket message; alone before the first), then after its whole window. The first
 * result is shared by every connection with the same unit and the same last message, which is what
 * lets one load core read thousands of compressed connections; connections whose writes were
 * batched differently meet again at the next message.
 */

/** The `00 00 ff ff` a permessage-deflate sender leaves off each message (RFC 7692). */
const TRAILER = Buffer.from([0x00, 0x00, 0xff, 0xff]);
/** A unit that refers further back than the dictionary it was tried with. */
const FURTHER_BACK = Symbol('further back');

/**
 * What a unit inflated to: its bytes, and their latin1 text, made once for every connection
 * that shares the result.
 */
export class Inflated {
  private latin1: string | undefined;
  constructor(readonly bytes: Buffer) {}
  get text(): string {
    this.latin1 ??= this.bytes.toString('latin1');
    return this.latin1;
  }
}
type Tried = Inflated | typeof FURTHER_BACK;

function tryInflate(unit: Buffer, windowBits: number, dictionary: Buffer | undefined): Tried {
  try {
    const bytes = inflateRawSync(unit, {
      windowBits,
      finishFlush: zlib.Z_SYNC_FLUSH,
      ...(dictionary && dictionary.length > 0 ? { dictionary } : {}),
    });
    return new Inflated(bytes);
  } catch (err) {
    if (/too far back/.test((err as Error).message)) return FURTHER_BACK;
    throw err;
  }
}

/** Results by key, forgotten all at once when they grow past a bound (units met once). */
class Results {
  private readonly map = new Map<string, Tried>();

  get(key: string): Tried | undefined {
    return this.map.get(key);
  }

  set(key: string, result: Tried): Tried {
    if (this.map.size >= 20_000) this.map.clear();
    this.map.set(key, result);
    return result;
  }
}

/** Units inflated alone, by their bytes. */
const alone = new Results();
/** Units inflated after a last message: by the message's bytes, then by theirs. */
const after = new Map<string, Results>();
function afterMessage(key: string): Results {
  let results = after.get(key);
  if (!results) {
    if (after.size >= 5_000) after.clear();
    results = new Results();
    after.set(key, results);
  }
  return results;
}

/** A connection's last message, made once for each result that connections share. */
interface Last {
  message: Buffer;
  /** The results of the units inflated after it (`afterMessage` of its bytes). */
  results: Results;
}
/** By the way a last message is found, then by the result it was found in. */
const lastOf = new Map<LastMessage, WeakMap<Inflated, Last>>();
function lastMessagesBy(lastMessage: LastMessage): WeakMap<Inflated, Last> {
  let known = lastOf.get(lastMessage);
  if (!known) {
    known = new WeakMap();
    lastOf.set(lastMessage, known);
  }
  return known;
}

/** Where a connection's last message starts in what a unit inflated to. */
export type LastMessage = (inflated: Buffer) => number;
/** The last SSE frame: what follows the last blank line before the end. */
export const lastSseFrame: LastMessage = (inflated) => {
  const end = inflated.length - 2;
  const blank = end > 0 ? inflated.lastIndexOf('\n\n', end - 1) : -1;
  return blank < 0 ? 0 : blank + 2;
};
/** A WebSocket message: the whole unit. */
const wholeUnit: LastMessage = () => 0;

/**
 * One connection's inflater: each `inflate` takes the connection's next unit.
 */
export class SharedInflater {
  /**
   * What the connection inflated, newest last, as much as its window holds from `oldest` on
   * (dropped a few at a time, not one by one).
   */
  private recent: Buffer[] = [];
  private oldest = 0;
  private recentBytes = 0;
  /** The connection's last message. */
  private last: Last | undefined;
  private readonly lastMessages: WeakMap<Inflated, Last>;

  constructor(
    private readonly windowBits: number,
    /** False when every unit starts with an empty window (no context takeover). */
    private readonly takeover: boolean,
    /** True for permessage-deflate, whose sender leaves each message's sync-flush tail off. */
    private readonly trailer: boolean,
    private readonly lastMessage: LastMessage = wholeUnit,
  ) {
    this.lastMessages = lastMessagesBy(lastMessage);
  }

  /**
   * Inflates the connection's next unit, given as its bytes or as their latin1 text (what a
   * socket read as latin1 gives, used as is for the lookups). Only a unit that no connection met
   * before is made into bytes and inflated: after the connection's last message when it has one
   * (one lookup: a unit that refers back no further gives the same bytes either way), alone
   * otherwise, and after the whole window when that fails.
   */
  inflate(compressed: Buffer | string): Inflated {
    const key = typeof compressed === 'string' ? compressed : compressed.toString('latin1');
    const { windowBits, last } = this;
    const results = last ? last.results : alone;
    let result = results.get(key);
    if (result === undefined) {
      result = results.set(key, tryInflate(this.unit(compressed), windowBits, last?.message));
    }
    if (result === FURTHER_BACK && this.recent.length > this.oldest) {
      const window = Buffer.concat(this.recent.slice(this.oldest));
      const dictionary = window.subarray(Math.max(0, window.length - (1 << windowBits)));
      result = tryInflate(this.unit(compressed), windowBits, dictionary);
    }
    if (result === FURTHER_BACK) throw new Error('a unit refers back beyond the window');
    this.remember(result);
    return result;
  }

  /** The bytes zlib inflates for a unit. */
  private unit(compressed: Buffer | string): Buffer {
    const bytes = typeof compressed === 'string' ? Buffer.from(compressed, 'latin1') : compressed;
    return this.trailer ? Buffer.concat([bytes, TRAILER]) : bytes;
  }

  private remember(result: Inflated): void {
    const inflated = result.bytes;
    if (!this.takeover || inflated.length === 0) return;
    let last = this.lastMessages.get(result);
    if (!last) {
      const message = inflated.subarray(this.lastMessage(inflated));
      last = { message, results: afterMessage(message.toString('latin1')) };
      this.lastMessages.set(result, last);
    }
    this.last = last;
    const recent = this.recent;
    recent.push(inflated);
    this.recentBytes += inflated.length;
    const size = 1 << this.windowBits;
    while (
      recent.length - this.oldest > 1 &&
      this.recentBytes - (recent[this.oldest] as Buffer).length >= size
    ) {
      this.recentBytes -= (recent[this.oldest] as Buffer).length;
      this.oldest++;
    }
    if (this.oldest >= 64 && 2 * this.oldest >= recent.length) {
      this.recent = recent.slice(this.oldest);
      this.oldest = 0;
    }
  }
}

interface PerMessageDeflate {
  params: { server_max_window_bits?: number; server_no_context_takeover?: boolean };
  decompress(data: Buffer, fin: boolean, callback: (err: Error | null, result?: Buffer) => void): void;
}

/**
 * Makes a client socket that negotiated permessage-deflate inflate through the shared histories.
 * Call it on `open`, before the first message is read.
 */
export function inflateShared(socket: WebSocket): void {
  const deflate = (socket as unknown as { _extensions: Record<string, PerMessageDeflate | undefined> })
    ._extensions['permessage-deflate'];
  if (!deflate) return;
  if (typeof deflate.decompress !== 'function')
    throw new Error('ws changed: no PerMessageDeflate.decompress');
  const inflater = new SharedInflater(
    deflate.params.server_max_window_bits ?? 15,
    deflate.params.server_no_context_takeover !== true,
    true,
  );
  let fragments: Buffer[] = [];
  deflate.decompress = (data, fin, callback) => {
    let result: Buffer;
    if (!fin) {
      fragments.push(data);
      result = Buffer.alloc(0);
    } else {
      const compressed = fragments.length > 0 ? Buffer.concat([...fragments, data]) : data;
      fragments = [];
      try {
        result = inflater.inflate(compressed).bytes;
      } catch (err) {
        queueMicrotask(() => callback(err as Error));
        return;
      }
    }
    // ws's receiver expects the callback after `decompress` returns, as zlib's would come.
    queueMicrotask(() => callback(null, result));
  };
}

/** The fixed gzip member header (RFC 1952) with no optional fields, as this load accepts it. */
const GZIP_HEADER = 10;

/** The first bytes of a gzip member with a plain header (RFC 1952): magic, deflate, no flags. */
const GZIP_MAGIC = '\x1f\x8b\x08\x00';

/**
 * A gzip stream's body read piece by piece through the shared histories: the first piece starts
 * with the gzip header, every piece ends on a sync flush (one HTTP chunk per server write). A
 * piece is given as its bytes' latin1 text, as the socket read it.
 */
export class SharedGunzip {
  private inflater: SharedInflater | undefined;

  inflate(piece: string): Inflated {
    let deflated = piece;
    if (!this.inflater) {
      if (!piece.startsWith(GZIP_MAGIC)) throw new Error('not a gzip stream with a plain header');
      this.inflater = new SharedInflater(15, true, false, lastSseFrame);
      deflated = piece.slice(GZIP_HEADER);
    }
    return this.inflater.inflate(deflated);
  }
}
