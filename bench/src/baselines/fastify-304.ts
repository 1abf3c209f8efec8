/** Baseline: a bare Fastify route at Runcast's polling path that answers 304 to a matching `If-None-Match`. */
import Fastify from 'fastify';
import { memoryAfterGc, serveCommands } from '../ipc.js';
import { updateEvent } from '../payload.js';
import { portArg } from './broadcaster.js';

const SEQ = 1;
const ETAG = `"${SEQ}"`;

const app = Fastify({ logger: false });

app.get<{ Params: { run_id: string } }>('/api/v1/runs/:run_id/progress', async (request, reply) => {
  reply.header('etag', ETAG).header('cache-control', 'no-cache');
  if (request.headers['if-none-match'] === ETAG) return reply.code(304).send();
  return updateEvent(request.params.run_id, SEQ, Date.now(), 'snapshot', 'RUNNING').snapshot;
});

const address = await app.listen({ host: '127.0.0.1', port: portArg() });
serveCommands(
  {
    stats: () => ({ clients: 0, published: 0 }),
    memory: () => memoryAfterGc(),
  },
  { info: { port: Number(new URL(address).port) } },
);
