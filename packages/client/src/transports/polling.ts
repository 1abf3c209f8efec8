import type { LogEvent, ProgressResponse, RunSnapshot } from '@runcast/protocol';
import { errorFromResponse, RUN_ERROR_CODES, RuncastError } from '../errors.js';
import {
  requestHeaders,
  type Transport,
  type TransportContext,
  type TransportHandlers,
} from '../transport.js';

/** Seconds a poll waits on the server for something new (the contract allows up to 30). */
const WAIT_S = 25;
const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELED']);

/**
 * REST long-polling, the last resort: per run, one request at a time —
 * `GET /runs/{id}/progress?since=<seq>&wait=25` with `If-None-Match` — which the server answers
 * as soon as something commits, or with 304 at the deadline. Stops at the terminal state.
 */
export class PollingTransport implements Transport {
  readonly method = 'polling' as const;
  private handlers: TransportHandlers | undefined;
  private readonly loops = new Map<string, AbortController>();
  private closed = false;
  private opened = false;
  private settle: ((error?: RuncastError) => void) | undefined;

  constructor(
    private readonly context: TransportContext,
    private readonly waitS = WAIT_S,
  ) {}

  connect(runIds: readonly string[], handlers: TransportHandlers): Promise<void> {
    this.handlers = handlers;
    return new Promise<void>((resolve, reject) => {
      this.settle = (error) => {
        this.settle = undefined;
        if (error) reject(error);
        else {
          this.opened = true;
          resolve();
        }
      };
      if (runIds.length === 0) this.settle();
      for (const runId of runIds) this.subscribe(runId);
    });
  }

  subscribe(runId: string): void {
    if (this.closed || this.loops.has(runId)) return;
    const controller = new AbortController();
    this.loops.set(runId, controller);
    this.poll(runId, controller).catch((err: unknown) => {
      if (controller.signal.aborted || this.closed) return;
      this.fail(
        err instanceof RuncastError
          ? err
          : new RuncastError('NETWORK', (err as Error)?.message ?? 'poll failed'),
      );
    });
  }

  unsubscribe(runId: string): void {
    this.loops.get(runId)?.abort();
    this.loops.delete(runId);
  }

  private async poll(runId: string, controller: AbortController): Promise<void> {
    // A gap reported on the first page of a paged catch-up is announced with the final state.
    let truncated = false;
    // The first request answers at once, so that a working transport is known at once.
    let wait = 0;
    while (!controller.signal.aborted) {
      const since = this.context.cursor(runId);
      const query = new URLSearchParams();
      const headers = await requestHeaders(this.context, 'polling');
      if (since !== undefined) {
        query.set('since', String(since));
        if (wait > 0) query.set('wait', String(wait));
        headers['if-none-match'] = `"${since}"`;
      }
      const startedMs = this.context.env.now();
      const response = await this.context.env.fetch(
        `${this.context.baseUrl}/api/v1/runs/${encodeURIComponent(runId)}/progress${since === undefined ? '' : `?${query}`}`,
        { headers, credentials: 'include', cache: 'no-store', signal: controller.signal },
      );
      if (controller.signal.aborted) return;
      const waited = wait > 0;
      wait = this.waitS;
      if (response.status === 304) {
        // Nothing new. A long-poll answered at once means there is nothing to wait for (a run
        // already over): pause, so that polling never turns into a busy loop.
        this.markOpen();
        if (waited && this.context.env.now() - startedMs < 1000) await this.pause(1000, controller.signal);
        continue;
      }
      if (!response.ok) {
        const error = await errorFromResponse(response);
        if (RUN_ERROR_CODES.has(error.code)) {
          this.loops.delete(runId);
          this.handlers?.onEvent({
            run_id: runId,
            type: 'error',
            error: { code: error.code, message: error.message },
          });
          this.markOpen();
          return;
        }
        throw error;
      }
      const body = (await response.json()) as ProgressResponse;
      if (controller.signal.aborted) return;
      truncated ||= body.events_truncated === true;
      this.deliver(runId, body, truncated);
      if (!body.events_more) truncated = false;
      this.markOpen();
      // Only part of the missed logs came: fetch the rest before taking the state.
      if (body.events_more) continue;
      if (TERMINAL.has(body.status)) {
        this.loops.delete(runId);
        return;
      }
    }
  }

  /**
   * Hands over a poll's answer in the contract's order: the missed logs, then the state at the
   * run's seq (as a snapshot; the service turns it into an update when it is not the first).
   */
  private deliver(runId: string, body: ProgressResponse, truncated: boolean): void {
    const { events, events_truncated: _truncated, events_more, ...snapshot } = body;
    for (const event of (events ?? []) as LogEvent[]) this.handlers?.onEvent(event);
    if (events_more) return;
    this.handlers?.onEvent({
      run_id: runId,
      seq: snapshot.seq,
      type: 'snapshot',
      at: new Date(this.context.env.now()).toISOString(),
      snapshot: snapshot as RunSnapshot,
      ...(truncated ? { events_truncated: true } : {}),
    });
  }

  private pause(ms: number, signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const timer = this.context.env.setTimeout(resolve, ms);
      signal.addEventListener('abort', () => {
        this.context.env.clearTimeout(timer);
        resolve();
      });
    });
  }

  private markOpen(): void {
    this.settle?.();
  }

  private fail(error: RuncastError): void {
    const wasOpen = this.opened;
    const settle = this.settle;
    this.close();
    if (!wasOpen && settle) settle(error);
    else if (wasOpen) this.handlers?.onClose(error);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.opened = false;
    for (const controller of this.loops.values()) controller.abort();
    this.loops.clear();
  }
}
