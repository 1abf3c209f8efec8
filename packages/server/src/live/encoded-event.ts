import {
  type DeltaUpdateEvent,
  deltaPatch,
  type RunEvent,
  type RunSnapshot,
  type SnapshotEvent,
} from '@runcast/protocol';
import type { DeflatedFrames } from './socket-writer.js';
import type { GzipFrames } from './sse-writer.js';

const CRLF = Buffer.from('\r\n');

/** A frame for the client, in the form each transport writes. */
export type Frame = RunEvent | SnapshotEvent | DeltaUpdateEvent;

/** The state an update follows: the room's previous update, which a delta is computed against. */
export interface BaseState {
  seq: number;
  snapshot: RunSnapshot;
}

export interface EncodingOptions {
  /** The run's last event: its subscriptions end after it. */
  terminal?: boolean;
  /** For an update: the state it follows, when the Hub knows it (the delta is computed against it). */
  base?: BaseState | undefined;
  /** Commit time in ms; by default the event's `at`. */
  committedAtMs?: number;
  /** The event's JSON when it arrived as JSON (another node's commit): not made again. */
  json?: string | undefined;
}

/**
 * One event and its encodings, each computed at most once per broadcast and shared by every
 * subscriber that writes it: the JSON, the SSE frames (single-run and multiplexed ids) and the
 * bytes each gateway writes to its sockets.
 */
export class EncodedEvent {
  readonly runId: string;
  readonly seq: number;
  readonly isUpdate: boolean;
  readonly isTerminal: boolean;
  /** Commit time in ms, for the delivery-lag histogram. */
  readonly committedAtMs: number;
  private jsonText: string | undefined;
  private sseSingle: string | undefined;
  private sseTail: string | undefined;
  private sseHttpChunk: Buffer | undefined;
  /** The Socket.IO gateway's WebSocket frame of this event, built by the gateway on first use. */
  socketFrame: readonly Buffer[] | undefined = undefined;
  /** Seq of the state this update's delta applies to; -1 when it has none. */
  readonly baseSeq: number;
  private deltaForm: EncodedEvent | null | undefined;
  /** For an update: the state it follows, until its delta is made. */
  private base: BaseState | undefined;
  /** The Socket.IO gateway's engine.io packet of this event (text), built on first use. */
  socketPacket: string | undefined = undefined;
  /** This event's frames for gzipped SSE streams, built by their writer on first use. */
  sseGzip: GzipFrames | undefined = undefined;
  /** This event's compressed WebSocket frames, built by their writer on first use. */
  socketDeflate: DeflatedFrames | undefined = undefined;

  constructor(
    readonly event: Frame,
    { terminal = false, base, committedAtMs, json }: EncodingOptions = {},
  ) {
    this.runId = event.run_id;
    this.seq = event.seq;
    this.isUpdate = event.type === 'update';
    this.isTerminal = terminal;
    this.committedAtMs = committedAtMs ?? Date.parse(event.at);
    this.base = base;
    this.baseSeq = base && this.isUpdate ? base.seq : -1;
    this.jsonText = json;
  }

  /**
   * This update as a delta (`base_seq` and the patch from the base state, see `deltaPatch`), encoded like any
   * event and shared by every subscriber that holds the base; undefined when there is no base or
   * no merge patch can express the change. Computed on first use.
   */
  get delta(): EncodedEvent | undefined {
    if (this.deltaForm === undefined) {
      this.deltaForm = null;
      const base = this.base;
      const event = this.event;
      this.base = undefined; // the base state is not needed once the patch is made
      if (base && event.type === 'update' && 'snapshot' in event) {
        const patch = deltaPatch(base.snapshot, event.snapshot, event.at);
        if (patch) {
          const frame: DeltaUpdateEvent = {
            run_id: event.run_id,
            seq: event.seq,
            type: 'update',
            at: event.at,
            base_seq: base.seq,
            patch,
          };
          this.deltaForm = new EncodedEvent(frame, {
            terminal: this.isTerminal,
            committedAtMs: this.committedAtMs,
          });
        }
      }
    }
    return this.deltaForm ?? undefined;
  }

  get json(): string {
    this.jsonText ??= JSON.stringify(this.event);
    return this.jsonText;
  }

  /** Approximate bytes this event holds while queued. */
  get size(): number {
    return this.json.length;
  }

  /** `id: <seq>` framing of the single-run stream. */
  get sse(): string {
    this.sseSingle ??= `id: ${this.seq}\n${this.sseWithoutId}`;
    return this.sseSingle;
  }

  /** The `event` and `data` lines, shared by streams that write an id line of their own. */
  get sseWithoutId(): string {
    this.sseTail ??= `event: ${this.event.type}\ndata: ${this.json}\n\n`;
    return this.sseTail;
  }

  /**
   * `sse` as one HTTP/1.1 chunk (`<size>\r\n<frame>\r\n`): the bytes `res.write(sse)` sends on a
   * chunked response, in one buffer that a stream writes with one call.
   */
  get sseChunk(): Buffer {
    if (!this.sseHttpChunk) {
      const frame = Buffer.from(this.sse);
      const size = Buffer.from(`${frame.length.toString(16)}\r\n`, 'latin1');
      this.sseHttpChunk = Buffer.concat([size, frame, CRLF]);
    }
    return this.sseHttpChunk;
  }
}
