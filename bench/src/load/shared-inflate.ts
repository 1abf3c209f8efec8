import { inflateRawSync, constants as zlib } from 'node:zlib';
import type WebSocket from 'ws';

/**
 * permessage-deflate inflation for a load of many sockets that receive the same frames: what a
 * compressed message inflates to depends only on the bytes of the message and on the socket's
 * window (the last 2^windowBits bytes it inflated), so sockets with the same history share one
 * inflation of each message. A socket's history is a node of a tree (one child per message
 * that followed it), which holds the window; a message not yet seen after a node is inflated at
 * once against that window, without a zlib stream per socket. The result is what the socket's
 * own inflater would give, at a cost the load's one core can carry for thousands of sockets.
 */
interface History {
  /** The last 2^windowBits bytes inflated on this path (empty at the start of a connection). */
  window: Buffer;
  /** The units seen after this history, by their compressed bytes. */
  next: Map<string, Step>;
}
/** A message inflated after a history, and the history it leads to. */
interface Step {
  message: Buffer;
  history: History;
}

/** The `00 00 ff ff` a permessage-deflate sender leaves off each message (RFC 7692). */
const TRAILER = Buffer.from([0x00, 0x00, 0xff, 0xff]);
const roots = new Map<string, History>();

function rootFor(windowBits: number, trailer: boolean): History {
  const kind = `${windowBits}${trailer ? '+trailer' : ''}`;
  let root = roots.get(kind);
  if (!root) {
    root = { window: Buffer.alloc(0), next: new Map() };
    roots.set(kind, root);
  }
  return root;
}

function inflateAfter(history: History, compressed: Buffer, windowBits: number, trailer: boolean): Step {
  const key = compressed.toString('latin1');
  const known = history.next.get(key);
  if (known) return known;
  const message = inflateRawSync(trailer ? Buffer.concat([compressed, TRAILER]) : compressed, {
    windowBits,
    finishFlush: zlib.Z_SYNC_FLUSH,
    ...(history.window.length > 0 ? { dictionary: history.window } : {}),
  });
  const size = 1 << windowBits;
  const joined = Buffer.concat([history.window, message]);
  const step: Step = {
    message,
    history: {
      window: Buffer.from(joined.subarray(Math.max(0, joined.length - size))),
      next: new Map(),
    },
  };
  history.next.set(key, step);
  return step;
}

/**
 * One connection's way through the shared histories: each `inflate` takes the next compressed
 * unit (a permessage-deflate message, or a piece of a gzip stream that ends on a sync flush).
 */
export class SharedInflater {
  private readonly root: History;
  private history: History;

  constructor(
    private readonly windowBits: number,
    /** False when every unit starts with an empty window (no context takeover). */
    private readonly takeover: boolean,
    /** True for permessage-deflate, whose sender leaves each message's sync-flush tail off. */
    private readonly trailer: boolean,
  ) {
    this.root = rootFor(windowBits, trailer);
    this.history = this.root;
  }

  inflate(compressed: Buffer): Buffer {
    const step = inflateAfter(this.history, compressed, this.windowBits, this.trailer);
    this.history = this.takeover ? step.history : this.root;
    return step.message;
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
        result = inflater.inflate(compressed);
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

/**
 * A gzip stream's body read piece by piece through the shared histories: the first piece starts
 * with the gzip header, every piece ends on a sync flush (one HTTP chunk per server write).
 */
export class SharedGunzip {
  private inflater: SharedInflater | undefined;

  inflate(piece: Buffer): Buffer {
    let deflated = piece;
    if (!this.inflater) {
      if (piece[0] !== 0x1f || piece[1] !== 0x8b || piece[2] !== 8 || piece[3] !== 0) {
        throw new Error('not a gzip stream with a plain header');
      }
      this.inflater = new SharedInflater(15, true, false);
      deflated = piece.subarray(GZIP_HEADER);
    }
    return this.inflater.inflate(deflated);
  }
}
