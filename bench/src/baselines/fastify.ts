/**
 * Baseline: bare Fastify routes at Runcast's progress path. `GET` answers 304 to a matching
 * `If-None-Match` (the polling floor); `PATCH` parses the JSON body and answers the snapshot with
 * the run's next seq, kept in memory (the HTTP floor of ingest: no auth, no validation, no store).
 */
import Fastify from 'fastify';
import { memoryAfterGc, serveCommands } from '../ipc.js';
import type { progressUpdate } from '../payload.js';
import { updateEvent } from '../payload.js';
import { portArg } from './broadcaster.js';

const SEQ = 1;
const ETAG = `"${SEQ}"`;

const app = Fastify({ logger: false });
const seqs = new Map<string, number>();

type Params = { run_id: string };

app.get<{ Params: Params }>('/api/v1/runs/:run_id/progress', async (request, reply) => {
  reply.header('etag', ETAG).header('cache-control', 'no-cache');
  if (request.headers['if-none-match'] === ETAG) return reply.code(304).send();
  return updateEvent(request.params.run_id, SEQ, Date.now(), 'snapshot', 'RUNNING').snapshot;
});

app.patch<{ Params: Params; Body: ReturnType<typeof progressUpdate> }>(
  '/api/v1/runs/:run_id/progress',
  async (request, reply) => {
    const runId = request.params.run_id;
    const seq = (seqs.get(runId) ?? 0) + 1;
    seqs.set(runId, seq);
    const snapshot = updateEvent(runId, seq, Date.now(), 'update', 'RUNNING').snapshot;
    snapshot.progress = request.body.progress ?? null;
    reply.header('etag', `"${seq}"`);
    return snapshot;
  },
);

const address = await app.listen({ host: '127.0.0.1', port: portArg() });
serveCommands(
  {
    stats: () => ({ clients: 0, published: 0 }),
    memory: () => memoryAfterGc(),
  },
  { info: { port: Number(new URL(address).port) } },
);
