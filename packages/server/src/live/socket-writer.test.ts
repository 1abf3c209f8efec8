import type { LogEvent } from '@runcast/protocol';
import { describe, expect, it } from 'vitest';
import { EncodedEvent } from './encoded-event.js';
import { socketFrame } from './socket-writer.js';

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

  it('is built once per event', () => {
    const event = logEvent('once');
    expect(socketFrame(event)).toBe(socketFrame(event));
  });
});
