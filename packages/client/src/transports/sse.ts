import { SSE_RUN_ERROR } from '@runcast/protocol';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { errorFromResponse, RUN_ERROR_CODES, RuncastError } from '../errors.js';
import { HeldStates, type ReceivedEvent } from '../held-states.js';
import {
  asksDelta,
  refusedDelta,
  requestHeaders,
  type Transport,
  type TransportContext,
  type TransportHandlers,
} from '../transport.js';
import type { ProgressEvent } from '../types.js';

/** A stream silent for this long (no event, no keep-alive) is taken for dead. */
const SILENCE_TIMEOUT_MS = 45_000;

/**
 * Server-Sent Events over `fetch` (so that the Authorization header works), parsed by
 * eventsource-parser. All runs share one multiplexed stream; following another run reopens
 * the stream with every run's cursor, which the server answers without a gap.
 */
export class SseTransport implements Transport {
  readonly method = 'sse' as const;
  private handlers: TransportHandlers | undefined;
  private readonly runs = new Set<string>();
  private abort: AbortController | undefined;
  private closed = false;
  private opened = false;
  private generation = 0;
  private silenceTimer: unknown;
  private reopenScheduled = false;

  constructor(
    private readonly context: TransportContext,
    private readonly silenceTimeoutMs = SILENCE_TIMEOUT_MS,
  ) {}

  connect(runIds: readonly string[], handlers: TransportHandlers): Promise<void> {
    this.handlers = handlers;
    for (const runId of runIds) this.runs.add(runId);
    return new Promise<void>((resolve, reject) => {
      this.open((error) => (error ? reject(error) : resolve()));
    });
  }

  /** Opens (or reopens) the stream; `settle` learns whether the first snapshot came. */
  private open(settle?: (error?: RuncastError) => void): void {
    this.abort?.abort();
    const generation = ++this.generation;
    if (this.runs.size === 0) {
      // Nothing to follow: idle, but a working transport.
      this.opened = true;
      settle?.();
      return;
    }
    const controller = new AbortController();
    this.abort = controller;
    this.run(generation, controller, settle).catch((err: unknown) => {
      if (generation !== this.generation || this.closed) return;
      const error =
        err instanceof RuncastError
          ? err
          : new RuncastError('NETWORK', (err as Error)?.message ?? 'stream failed');
      this.fail(error, settle);
    });
  }

  private async run(
    generation: number,
    controller: AbortController,
    settle: ((error?: RuncastError) => void) | undefined,
  ): Promise<void> {
    const runIds = [...this.runs];
    const cursors = runIds.flatMap((runId) => {
      const seq = this.context.cursor(runId);
      return seq === undefined ? [] : [`${runId}:${seq}`];
    });
    const query = new URLSearchParams({ runs: runIds.join(',') });
    if (cursors.length > 0) query.set('since', cursors.join(','));
    // Asked only once a proxy was seen to cut an idle stream: an older server refuses the field.
    const keepaliveS = this.context.hints.keepaliveS;
    if (keepaliveS !== undefined) query.set('keepalive', String(keepaliveS));
    const delta = asksDelta(this.context);
    if (delta) query.set('delta', '1');
    const headers = await requestHeaders(this.context, 'sse');
    headers.accept = 'text/event-stream';
    const response = await this.context.env.fetch(`${this.context.baseUrl}/api/v1/stream?${query}`, {
      headers,
      credentials: 'include',
      cache: 'no-store',
      signal: controller.signal,
    });
    if (generation !== this.generation) return;
    if (response.status === 204) {
      // Every run is already over and we have its final seq.
      this.opened = true;
      settle?.();
      return;
    }
    if (!response.ok) {
      const error = await errorFromResponse(response);
      if (refusedDelta(this.context, delta, error.code)) {
        this.open(settle);
        return;
      }
      const details =
        error.code === 'RUN_NOT_FOUND' ? runIds.find((id) => error.message.includes(id)) : undefined;
      if (details && RUN_ERROR_CODES.has(error.code)) {
        this.runs.delete(details);
        this.handlers?.onEvent({
          run_id: details,
          type: 'error',
          error: { code: error.code, message: error.message },
        });
        this.open(settle);
        return;
      }
      throw error;
    }
    if (!response.body) throw new RuncastError('NO_BODY', 'the stream has no body');
    let first = true;
    // Each stream opens every run with a snapshot: what an earlier stream held does not count.
    const states = new HeldStates();
    // A delta that did not apply: the stream is opened again, for a snapshot of every run.
    const reopen = () => this.scheduleReopen();
    const parser = createParser({
      onEvent: (message: EventSourceMessage) => {
        if (generation !== this.generation) return;
        this.armSilenceTimer(generation);
        if (message.event === 'keepalive') return;
        if (message.event === 'reconnect') {
          throw new RuncastError('SERVER_SHUTDOWN', 'the server asked clients to reconnect');
        }
        if (message.event === SSE_RUN_ERROR) {
          // Access to the run ended (or it could not be opened): the run's subscription is over.
          const failure = JSON.parse(message.data) as ProgressEvent;
          this.runs.delete(failure.run_id);
          this.handlers?.onEvent(failure);
          return;
        }
        if (message.event !== 'snapshot' && message.event !== 'update' && message.event !== 'log') return;
        const event = states.take(JSON.parse(message.data) as ReceivedEvent, reopen);
        if (!event) return;
        if (event.type === 'snapshot' && first) {
          first = false;
          this.opened = true;
          settle?.();
        }
        this.handlers?.onEvent(event);
      },
    });
    this.armSilenceTimer(generation);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (generation !== this.generation) {
        await reader.cancel().catch(() => {});
        return;
      }
      if (done) break;
      parser.feed(value);
    }
    // The server ends the stream after the last followed run's terminal update. Runs the
    // service still follows (or a stream cut by a proxy) mean the connection was lost.
    this.clearSilenceTimer();
    throw new RuncastError('STREAM_ENDED', 'the event stream ended');
  }

  private armSilenceTimer(generation: number): void {
    this.clearSilenceTimer();
    this.silenceTimer = this.context.env.setTimeout(() => {
      if (generation !== this.generation || this.closed) return;
      this.fail(new RuncastError('SILENT', 'no event or keep-alive for too long'));
    }, this.silenceTimeoutMs);
  }

  private clearSilenceTimer(): void {
    if (this.silenceTimer !== undefined) this.context.env.clearTimeout(this.silenceTimer);
    this.silenceTimer = undefined;
  }

  private fail(error: RuncastError, settle?: (error?: RuncastError) => void): void {
    const wasOpen = this.opened;
    this.close();
    if (!wasOpen && settle) settle(error);
    else if (wasOpen) this.handlers?.onClose(error);
  }

  /** Reopens once per tick however many runs were added or removed in it. */
  private scheduleReopen(): void {
    if (this.reopenScheduled || this.closed || !this.opened) return;
    this.reopenScheduled = true;
    queueMicrotask(() => {
      this.reopenScheduled = false;
      if (!this.closed) this.open();
    });
  }

  subscribe(runId: string): void {
    if (this.runs.has(runId)) return;
    this.runs.add(runId);
    this.scheduleReopen();
  }

  resume(runId: string): void {
    if (this.runs.has(runId)) this.scheduleReopen();
  }

  unsubscribe(runId: string): void {
    if (!this.runs.delete(runId)) return;
    this.scheduleReopen();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.opened = false;
    this.generation++;
    this.clearSilenceTimer();
    this.abort?.abort();
  }
}
