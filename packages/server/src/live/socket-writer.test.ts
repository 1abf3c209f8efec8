import type { AddressInfo } from 'node:net';
import type { LogEvent } from '@runcast/protocol';
import { Encoder, PacketType } from 'socket.io-parser';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { EncodedEvent } from './encoded-event.js';
import { BoundedDeflateServer, socketFrame } from './socket-writer.js';

/** Reads one unmasked WebSocket frame: its first byte and its payload. */
function readFrame(frame: Buffer): { head: number; masked: boolean; payload: string; rest: number } {
  const head = frame[0] ?? 0;
  const second = frame[1] ?? 0;
  let length = second & 0x7f;
  let offset = 2;
  if (length === 126) {
    length = frame.readUInt16BE(2);
    offset = 4;
  } else if (length === 127) {
    length = Number(frame.readBigUInt64BE(2));
    offset = 10;
  }
  const payload = frame.subarray(offset, offset + length).toString('utf8');
  return { head, masked: (second & 0x80) !== 0, payload, rest: frame.length - offset - length };
}

const logEvent = (message: string) =>
  new EncodedEvent({
    run_id: 'run_A',
    seq: 3,
    type: 'log',
    at: '2026-01-01T00:00:00.000Z',
    log: { level: 'info', message },
  } as LogEvent);

describe('Socket.IO frame of an event', () => {
  it.each([
    ['short', 'hi'],
    ['longer than 125 bytes', 'x'.repeat(300)],
    ['longer than 65,535 bytes', 'y'.repeat(70_000)],
  ])('is one unmasked text frame carrying the run_event packet (%s)', (_name, message) => {
    const event = logEvent(message);
    const list = socketFrame(event);
    expect(list).toHaveLength(1);
    const frame = readFrame(list[0] ?? Buffer.alloc(0));
    // FIN and opcode 1 (text); a server never masks.
    expect(frame.head).toBe(0x81);
    expect(frame.masked).toBe(false);
    expect(frame.rest).toBe(0);
    // Engine.IO "message" (4), Socket.IO EVENT (2) on the main namespace.
    expect(frame.payload).toBe(`42${JSON.stringify(['run_event', event.event])}`);
  });

  it("carries the packet Socket.IO's own encoder makes of the event", () => {
    const event = logEvent('snow \u2603, quote ", line separator \u2028, emoji \u{1f680}');
    const [packet] = new Encoder().encode({
      type: PacketType.EVENT,
      nsp: '/',
      data: ['run_event', event.event],
    }) as string[];
    expect(readFrame(socketFrame(event)[0] ?? Buffer.alloc(0)).payload).toBe(`4${packet}`);
  });

  it('is built once per event', () => {
    const event = logEvent('once');
    expect(socketFrame(event)).toBe(socketFrame(event));
  });
});

describe('BoundedDeflateServer', () => {
  interface Deflate {
    _inflate: unknown;
    _deflate: unknown;
    params: Record<string, unknown>;
    decompress(data: Buffer, fin: boolean, cb: (err: Error | null, result?: Buffer) => void): void;
    _decompress(data: Buffer, fin: boolean, cb: (err: Error | null, result?: Buffer) => void): void;
  }
  const deflateOf = (socket: WebSocket) =>
    (socket as unknown as { _extensions: Record<string, Deflate> })._extensions[
      'permessage-deflate'
    ] as Deflate;
  let server: BoundedDeflateServer | undefined;
  afterEach(() => server?.close());

  /** A server and a client that compresses every message it sends; the server's side of it. */
  async function connect(): Promise<{ client: WebSocket; accepted: WebSocket; received: string[] }> {
    const created = new BoundedDeflateServer({
      port: 0,
      host: '127.0.0.1',
      perMessageDeflate: { serverMaxWindowBits: 10, clientNoContextTakeover: true },
    });
    server = created;
    await new Promise((resolve) => created.once('listening', resolve));
    const received: string[] = [];
    const acceptedP = new Promise<WebSocket>((resolve) =>
      created.once('connection', (socket) => {
        socket.on('message', (data) => received.push(data.toString()));
        resolve(socket);
      }),
    );
    const client = new WebSocket(`ws://127.0.0.1:${(created.address() as AddressInfo).port}`, {
      perMessageDeflate: { threshold: 0 },
    });
    await new Promise((resolve, reject) => client.once('open', resolve).once('error', reject));
    return { client, accepted: await acceptedP, received };
  }

  it('inflates what the client compresses with an inflater released after each message', async () => {
    const { client, accepted, received } = await connect();
    const deflate = deflateOf(accepted);
    expect(deflate.params.client_no_context_takeover).toBe(true);
    const inflaters: unknown[] = [];
    const inflate = deflate._decompress;
    // Watch each message's inflater when it has read the message, before the server's wrapper.
    deflate._decompress = (data, fin, cb) =>
      inflate.call(deflate, data, fin, (err, result) => {
        inflaters.push(deflate._inflate);
        cb(err, result);
      });
    const messages = ['subscribe '.repeat(30), '3', 'subscribe '.repeat(30)];
    for (const message of messages) client.send(message);
    await expect.poll(() => received.length).toBe(messages.length);
    expect(received).toEqual(messages);
    // Each message had an inflater (it was compressed), and none is held once it was read.
    expect(inflaters.filter(Boolean)).toHaveLength(messages.length);
    expect(deflate._inflate).toBeNull();
    client.close();
  });

  it('compresses nothing itself: a message sent through ws goes uncompressed, no deflater made', async () => {
    const { client, accepted } = await connect();
    let compressed = 0;
    const clientDeflate = deflateOf(client);
    const decompress = clientDeflate.decompress;
    clientDeflate.decompress = (data, fin, cb) => {
      compressed++;
      decompress.call(clientDeflate, data, fin, cb);
    };
    const got = new Promise<string>((resolve) => client.once('message', (data) => resolve(data.toString())));
    accepted.send('0{"sid":"x"}'.repeat(50));
    expect(await got).toBe('0{"sid":"x"}'.repeat(50));
    expect(compressed).toBe(0);
    expect(deflateOf(accepted)._deflate).toBeNull();
    client.close();
  });
});
