import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import {
  CreateRun,
  DeltaFlag,
  IDEMPOTENCY_KEY_HEADER,
  IdempotencyHeaders,
  isTerminal,
  type LogEntry,
  LogsBody,
  type ProgressDelta,
  type ProgressResponse,
  ProgressUpdate,
  ProjectId,
  RUN_STATUSES,
  RunId,
  type RunStatus,
} from '@runcast/protocol';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { requirePrincipal } from '../auth/plugin.js';
import type { Policy } from '../auth/policy.js';
import type { Principal } from '../auth/principal.js';
import { AppError } from '../errors.js';
import type { Hub } from '../live/hub.js';
import type { Metrics } from '../metrics.js';
import { RecentStates } from './recent-states.js';
import type { RunService } from './run-service.js';
import { toSnapshot } from './snapshot.js';

export interface RunRoutesOptions {
  runs: RunService;
  policy: Policy;
  hub: Hub;
  metrics: Metrics;
  eventsPageLimit: number;
}

const RunParams = Type.Object({ run_id: RunId });
const Seq = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });
const MAX_WAIT_S = 30;
/** Longest `linger_ms` a long-poll may ask for. */
const MAX_LINGER_MS = 1000;
/**
 * Most bytes of events in one answer (`/events`, `/progress?since=`): a run of large logs is read
 * a page at a time (`events_more`, `next_since`) instead of one body the size of its history.
 */
const EVENTS_PAGE_BYTES = 1024 * 1024;

/** The seq named by an `If-None-Match` header (`"12"` or `W/"12"`), if it names exactly one. */
export function etagSeq(header: string | undefined): number | undefined {
  const match = header === undefined ? null : /^\s*(?:W\/)?"(\d{1,16})"\s*$/.exec(header);
  return match?.[1] === undefined ? undefined : Number(match[1]);
}

export const etagOf = (seq: number): string => `"${seq}"`;

function principalId(principal: Principal): string {
  return principal.kind === 'user' ? principal.user.user_id : principal.token.token_id;
}

function parseStatuses(raw: string | undefined): RunStatus[] | undefined {
  if (raw === undefined || raw === '') return undefined;
  const statuses = raw.split(',').map((s) => s.trim().toUpperCase());
  for (const status of statuses) {
    if (!(RUN_STATUSES as readonly string[]).includes(status)) {
      throw new AppError(
        'INVALID_INPUT',
        `querystring.status "${status}" is not one of ${RUN_STATUSES.join(', ')}`,
      );
    }
  }
  return statuses as RunStatus[];
}

/**
 * A progress answer as `application/json` without `; charset=utf-8`, which Fastify appends to a
 * serialized object: JSON is UTF-8 by definition (RFC 8259 defines no charset parameter), and a
 * poller reads this header many times a second.
 */
function sendPollAnswer(reply: FastifyReply, body: ProgressResponse | ProgressDelta): FastifyReply {
  return reply.header('content-type', 'application/json').send(Buffer.from(JSON.stringify(body)));
}

/** Runs: create, list, get, cancel, retry; progress (ETag, `since`, long-poll), logs and events. */
export const runRoutes: FastifyPluginAsyncTypebox<RunRoutesOptions> = async (app, options) => {
  const { runs, policy, hub, metrics } = options;

  app.post('/runs', { schema: { body: CreateRun, tags: ['runs'] } }, async (request, reply) => {
    const principal = requirePrincipal(request);
    await policy.requireProject(principal, request.body.project_id, true);
    const run = await runs.create({ ...request.body, created_by: principalId(principal) });
    return reply.code(201).send(toSnapshot(run));
  });

  app.get(
    '/runs',
    {
      schema: {
        querystring: Type.Object(
          {
            project_id: Type.Optional(ProjectId),
            status: Type.Optional(Type.String({ maxLength: 200 })),
            cursor: Type.Optional(RunId),
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 200 })),
          },
          { additionalProperties: false },
        ),
        tags: ['runs'],
      },
    },
    async (request) => {
      const principal = requirePrincipal(request);
      const { project_id, cursor, limit = 50 } = request.query;
      let projectIds = await policy.visibleProjectIds(principal);
      if (project_id !== undefined) {
        await policy.requireProject(principal, project_id);
        projectIds = [project_id];
      }
      const statuses = parseStatuses(request.query.status);
      const page = await runs.list({ projectIds, statuses, before: cursor, limit: limit + 1 });
      const more = page.length > limit;
      const shown = more ? page.slice(0, limit) : page;
      return {
        runs: shown.map(toSnapshot),
        next_cursor: more ? (shown[shown.length - 1]?.run_id ?? null) : null,
      };
    },
  );

  app.get('/runs/:run_id', { schema: { params: RunParams, tags: ['runs'] } }, async (request, reply) => {
    const run = await policy.requireRun(requirePrincipal(request), request.params.run_id);
    reply.header('etag', etagOf(run.seq));
    return toSnapshot(run);
  });

  app.post('/runs/:run_id/cancel', { schema: { params: RunParams, tags: ['runs'] } }, async (request) => {
    await policy.requireRun(requirePrincipal(request), request.params.run_id, true);
    return runs.cancel(request.params.run_id);
  });

  app.post(
    '/runs/:run_id/retry',
    { schema: { params: RunParams, tags: ['runs'] } },
    async (request, reply) => {
      const principal = requirePrincipal(request);
      await policy.requireRun(principal, request.params.run_id, true);
      const run = await runs.retry(request.params.run_id, principalId(principal));
      return reply.code(201).send(toSnapshot(run));
    },
  );

  const progressQuery = Type.Object(
    {
      since: Type.Optional(Seq),
      wait: Type.Optional(Type.Integer({ minimum: 0, maximum: MAX_WAIT_S })),
      delta: Type.Optional(DeltaFlag),
      state_seq: Type.Optional(
        Type.Integer({
          minimum: 0,
          maximum: Number.MAX_SAFE_INTEGER,
          description: 'With delta=1: the seq of the state the client holds (its last answer).',
        }),
      ),
      linger_ms: Type.Optional(
        Type.Integer({
          minimum: 0,
          maximum: MAX_LINGER_MS,
          description:
            'With wait: once an event arrived, wait this much longer (within the deadline) so ' +
            'that the events following it at once come in the same answer.',
        }),
      ),
    },
    { additionalProperties: false },
  );
  const recentStates = new RecentStates();

  /** What a progress answer is asked for. */
  interface ProgressAsk {
    since: number | undefined;
    longPoll: boolean;
    /** `delta=1`: the state may come as a patch of the one at `stateSeq`. */
    delta: boolean;
    stateSeq: number | undefined;
  }

  async function answerProgress(
    request: FastifyRequest,
    reply: FastifyReply,
    runId: string,
    { since, longPoll, delta, stateSeq }: ProgressAsk,
  ): Promise<FastifyReply> {
    const replay = await runs.replay(
      runId,
      since ?? Number.MAX_SAFE_INTEGER,
      options.eventsPageLimit,
      EVENTS_PAGE_BYTES,
    );
    if (!replay) throw new AppError('RUN_NOT_FOUND', `run ${runId} not found`);
    const { run } = replay;
    reply.header('etag', etagOf(run.seq)).header('cache-control', 'no-cache');
    if (etagSeq(request.headers['if-none-match']) === run.seq) return reply.code(304).send();
    // A long-poll that saw nothing new by its deadline (or a finished run) answers 304.
    if (longPoll && since !== undefined && run.seq <= since) return reply.code(304).send();
    const snapshot = toSnapshot(run);
    if (delta) {
      // Every seq after the client's state is a log (none pruned): only the seq moved.
      const onlyLogs =
        stateSeq !== undefined &&
        stateSeq === since &&
        !replay.truncated &&
        replay.events.length === run.seq - stateSeq;
      const patch = onlyLogs ? { seq: run.seq } : recentStates.patchTo(snapshot, stateSeq);
      if (onlyLogs) recentStates.patchTo(snapshot, undefined);
      if (patch && stateSeq !== undefined) {
        const body: ProgressDelta = { run_id: run.run_id, seq: run.seq, base_seq: stateSeq, patch };
        if (since !== undefined) body.events = replay.events;
        if (replay.truncated) body.events_truncated = true;
        if (replay.more) body.events_more = true;
        return sendPollAnswer(reply, body);
      }
    }
    const body: ProgressResponse = snapshot;
    if (since !== undefined) {
      body.events = replay.events;
      body.events_truncated = replay.truncated;
      if (replay.more) body.events_more = true;
    }
    return sendPollAnswer(reply, body);
  }

  app.get(
    '/runs/:run_id/progress',
    {
      schema: {
        params: RunParams,
        querystring: progressQuery,
        tags: ['runs'],
        description:
          'The run snapshot, with `ETag: "<seq>"` (If-None-Match answers 304). `since` adds the log ' +
          'events after it (every one, up to a page: `events_more`); `wait` long-polls until seq > ' +
          'since, or 304 at the deadline; `linger_ms` then waits that much longer for the events ' +
          'that follow the first. With `delta=1&state_seq=U`, when this server knows the state at ' +
          'U (it answered it lately, or only log events followed it), the answer is a ProgressDelta ' +
          '`{run_id, seq, base_seq: U, patch, events?, events_truncated?, events_more?}` — `patch` ' +
          'an RFC 7396 merge patch from the state at U to the state now — instead of the snapshot; ' +
          'when it cannot be sure, the whole snapshot as without delta.',
      },
    },
    async (request, reply) => {
      const { run_id } = request.params;
      const principal = requirePrincipal(request);
      const run = await policy.requireRun(principal, run_id);
      metrics.recordClientHeaders(request.headers);
      const { since, wait = 0, delta, state_seq: stateSeq, linger_ms: lingerMs = 0 } = request.query;
      // The common poll — nothing new since the client's ETag — is answered from the run the
      // access check already read, without a replay transaction.
      if (wait === 0 && etagSeq(request.headers['if-none-match']) === run.seq) {
        return reply.header('etag', etagOf(run.seq)).header('cache-control', 'no-cache').code(304).send();
      }
      const cursor = since ?? etagSeq(request.headers['if-none-match']);
      if (wait > 0 && cursor !== undefined && run.seq <= cursor && !isTerminal(run.status)) {
        const deadlineMs = Date.now() + wait * 1000;
        const pending = hub.wait(run_id, cursor, wait * 1000, principal);
        // The connection may go away while we wait; stop waiting for it then.
        const onClose = () => pending.cancel();
        request.raw.once('close', onClose);
        // Re-read after registering: an event committed since the first read must not be missed.
        const current = await runs.get(run_id);
        const woken = current !== undefined && current.seq > cursor;
        if (woken) pending.cancel();
        else if (await pending.done) {
          // Asked for: the events that follow the first at once come in the same answer.
          const lingerLeftMs = Math.min(lingerMs, deadlineMs - Date.now());
          if (lingerLeftMs > 0) await new Promise((resolve) => setTimeout(resolve, lingerLeftMs));
        } else if (!pending.ended) {
          // The deadline passed: unless something committed meanwhile, nothing new, and no
          // replay is read to say so.
          const now = await runs.get(run_id);
          const unchanged =
            since === undefined
              ? etagSeq(request.headers['if-none-match']) === now?.seq
              : now && now.seq <= since;
          if (now && unchanged) {
            request.raw.off('close', onClose);
            return reply.header('etag', etagOf(now.seq)).header('cache-control', 'no-cache').code(304).send();
          }
        }
        request.raw.off('close', onClose);
        // Access ended while the poll waited (logout, revocation, membership removed).
        if (pending.ended) throw new AppError(pending.ended.code, pending.ended.message);
      }
      return answerProgress(request, reply, run_id, {
        since,
        longPoll: wait > 0,
        delta: delta === 1,
        stateSeq,
      });
    },
  );

  app.patch(
    '/runs/:run_id/progress',
    { schema: { params: RunParams, body: ProgressUpdate, headers: IdempotencyHeaders, tags: ['runs'] } },
    async (request, reply) => {
      await policy.requireRun(requirePrincipal(request), request.params.run_id, true);
      const snapshot = await runs.updateProgress(request.params.run_id, request.body, {
        idempotencyKey: request.headers[IDEMPOTENCY_KEY_HEADER],
      });
      reply.header('etag', etagOf(snapshot.seq));
      return snapshot;
    },
  );

  app.post(
    '/runs/:run_id/logs',
    { schema: { params: RunParams, body: LogsBody, headers: IdempotencyHeaders, tags: ['runs'] } },
    async (request, reply) => {
      await policy.requireRun(requirePrincipal(request), request.params.run_id, true);
      const body = request.body;
      const entries: LogEntry[] = 'entries' in body ? body.entries : [body];
      const seqs = await runs.appendLogs(request.params.run_id, entries, {
        idempotencyKey: request.headers[IDEMPOTENCY_KEY_HEADER],
      });
      return reply.code(201).send({ run_id: request.params.run_id, ...seqs });
    },
  );

  app.get(
    '/runs/:run_id/events',
    {
      schema: {
        params: RunParams,
        querystring: Type.Object(
          { since: Type.Optional(Seq), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000 })) },
          { additionalProperties: false },
        ),
        tags: ['runs'],
      },
    },
    async (request) => {
      const { run_id } = request.params;
      await policy.requireRun(requirePrincipal(request), run_id);
      const since = request.query.since ?? 0;
      const limit = Math.min(request.query.limit ?? options.eventsPageLimit, options.eventsPageLimit);
      const replay = await runs.replay(run_id, since, limit, EVENTS_PAGE_BYTES);
      if (!replay) throw new AppError('RUN_NOT_FOUND', `run ${run_id} not found`);
      const last = replay.events[replay.events.length - 1];
      return {
        run_id,
        events: replay.events,
        events_truncated: replay.truncated,
        // Without more events the cursor may jump to the run's seq: nothing retained lies between.
        next_since: replay.more ? (last?.seq ?? since) : Math.max(since, replay.run.seq),
        seq: replay.run.seq,
      };
    },
  );
};
