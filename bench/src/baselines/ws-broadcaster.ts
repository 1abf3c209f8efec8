/** Baseline: a bare `ws` server; each event's frame is built once and written to every socket. */
import * as wsModule from 'ws';
import { type WebSocket, WebSocketServer } from 'ws';
import { type BroadcastTransport, type Outgoing, portArg, Rooms, serveBroadcaster } from './broadcaster.js';

interface FrameOptions {
  readOnly: boolean;
  mask: boolean;
  rsv1: boolean;
  opcode: number;
  fin: boolean;
}
// `Sender.frame` and `sendFrame` are how Socket.IO's own broadcast shares one frame between
// sockets (websockets/ws#617). ws's ES module exports `Sender` by name; its types omit it.
const Sender = (wsModule as unknown as { Sender: { frame(data: Buffer, options: FrameOptions): Buffer[] } })
  .Sender;
type WithSender = WebSocket & { _sender?: { sendFrame(list: Buffer[], cb?: () => void): void } };

const TEXT_FRAME: FrameOptions = { readOnly: false, mask: false, rsv1: false, opcode: 1, fin: true };

const rooms = new Rooms();
const subscribers = new Map<string, Set<WithSender>>();
let clients = 0;

const server = new WebSocketServer({
  host: '127.0.0.1',
  port: portArg(),
  perMessageDeflate: false,
  clientTracking: false,
});

server.on('connection', (socket: WithSender, request) => {
  const runId = new URL(request.url ?? '/', 'http://127.0.0.1').searchParams.get('run') ?? '';
  let room = subscribers.get(runId);
  if (!room) {
    room = new Set();
    subscribers.set(runId, room);
  }
  room.add(socket);
  clients++;
  socket.send(rooms.opening(runId).json);
  socket.on('close', () => {
    clients--;
    room.delete(socket);
  });
  socket.on('error', () => {});
});

const transport: BroadcastTransport = {
  clients: () => clients,
  publish(runId: string, event: Outgoing): void {
    const room = subscribers.get(runId);
    if (!room || room.size === 0) return;
    const frame = Sender.frame(Buffer.from(event.json), TEXT_FRAME);
    for (const socket of room) {
      if (socket._sender) socket._sender.sendFrame(frame);
      else socket.send(event.json);
    }
  },
};

server.on('listening', () => {
  const address = server.address();
  serveBroadcaster(transport, rooms, typeof address === 'object' && address ? address.port : 0);
});
