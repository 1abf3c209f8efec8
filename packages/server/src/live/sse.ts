import type { ServerResponse } from 'node:http';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { DELTA_STREAM_DOC, DeltaFlag, isTerminal, RunId, SSE_RUN_ERROR } from '@runcast/protocol';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { requirePrincipal } from '../auth/plugin.js';
import type { Policy } from '../auth/policy.js';
import type { Principal } from '../auth/principal.js';
import type { SseCompression } from '../config.js';
import { AppError } from '../errors.js';
import { negotiateCoding } from '../http/accept-encoding.js';
import type { ConnectionDrain } from '../http/drain.js';
import type { Metrics } from '../metrics.js';
import type { RunRecord } from '../store/store.js';
import { EncodedEvent } from './encoded-event.js';
import type { Hub, Opening } from './hub.js';
import { GzipSseWriter, PlainSseWriter, type SseWriter } from './sse-writer.js';
import type { DisconnectReason, RunFailure, Sink, Subscriber } from './subscriber.js';

/** What the client is told when opening a run failed: the contract's code, or INTERNAL. */
export function failureOf(err: unknown): RunFailure {
  if (err instanceof AppError) return { code: err.code, message: err.message };
  return { code: 'INTERNAL', message: 'internal error' };
}

export interface SseOptions {
  hub: Hub;
  policy: Policy;
  metrics: Metrics;
  /** Interval of keepalive events, unless a stream asks for a shorter one (`?keepalive=`). */
  keepaliveMs: number;
  /** Reconnect delay the stream asks EventSource clients to use. */
  retryMs: number;
  /** Lets shutdown wait until each stream has flushed its last frame. */
  drain: ConnectionDrain;
  /** `gzip`: streams whose client accepts it are gzipped (see `GzipSseWriter`). */
  compression: SseCompression;
}

const RUN_ID = /^run_[0-9A-HJKMNP-TV-Z]{26}$/;
const MAX_RUNS_PER_STREAM = 100;

/**
 * One SSE response as a Hub sink. A multiplexed stream's id is the cursor of every run it
 * carries (`<run_id>:<seq>,…`): EventSource resends only the last id it saw, and that one id
 * must let the server resume every run — without it, the other runs would lose the logs of the
 * gap, and finished ones would be replayed on every reconnect instead of ending with 204.
 */
class SseSink implements Sink {
  readonly transport = 'sse' as const;
  private ended = false;
  private readonly openRuns = new Set<string>();
  private readonly cursors: Map<string, number> | undefined;

  constructor(
    private readonly res: ServerResponse,
    /** Plain or gzip; a single-run stream's events are written through its shared encodings. */
    private readonly writer: SseWriter,
    multiplexed: Map<string, number | undefined> | undefined,
    private readonly retryMs: number,
  ) {
    if (multiplexed) {
      this.cursors = new Map();
      for (const [runId, seq] of multiplexed) if (seq !== undefined) this.cursors.set(runId, seq);
    }
  }

  follow(runId: string): void {
    this.openRuns.add(runId);
  }

  unfollow(runId: string): void {
    this.openRuns.delete(runId);
  }

  get following(): number {
    return this.openRuns.size;
  }

  isBusy(): boolean {
    return this.writer.isBusy();
  }

  /** A multiplexed stream's id after `event`: every run's cursor, the event's run moved to it. */
  private idAfter(cursors: Map<string, number>, event: EncodedEvent): string {
    cursors.set(event.runId, event.seq);
    let id = '';
    for (const [runId, seq] of cursors) id += `${id ? ',' : ''}${runId}:${seq}`;
    return id;
  }

  frame(event: EncodedEvent): string {
    if (!this.cursors) return event.sse;
    return `id: ${this.idAfter(this.cursors, event)}\n${event.sseWithoutId}`;
  }

  write(events: readonly EncodedEvent[]): void {
    if (this.ended) return;
    const cursors = this.cursors;
    this.writer.writeEvents(events, cursors && events.map((event) => this.idAfter(cursors, event)));
  }

  /** Writes text of this stream (headers first, on the first write). */
  writeRaw(chunk: string): void {
    if (this.ended) return;
    this.writer.writeText(chunk);
  }

  runEnded(runId: string): void {
    this.openRuns.delete(runId);
    if (this.openRuns.size === 0) this.end();
  }

  runFailed(runId: string, failure: RunFailure): void {
    // No id: the stream's cursor stays where the last event of the run left it.
    this.writeRaw(
      `event: ${SSE_RUN_ERROR}\ndata: ${JSON.stringify({ run_id: runId, type: 'error', error: failure })}\n\n`,
    );
    this.runEnded(runId);
  }

  close(reason: DisconnectReason): void {
    if (this.ended) return;
    if (reason === 'ACCESS_ENDED') {
      // Every run was told why (`runFailed`); nothing to resume.
      this.end();
      return;
    }
    if (reason === 'SLOW_CONSUMER') {
      // The client is not reading: nothing more can be written; it resumes from its last id.
      this.ended = true;
      this.res.destroy();
      return;
    }
    this.writeRaw(`retry: ${this.retryMs}\nevent: reconnect\ndata: ${JSON.stringify({ reason })}\n\n`);
    this.end();
  }

  get isEnded(): boolean {
    return this.ended;
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.writer.end();
  }
}

/** Parses `Last-Event-ID`: a bare seq on the single-run stream. */
function parseSeq(raw: string | undefined, what: string): number | undefined {
  if (raw === undefined || raw === '') return undefined;
  const seq = /^\d{1,16}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!Number.isSafeInteger(seq)) {
    throw new AppError('INVALID_INPUT', `${what} must be an integer from 0 to ${Number.MAX_SAFE_INTEGER}`);
  }
  return seq;
}

/** Parses `<run_id>:<seq>,…` cursors of the multiplexed stream. */
function parseCursors(raw: string | undefined, what: string, into: Map<string, number>): void {
  if (raw === undefined || raw === '') return;
  for (const part of raw.split(',')) {
    const match = /^(run_[0-9A-HJKMNP-TV-Z]{26}):(\d{1,16})$/.exec(part.trim());
    const seq = Number(match?.[2]);
    if (!match?.[1] || !Number.isSafeInteger(seq)) {
      throw new AppError('INVALID_INPUT', `${what} must be <run_id>:<seq>[,…], got "${part}"`);
    }
    into.set(match[1], seq);
  }
}

function header(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * `?keepalive=<s>`: a client behind a proxy that cuts idle streams sooner than the server's
 * keepalive interval asks for a shorter one. Longer than the server's is not granted.
 */
const KEEPALIVE_QUERY = Type.Optional(Type.Integer({ minimum: 1, maximum: 60 }));

/**
 * Keepalive events for every open stream: one timer per interval in use, shared by the streams
 * that asked for it (most use the server's), stopped when its last stream closes.
 */
class Keepalives {
  private readonly groups = new Map<number, { timer: NodeJS.Timeout; sinks: Set<SseSink> }>();

  constructor(private readonly defaultMs: number) {}

  /** Adds a stream; returns the interval it got (`askedS` when shorter than the default). */
  add(sink: SseSink, askedS: number | undefined): number {
    const intervalMs = askedS === undefined ? this.defaultMs : Math.min(this.defaultMs, askedS * 1000);
    let group = this.groups.get(intervalMs);
    if (!group) {
      const sinks = new Set<SseSink>();
      const timer = setInterval(() => {
        const frame = `event: keepalive\ndata: {"timestamp":"${new Date().toISOString()}"}\n\n`;
        for (const each of sinks) if (!each.isBusy()) each.writeRaw(frame);
      }, intervalMs);
      timer.unref();
      group = { timer, sinks };
      this.groups.set(intervalMs, group);
    }
    group.sinks.add(sink);
    return intervalMs;
  }

  delete(sink: SseSink, intervalMs: number): void {
    const group = this.groups.get(intervalMs);
    if (!group) return;
    group.sinks.delete(sink);
    if (group.sinks.size === 0) {
      clearInterval(group.timer);
      this.groups.delete(intervalMs);
    }
  }

  close(): void {
    for (const group of this.groups.values()) clearInterval(group.timer);
    this.groups.clear();
  }
}

const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  'x-accel-buffering': 'no',
  connection: 'keep-alive',
};

/** SSE gateway: `GET /runs/{run_id}/stream` and the multiplexed `GET /stream?runs=…`. */
export const sseRoutes: FastifyPluginAsyncTypebox<SseOptions> = async (app, options) => {
  const { hub, policy, metrics } = options;
  const keepalives = new Keepalives(options.keepaliveMs);
  app.addHook('onClose', async () => keepalives.close());

  /**
   * Opens the stream: answers 204 when every run is already over and the client has its final
   * seq; otherwise writes `retry`, then opens each run through the Hub (missed logs, a page at a
   * time, then its snapshot) — all in the first write when the replay is small — then goes live.
   */
  async function stream(
    request: FastifyRequest,
    reply: FastifyReply,
    principal: Principal,
    runs: readonly RunRecord[],
    cursors: Map<string, number | undefined>,
    multiplexed: boolean,
    keepaliveS: number | undefined,
    delta: boolean,
  ): Promise<unknown> {
    metrics.recordClientHeaders(request.headers);
    const finished = (run: RunRecord) => {
      const since = cursors.get(run.run_id);
      return isTerminal(run.status) && since !== undefined && since >= run.seq;
    };
    const pending = runs.filter((run) => !finished(run));
    if (pending.length === 0) return reply.code(204).send();
    reply.hijack();
    const res = reply.raw;
    options.drain.track(res);
    const drained = () => subscriber.flush();
    const writer =
      options.compression === 'gzip' && negotiateCoding(request.headers['accept-encoding'], ['gzip'])
        ? new GzipSseWriter(res, !multiplexed, drained)
        : new PlainSseWriter(res, !multiplexed, drained);
    res.writeHead(200, {
      ...SSE_HEADERS,
      ...(options.compression === 'off' ? {} : { vary: 'Accept-Encoding' }),
      ...writer.headers,
    });
    const sink = new SseSink(res, writer, multiplexed ? cursors : undefined, options.retryMs);
    const subscriber: Subscriber = hub.attach(sink, principal);
    const keepaliveMs = keepalives.add(sink, keepaliveS);
    res.on('close', () => {
      keepalives.delete(sink, keepaliveMs);
      hub.detach(subscriber);
    });
    let buffered = `retry: ${options.retryMs}\n\n`;
    const opening: Opening = {
      logs(events) {
        for (const event of events) buffered += sink.frame(event);
      },
      snapshot(event, live) {
        buffered += sink.frame(new EncodedEvent(event));
        if (!live) sink.unfollow(event.run_id);
      },
      flush() {
        if (buffered === '') return;
        sink.writeRaw(buffered);
        buffered = '';
      },
    };
    // Followed from the start, so that a run ending while another still opens keeps the stream.
    for (const run of pending) sink.follow(run.run_id);
    for (const run of pending) {
      try {
        await hub.open(subscriber, run.run_id, cursors.get(run.run_id), opening, { delta });
      } catch (err) {
        if (subscriber.isClosed) break;
        opening.flush?.();
        sink.runFailed(run.run_id, failureOf(err));
      }
      if (subscriber.isClosed || sink.isEnded) return reply;
    }
    opening.flush?.();
    if (sink.following === 0) sink.end();
    return reply;
  }

  app.get(
    '/runs/:run_id/stream',
    {
      schema: {
        params: Type.Object({ run_id: RunId }),
        querystring: Type.Object(
          {
            since: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })),
            keepalive: KEEPALIVE_QUERY,
            delta: Type.Optional(DeltaFlag),
          },
          { additionalProperties: false },
        ),
        tags: ['live'],
        description: `One run's events as Server-Sent Events: the logs missed after Last-Event-ID (or \`since\`), a whole \`snapshot\`, then live \`update\` and \`log\` events. ${DELTA_STREAM_DOC}`,
      },
    },
    async (request, reply) => {
      const { run_id } = request.params;
      const principal = requirePrincipal(request);
      const run = await policy.requireRun(principal, run_id);
      const since = parseSeq(header(request, 'last-event-id'), 'Last-Event-ID') ?? request.query.since;
      return stream(
        request,
        reply,
        principal,
        [run],
        new Map([[run_id, since]]),
        false,
        request.query.keepalive,
        request.query.delta === 1,
      );
    },
  );

  app.get(
    '/stream',
    {
      schema: {
        querystring: Type.Object(
          {
            runs: Type.String({ minLength: 1, maxLength: 4000 }),
            since: Type.Optional(Type.String({ maxLength: 5000 })),
            keepalive: KEEPALIVE_QUERY,
            delta: Type.Optional(DeltaFlag),
          },
          { additionalProperties: false },
        ),
        tags: ['live'],
        description: `Many runs' events on one stream; ids and \`since\` are \`<run_id>:<seq>,…\`. ${DELTA_STREAM_DOC} The base is per run.`,
      },
    },
    async (request, reply) => {
      const principal = requirePrincipal(request);
      const runIds = [...new Set(request.query.runs.split(',').map((id) => id.trim()))];
      if (runIds.length > MAX_RUNS_PER_STREAM || runIds.some((id) => !RUN_ID.test(id))) {
        throw new AppError(
          'INVALID_INPUT',
          `runs must be 1 to ${MAX_RUNS_PER_STREAM} comma-separated run ids`,
        );
      }
      const given = new Map<string, number>();
      parseCursors(request.query.since, 'since', given);
      // EventSource resends only the last id it saw: it moves that one run's cursor.
      parseCursors(header(request, 'last-event-id'), 'Last-Event-ID', given);
      const runs: RunRecord[] = [];
      for (const runId of runIds) runs.push(await policy.requireRun(principal, runId));
      return stream(
        request,
        reply,
        principal,
        runs,
        new Map(runIds.map((id) => [id, given.get(id)])),
        true,
        request.query.keepalive,
        request.query.delta === 1,
      );
    },
  );
};
