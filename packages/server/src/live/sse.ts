import type { ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { isTerminal, RunId, type SnapshotEvent } from '@runcast/protocol';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { requirePrincipal } from '../auth/plugin.js';
import type { Policy } from '../auth/policy.js';
import { AppError } from '../errors.js';
import type { ConnectionDrain } from '../http/drain.js';
import type { Metrics } from '../metrics.js';
import { toSnapshot } from '../runs/snapshot.js';
import type { RunReplay } from '../store/store.js';
import { EncodedEvent } from './encoded-event.js';
import type { Hub } from './hub.js';
import type { DisconnectReason, Sink, Subscriber } from './subscriber.js';

export interface SseOptions {
  hub: Hub;
  policy: Policy;
  metrics: Metrics;
  keepaliveMs: number;
  /** Reconnect delay the stream asks EventSource clients to use. */
  retryMs: number;
  /** Lets shutdown wait until each stream has flushed its last frame. */
  drain: ConnectionDrain;
}

const RUN_ID = /^run_[0-9A-HJKMNP-TV-Z]{26}$/;
const MAX_RUNS_PER_STREAM = 100;

/** The snapshot event that opens a subscription at the run's current seq. */
export function snapshotEvent(replay: RunReplay): SnapshotEvent {
  const event: SnapshotEvent = {
    run_id: replay.run.run_id,
    seq: replay.run.seq,
    type: 'snapshot',
    at: new Date().toISOString(),
    snapshot: toSnapshot(replay.run),
  };
  if (replay.truncated) event.events_truncated = true;
  return event;
}

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
  /**
   * The connection, when live events may be written to it directly as prebuilt chunks: a
   * single-run stream with chunked encoding on a connection this response owns.
   */
  private direct: Socket | undefined;

  constructor(
    private readonly res: ServerResponse,
    multiplexed: Map<string, number | undefined> | undefined,
    private readonly retryMs: number,
  ) {
    if (multiplexed) {
      this.cursors = new Map();
      for (const [runId, seq] of multiplexed) if (seq !== undefined) this.cursors.set(runId, seq);
    }
  }

  /**
   * Writes the opening (headers, `retry`, replay and snapshots) and from then on calls `drained`
   * whenever the connection takes writes again after a full buffer.
   */
  open(opening: string, drained: () => void): void {
    const res = this.res;
    res.write(opening);
    const socket = res.socket;
    if (!this.cursors && socket && res.chunkedEncoding) {
      // Once the response has written its headers to its own connection, a chunk written to the
      // socket is exactly what `res.write` sends, in one write: `res.write` corks the socket,
      // writes size, frame and CRLF separately and sends them as one `writev` on the next tick.
      this.direct = socket;
      socket.on('drain', drained);
      res.once('close', () => socket.off('drain', drained));
    } else {
      res.on('drain', drained);
    }
  }

  follow(runId: string): void {
    this.openRuns.add(runId);
  }

  isBusy(): boolean {
    return this.direct ? this.direct.writableNeedDrain : this.res.writableNeedDrain;
  }

  frame(event: EncodedEvent): string {
    if (!this.cursors) return event.sse;
    this.cursors.set(event.runId, event.seq);
    let id = '';
    for (const [runId, seq] of this.cursors) id += `${id ? ',' : ''}${runId}:${seq}`;
    return `id: ${id}\n${event.sseWithoutId}`;
  }

  write(events: readonly EncodedEvent[]): void {
    if (this.ended) return;
    const direct = this.direct;
    if (direct) {
      const [first] = events;
      // A connection the client already ended takes nothing more (writing would raise an error).
      if (!first || !direct.writable) return;
      direct.write(
        events.length === 1 ? first.sseChunk : Buffer.concat(events.map((event) => event.sseChunk)),
      );
      return;
    }
    let chunk = '';
    for (const event of events) chunk += this.frame(event);
    this.res.write(chunk);
  }

  writeRaw(chunk: string): void {
    if (!this.ended) this.res.write(chunk);
  }

  runEnded(runId: string): void {
    this.openRuns.delete(runId);
    if (this.openRuns.size === 0) this.end();
  }

  close(reason: DisconnectReason): void {
    if (this.ended) return;
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
    this.res.end();
  }
}

/** Parses `Last-Event-ID`: a bare seq on the single-run stream. */
function parseSeq(raw: string | undefined, what: string): number | undefined {
  if (raw === undefined || raw === '') return undefined;
  if (!/^\d{1,16}$/.test(raw)) throw new AppError('INVALID_INPUT', `${what} must be a non-negative integer`);
  return Number(raw);
}

/** Parses `<run_id>:<seq>,…` cursors of the multiplexed stream. */
function parseCursors(raw: string | undefined, what: string, into: Map<string, number>): void {
  if (raw === undefined || raw === '') return;
  for (const part of raw.split(',')) {
    const match = /^(run_[0-9A-HJKMNP-TV-Z]{26}):(\d{1,16})$/.exec(part.trim());
    if (!match?.[1] || match[2] === undefined) {
      throw new AppError('INVALID_INPUT', `${what} must be <run_id>:<seq>[,…], got "${part}"`);
    }
    into.set(match[1], Number(match[2]));
  }
}

function header(request: FastifyRequest, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value[0] : value;
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
  const sinks = new Set<SseSink>();

  const keepalive = setInterval(() => {
    const frame = `event: keepalive\ndata: {"timestamp":"${new Date().toISOString()}"}\n\n`;
    for (const sink of sinks) if (!sink.isBusy()) sink.writeRaw(frame);
  }, options.keepaliveMs);
  keepalive.unref();
  app.addHook('onClose', async () => clearInterval(keepalive));

  /**
   * Opens the stream: subscribes to every run from its cursor, then writes `retry`, the replayed
   * logs and the snapshots in the first write. Answers 204 when every run is already over and
   * the client has its final seq.
   */
  async function stream(
    request: FastifyRequest,
    reply: FastifyReply,
    cursors: Map<string, number | undefined>,
    multiplexed: boolean,
  ): Promise<unknown> {
    metrics.recordClientHeaders(request.headers);
    const res = reply.raw;
    const sink = new SseSink(res, multiplexed ? cursors : undefined, options.retryMs);
    const subscriber: Subscriber = hub.attach(sink);
    const replays: RunReplay[] = [];
    try {
      for (const [runId, since] of cursors) {
        const replay = await hub.subscribe(subscriber, runId, since);
        if (!replay) throw new AppError('RUN_NOT_FOUND', `run ${runId} not found`);
        replays.push(replay);
      }
    } catch (err) {
      hub.detach(subscriber);
      throw err;
    }
    const finished = (replay: RunReplay) => {
      const since = cursors.get(replay.run.run_id);
      return isTerminal(replay.run.status) && since !== undefined && since >= replay.run.seq;
    };
    if (replays.every(finished)) {
      hub.detach(subscriber);
      return reply.code(204).send();
    }
    reply.hijack();
    options.drain.track(res);
    res.writeHead(200, SSE_HEADERS);
    let opening = `retry: ${options.retryMs}\n\n`;
    const live: RunReplay[] = [];
    for (const replay of replays) {
      if (finished(replay)) {
        hub.unsubscribe(subscriber, replay.run.run_id);
        continue;
      }
      for (const log of replay.events) opening += sink.frame(new EncodedEvent(log));
      opening += sink.frame(new EncodedEvent(snapshotEvent(replay)));
      if (isTerminal(replay.run.status)) hub.unsubscribe(subscriber, replay.run.run_id);
      else live.push(replay);
    }
    sinks.add(sink);
    sink.open(opening, () => subscriber.flush());
    res.on('close', () => {
      sinks.delete(sink);
      hub.detach(subscriber);
    });
    if (live.length === 0) {
      sink.end();
      return reply;
    }
    for (const replay of live) {
      sink.follow(replay.run.run_id);
      subscriber.openRun(replay.run.run_id, replay.run.seq);
    }
    return reply;
  }

  app.get(
    '/runs/:run_id/stream',
    {
      schema: {
        params: Type.Object({ run_id: RunId }),
        querystring: Type.Object(
          { since: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })) },
          { additionalProperties: false },
        ),
        tags: ['live'],
      },
    },
    async (request, reply) => {
      const { run_id } = request.params;
      await policy.requireRun(requirePrincipal(request), run_id);
      const since = parseSeq(header(request, 'last-event-id'), 'Last-Event-ID') ?? request.query.since;
      return stream(request, reply, new Map([[run_id, since]]), false);
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
          },
          { additionalProperties: false },
        ),
        tags: ['live'],
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
      for (const runId of runIds) await policy.requireRun(principal, runId);
      return stream(request, reply, new Map(runIds.map((id) => [id, given.get(id)])), true);
    },
  );
};
