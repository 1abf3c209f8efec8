import {
  applyMergePatch,
  type LogEvent,
  type ProgressDelta,
  type ProgressResponse,
  type RunSnapshot,
} from '@runcast/protocol';
import { errorFromResponse, RUN_ERROR_CODES, RuncastError } from '../errors.js';
import { HeldStates } from '../held-states.js';
import {
  asksDelta,
  refusedDelta,
  requestHeaders,
  type Transport,
  type TransportContext,
  type TransportHandlers,
} from '../transport.js';
import type { ProgressEvent } from '../types.js';

const TERMINAL = new Set(['COMPLETED', 'FAILED', 'CANCELED']);
/** Statuses a proxy answers when it gave up on a long-poll that waited longer than it allows. */
const PROXY_CUT = new Set([502, 504]);

/** What one request for a run's progress brought. */
type PollOutcome =
  /** 304: nothing new since the cursor. */
  | { kind: 'unchanged' }
  /** A page of missed logs; more follow before the state. */
  | { kind: 'more'; truncated: boolean }
  /** The logs and the state at the run's seq were handed over. */
  | { kind: 'state'; terminal: boolean }
  /** The run ended for this caller (not found, forbidden): its error event was handed over. */
  | { kind: 'run-error' }
  /** A proxy cut a long-poll after `waitedMs`: the wait is longer than the proxy allows. */
  | { kind: 'cut'; waitedMs: number };

/**
 * One `GET /runs/{id}/progress?since=<seq>&wait=<s>` with `If-None-Match`, its answer handed to
 * `onEvent` in the contract's order: the missed logs, then the state at the run's seq (as a
 * snapshot; the service turns it into an update when it is not the first). A gap reported on an
 * earlier page (`truncatedBefore`) is announced with the state. With `states` (the polling
 * transport's), it asks for the state as a delta of the one held (`delta=1&state_seq=`) and for
 * what follows the first event at once to come with it (`linger_ms`). Throws on any other failure.
 */
async function pollOnce(
  context: TransportContext,
  runId: string,
  waitS: number,
  truncatedBefore: boolean,
  signal: AbortSignal,
  onEvent: (event: ProgressEvent) => void,
  reportAs: 'polling' | null = 'polling',
  states?: HeldStates,
): Promise<PollOutcome> {
  const since = context.cursor(runId);
  const query = new URLSearchParams();
  const headers = await requestHeaders(context, reportAs);
  if (since !== undefined) {
    query.set('since', String(since));
    if (waitS > 0) {
      query.set('wait', String(waitS));
      if (states && context.pollLingerMs > 0) query.set('linger_ms', String(context.pollLingerMs));
    }
    headers['if-none-match'] = `"${since}"`;
  }
  const held = states?.get(runId);
  const delta = states !== undefined && asksDelta(context);
  if (delta) {
    query.set('delta', '1');
    if (held) query.set('state_seq', String(held.seq));
  }
  const search = query.toString();
  const startedMs = context.env.now();
  const response = await context.env.fetch(
    `${context.baseUrl}/api/v1/runs/${encodeURIComponent(runId)}/progress${search ? `?${search}` : ''}`,
    { headers, credentials: 'include', cache: 'no-store', signal },
  );
  if (response.status === 304) return { kind: 'unchanged' };
  const waitedMs = context.env.now() - startedMs;
  // A gateway error after a real wait is a proxy's idle timeout, not a failure of the server.
  if (PROXY_CUT.has(response.status) && waitS > 0 && waitedMs >= 1000) return { kind: 'cut', waitedMs };
  if (!response.ok) {
    const error = await errorFromResponse(response);
    // A server older than deltas: the next poll asks for the whole state, at once.
    if (refusedDelta(context, delta, error.code)) return { kind: 'more', truncated: truncatedBefore };
    if (!RUN_ERROR_CODES.has(error.code)) throw error;
    onEvent({ run_id: runId, type: 'error', error: { code: error.code, message: error.message } });
    return { kind: 'run-error' };
  }
  const body = (await response.json()) as ProgressResponse | ProgressDelta;
  if (signal.aborted) return { kind: 'unchanged' };
  for (const event of (body.events ?? []) as LogEvent[]) onEvent(event);
  const truncated = truncatedBefore || body.events_truncated === true;
  if (body.events_more) return { kind: 'more', truncated };
  let snapshot: RunSnapshot;
  if ('patch' in body) {
    if (held?.seq !== body.base_seq) {
      // Not a delta of the state held: never guessed at; the next poll asks for the whole state.
      states?.forget(runId);
      return { kind: 'more', truncated };
    }
    snapshot = applyMergePatch(held.snapshot, body.patch) as RunSnapshot;
  } else {
    const { events: _events, events_truncated: _truncated, events_more: _more, ...whole } = body;
    snapshot = whole as RunSnapshot;
  }
  states?.hold(runId, snapshot.seq, snapshot);
  onEvent({
    run_id: runId,
    seq: snapshot.seq,
    type: 'snapshot',
    at: new Date(context.env.now()).toISOString(),
    snapshot,
    ...(truncated ? { events_truncated: true } : {}),
  });
  return { kind: 'state', terminal: TERMINAL.has(snapshot.status) };
}

/**
 * A run's state now over REST, with the logs missed since its cursor (every page of them), in
 * the order a transport's opening brings them. One round trip when nothing was missed.
 */
export async function fetchRunOnce(
  context: TransportContext,
  runId: string,
  signal: AbortSignal,
  onEvent: (event: ProgressEvent) => void,
): Promise<void> {
  let truncated = false;
  for (;;) {
    const outcome = await pollOnce(context, runId, 0, truncated, signal, onEvent, null);
    if (outcome.kind !== 'more') return;
    truncated = outcome.truncated;
  }
}

/**
 * REST long-polling, the last resort: per run, one request at a time —
 * `GET /runs/{id}/progress?since=<seq>&wait=<s>` with `If-None-Match` — which the server answers
 * as soon as something commits, or with 304 at the deadline. Stops at the terminal state. A
 * proxy that cuts long-polls (502/504 after a wait) shortens the wait for every later poll.
 */
export class PollingTransport implements Transport {
  readonly method = 'polling' as const;
  private handlers: TransportHandlers | undefined;
  private readonly loops = new Map<string, AbortController>();
  private closed = false;
  private opened = false;
  private settle: ((error?: RuncastError) => void) | undefined;
  /** Each run's state as the last answer left it, which the next answer may be a delta of. */
  private readonly states = new HeldStates();

  constructor(private readonly context: TransportContext) {}

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
    this.states.forget(runId);
  }

  /** The loop reads the cursor before every poll: the next one resumes from it anyway. */
  resume(_runId: string): void {}

  private async poll(runId: string, controller: AbortController): Promise<void> {
    const hints = this.context.hints;
    // A gap reported on the first page of a paged catch-up is announced with the final state.
    let truncated = false;
    // The first request answers at once, so that a working transport is known at once.
    let wait = 0;
    const onEvent = (event: ProgressEvent) => {
      if (!controller.signal.aborted) this.handlers?.onEvent(event);
    };
    while (!controller.signal.aborted) {
      const startedMs = this.context.env.now();
      const waited = wait > 0;
      const outcome = await pollOnce(
        this.context,
        runId,
        wait,
        truncated,
        controller.signal,
        onEvent,
        'polling',
        this.states,
      );
      if (controller.signal.aborted) return;
      wait = hints.pollWaitS;
      switch (outcome.kind) {
        case 'cut':
          // Wait a little less than the proxy allowed, from now on.
          hints.pollWaitS = Math.max(
            1,
            Math.min(hints.pollWaitS - 1, Math.floor(outcome.waitedMs / 1000) - 1),
          );
          wait = hints.pollWaitS;
          this.markOpen();
          continue;
        case 'unchanged':
          // Nothing new. A long-poll answered at once means there is nothing to wait for (a run
          // already over): pause, so that polling never turns into a busy loop.
          this.markOpen();
          if (waited && this.context.env.now() - startedMs < 1000) await this.pause(1000, controller.signal);
          continue;
        case 'run-error':
          this.loops.delete(runId);
          this.markOpen();
          return;
        case 'more':
          // Only part of the missed logs came: fetch the rest before taking the state.
          truncated = outcome.truncated;
          this.markOpen();
          wait = 0;
          continue;
        case 'state':
          truncated = false;
          this.markOpen();
          if (outcome.terminal) {
            this.loops.delete(runId);
            return;
          }
      }
    }
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
