/** Baseline: a bare Socket.IO server, WebSocket transport only; one `io.to(room).emit` per event. */
import { createServer } from 'node:http';
import { Server } from 'socket.io';
import { type BroadcastTransport, type Outgoing, portArg, Rooms, serveBroadcaster } from './broadcaster.js';

const rooms = new Rooms();
const http = createServer();
const io = new Server(http, { transports: ['websocket'], serveClient: false });

io.on('connection', (socket) => {
  // The same exchange as Runcast's gateway: subscribe with an ack that carries the snapshot.
  socket.on('subscribe', (payload: { run_id?: unknown }, ack: unknown) => {
    const runId = typeof payload?.run_id === 'string' ? payload.run_id : '';
    void socket.join(runId);
    if (typeof ack === 'function') ack({ ok: true, snapshot: rooms.opening(runId).event });
  });
});

const transport: BroadcastTransport = {
  clients: () => io.engine.clientsCount,
  publish(runId: string, event: Outgoing): void {
    io.to(runId).emit('run_event', event.event);
  },
};

http.listen(portArg(), '127.0.0.1', () => {
  const address = http.address();
  serveBroadcaster(transport, rooms, typeof address === 'object' && address ? address.port : 0);
});
