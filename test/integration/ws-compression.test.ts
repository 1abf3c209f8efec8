import type { IncomingMessage } from 'node:http';
import { applyDeltaPatch, type RunSnapshot } from '@runcast/protocol';
import { io } from 'socket.io-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';

// Socket.IO with RUNCAST_WS_COMPRESSION: what the WebSocket handshake answers, and what arrives.
// A raw `ws` client speaks Engine.IO/Socket.IO itself, so that the bytes on its connection can be
// compared with the messages they carried: fewer bytes than text means the events went through
// the compressor, not the prebuilt uncompressed frames.

/** A Socket.IO connection over a raw ws client: its handshake answer and the run events it got. */
class RawSocketIo {
  readonly events: any[] = [];
  textBytes = 0;
  private acks = new Map<number, (payload: any) => void>();
  private waiters: (() => void)[] = [];
  private nextAck = 1;

  private constructor(
    readonly ws: WebSocket,
    readonly upgrade: IncomingMessage,
  ) {
    ws.on('message', (data) => {
      const text = data.toString();
      this.textBytes += Buffer.byteLength(text);
      if (text === '2') ws.send('3'); // Engine.IO ping
      const ack = /^43(\d+)(.*)$/s.exec(text);
      if (ack) this.acks.get(Number(ack[1]))?.(JSON.parse(ack[2]!)[0]);
      if (text.startsWith('42')) {
        const [name, event] = JSON.parse(text.slice(2));
        if (name === 'run_event') this.events.push(event);
      }
      for (const wake of this.waiters.splice(0)) wake();
    });
  }

  static open(url: string, token: string): Promise<RawSocketIo> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`${url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`, {
        // Compresses everything it sends (as browsers do), subscribes and pongs included.
        perMessageDeflate: { threshold: 0 },
      });
      ws.once('error', reject);
      ws.once('upgrade', (upgrade) => {
        const client = new RawSocketIo(ws, upgrade);
        ws.on('message', function connected(data) {
          const text = data.toString();
          if (text.startsWith('0')) ws.send(`40${JSON.stringify({ token })}`);
          if (text.startsWith('40')) {
            ws.off('message', connected);
            resolve(client);
          }
          if (text.startsWith('44')) reject(new Error(`connect_error ${text}`));
        });
      });
    });
  }

  subscribe(runId: string, options: { delta?: boolean } = {}): Promise<any> {
    const id = this.nextAck++;
    return new Promise((resolve) => {
      this.acks.set(id, resolve);
      this.ws.send(`42${id}${JSON.stringify(['subscribe', { run_id: runId, ...options }])}`);
    });
  }

  async until(check: (events: any[]) => boolean): Promise<void> {
    while (!check(this.events)) {
      if (this.ws.readyState !== WebSocket.OPEN) throw new Error('the socket closed first');
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** Bytes read from the TCP connection since it opened (frames as sent, compressed or not). */
  get wireBytes(): number {
    return (this.ws as unknown as { _socket: { bytesRead: number } })._socket.bytesRead;
  }
}

/** Logs and a terminal update, each published after the one before arrived. */
async function publish(world: World, runId: string, client: { until: RawSocketIo['until'] }): Promise<void> {
  for (let i = 0; i < 20; i++) {
    await world.worker.post(`/runs/${runId}/logs`, {
      level: 'info',
      message: `Pushed ${i} refs to group/api (${'objects '.repeat(20)})`,
    });
    await client.until((events) =>
      events.some((e) => e.type === 'log' && e.log.message.startsWith(`Pushed ${i} `)),
    );
  }
  await world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED' });
  await client.until((events) =>
    events.some((e) => e.type === 'update' && e.snapshot.status === 'COMPLETED'),
  );
}

async function newRun(world: World): Promise<string> {
  const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
  await world.worker.patch(`/runs/${created.body.run_id}/progress`, { status: 'RUNNING' });
  return created.body.run_id;
}

describe.each([
  ['on', true],
  ['off', false],
] as const)('RUNCAST_WS_COMPRESSION=%s', (setting, compressed) => {
  let server: TestServer;
  let world: World;

  beforeAll(async () => {
    server = await startServer({ RUNCAST_WS_COMPRESSION: setting });
    world = await makeWorld(server.url);
  });

  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  it(`${compressed ? 'negotiates' : 'declines'} permessage-deflate and delivers every event`, async () => {
    const runId = await newRun(world);
    const client = await RawSocketIo.open(server.url, world.viewer.token!);
    try {
      const extensions = client.upgrade.headers['sec-websocket-extensions'] ?? '';
      if (compressed) {
        expect(extensions).toContain('permessage-deflate');
        expect(extensions).toContain('server_max_window_bits=10');
        // What the client compresses, the server inflates with a small window.
        expect(extensions).toContain('client_max_window_bits=9');
        // ...each message on its own, so that the server frees the inflater after it.
        expect(extensions).toContain('client_no_context_takeover');
      } else {
        expect(extensions).toBe('');
      }
      const ack = await client.subscribe(runId);
      expect(ack.ok).toBe(true);
      const before = { wire: client.wireBytes, text: client.textBytes };
      await publish(world, runId, client);
      const logs = client.events.filter((e) => e.type === 'log').map((e) => e.seq);
      expect(logs).toHaveLength(20);
      expect(new Set(logs).size).toBe(20);
      const wire = client.wireBytes - before.wire;
      const text = client.textBytes - before.text;
      // Uncompressed frames carry their text plus headers; compressed ones far less than it.
      if (compressed) expect(wire).toBeLessThan(text * 0.6);
      else expect(wire).toBeGreaterThan(text);
    } finally {
      client.ws.close();
    }
  });

  it(`${compressed ? 'compresses each run event after the one before: a delta tick costs a few dozen bytes' : 'sends delta ticks as they are'}, acks between them readable`, async () => {
    const runId = await newRun(world);
    const other = await newRun(world);
    const client = await RawSocketIo.open(server.url, world.viewer.token!);
    try {
      expect((await client.subscribe(runId, { delta: true })).ok).toBe(true);
      const ticks = 30;
      const before = client.wireBytes;
      for (let i = 1; i <= ticks; i++) {
        const answer = await world.worker.patch(`/runs/${runId}/progress`, {
          progress: { percentage: i, message: 'Receiving objects', done: i * 137, total: 10_000 },
        });
        await client.until((events) => events.some((e) => e.seq === answer.body.seq));
        // An ack (uncompressed, outside the shared frames' window) in the middle of the ticks.
        if (i === ticks / 2) expect((await client.subscribe(other)).ok).toBe(true);
      }
      const perTick = (client.wireBytes - before) / ticks;
      // A delta frame of this tick is about 200 bytes; after the frame before it, a few dozen.
      if (compressed) expect(perTick).toBeLessThan(90);
      else expect(perTick).toBeGreaterThan(150);
      let state: RunSnapshot | undefined;
      for (const event of client.events.filter((e) => e.run_id === runId)) {
        if (event.snapshot) state = event.snapshot;
        else if (event.patch) state = applyDeltaPatch(state as RunSnapshot, event);
      }
      expect(state).toEqual((await world.viewer.get(`/runs/${runId}/progress`)).body);
    } finally {
      client.ws.close();
    }
  });

  it('socket.io-client gets every log once, in order', async () => {
    const runId = await newRun(world);
    const socket = io(server.url, {
      transports: ['websocket'],
      auth: { token: world.viewer.token },
      reconnection: false,
      forceNew: true,
    });
    const events: any[] = [];
    let wake = () => {};
    socket.on('run_event', (event) => {
      events.push(event);
      wake();
    });
    const client = {
      until: async (check: (events: any[]) => boolean) => {
        while (!check(events)) await new Promise<void>((resolve) => (wake = resolve));
      },
    };
    try {
      const ack = await socket.timeout(5000).emitWithAck('subscribe', { run_id: runId });
      expect(ack.ok).toBe(true);
      await publish(world, runId, client);
      const seqs = events.map((e) => e.seq);
      expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
      expect(events.filter((e) => e.type === 'log')).toHaveLength(20);
    } finally {
      socket.close();
    }
  });
});
