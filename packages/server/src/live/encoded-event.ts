import type { RunEvent, SnapshotEvent } from '@runcast/protocol';

/** A frame for the client, in the form each transport writes. */
export type Frame = RunEvent | SnapshotEvent;

/**
 * One event and its encodings, each computed at most once per broadcast and shared by every
 * subscriber that writes it: the JSON, the SSE frames (single-run and multiplexed ids) and
 * whatever a gateway caches in `cache`.
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
  /** Gateway-specific encodings (the Socket.IO packet), keyed by the gateway. */
  readonly cache = new Map<string, unknown>();

  constructor(
    readonly event: Frame,
    terminal = false,
  ) {
    this.runId = event.run_id;
    this.seq = event.seq;
    this.isUpdate = event.type === 'update';
    this.isTerminal = terminal;
    this.committedAtMs = Date.parse(event.at);
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
}
