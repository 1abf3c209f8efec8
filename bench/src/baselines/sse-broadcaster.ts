/** Baseline: a bare Node `http` SSE server; each event's frame is built once and `res.write` to every stream. */
import { createServer, type ServerResponse } from 'node:http';
import { type BroadcastTransport, type Outgoing, portArg, Rooms, serveBroadcaster } from './broadcaster.js';

const HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  'x-accel-buffering': 'no',
  connection: 'keep-alive',
};

const rooms = new Rooms();
const streams = new Map<string, Set<ServerResponse>>();
let clients = 0;

const frame = (event: Outgoing) => `id: ${event.seq}\nevent: ${event.event.type}\ndata: ${event.json}\n\n`;

const http = createServer((request, response) => {
  const url = new URL(request.url ?? '/', 'http://127.0.0.1');
  if (url.pathname !== '/stream') {
    response.writeHead(404).end();
    return;
  }
  const runId = url.searchParams.get('run') ?? '';
  let room = streams.get(runId);
  if (!room) {
    room = new Set();
    streams.set(runId, room);
  }
  response.writeHead(200, HEADERS);
  response.write(`retry: 2000\n\n${frame(rooms.opening(runId))}`);
  room.add(response);
  clients++;
  response.on('close', () => {
    clients--;
    room.delete(response);
  });
});

const transport: BroadcastTransport = {
  clients: () => clients,
  publish(runId: string, event: Outgoing): void {
    const room = streams.get(runId);
    if (!room || room.size === 0) return;
    const text = frame(event);
    for (const response of room) {
      response.write(text);
      if (event.terminal) response.end();
    }
  },
};

http.listen(portArg(), '127.0.0.1', () => {
  const address = http.address();
  serveBroadcaster(transport, rooms, typeof address === 'object' && address ? address.port : 0);
});
