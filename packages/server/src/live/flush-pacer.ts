/** Back-to-back flushes in a row that start pacing. */
const BACK_TO_BACK_TO_PACE = 3;
/** A flush shorter than this never counts as keeping the server busy. */
const NEGLIGIBLE_FLUSH_MS = 1;

/**
 * When the Hub's next flush may start. Flushes go out at once while the fan-out keeps up. Once
 * they run back to back, three in a row with hardly any time between them, the server is
 * saturated: from then on each flush waits as long as the last one took, so that the fan-out
 * takes half the server at most and the updates committed meanwhile conflate in the queues.
 * Subscribers then get fewer, newer updates instead of a backlog in their socket buffers, which
 * no conflation can reach (and which TCP lets grow to seconds before it pushes back). A wait
 * that brought at most one commit ends the pacing.
 */
export class FlushPacer {
  private paced = false;
  private backToBack = 0;
  private commits = 0;
  private lastEndMs = Number.NEGATIVE_INFINITY;
  private lastMs = 0;

  constructor(private readonly nowMs: () => number) {}

  /** True while flushes wait (for tests and metrics). */
  get isPacing(): boolean {
    return this.paced;
  }

  /** A commit queued something for the next flush. */
  committed(): void {
    this.commits++;
  }

  /** How long the next flush should wait, in milliseconds: 0 for at once. */
  delayMs(): number {
    if (!this.paced) return 0;
    return Math.max(0, this.lastEndMs + this.lastMs - this.nowMs());
  }

  /** Times a flush: call `flushed` with what this returns when it is done. */
  flushing(): number {
    return this.nowMs();
  }

  flushed(startMs: number): void {
    const endMs = this.nowMs();
    const tookMs = endMs - startMs;
    if (this.paced) {
      if (this.commits <= 1) {
        this.paced = false;
        this.backToBack = 0;
      }
    } else if (tookMs >= NEGLIGIBLE_FLUSH_MS && startMs - this.lastEndMs < tookMs / 4) {
      this.backToBack++;
      if (this.backToBack >= BACK_TO_BACK_TO_PACE) this.paced = true;
    } else {
      this.backToBack = 0;
    }
    this.commits = 0;
    this.lastEndMs = endMs;
    this.lastMs = tookMs;
  }
}
