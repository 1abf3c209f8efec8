import { describe, expect, it } from 'vitest';
import { EncodedEvent } from './encoded-event.js';

describe('SSE framing', () => {
  const event = new EncodedEvent({
    run_id: 'run_A',
    seq: 7,
    type: 'log',
    at: '2026-01-01T00:00:00.000Z',
    log: { level: 'info', message: 'two\nlines' },
  });

  it('frames the single-run stream with id, event and one data line', () => {
    expect(event.sse).toBe(`id: 7\nevent: log\ndata: ${JSON.stringify(event.event)}\n\n`);
    // JSON escapes the newline, so a message can never break the frame.
    expect(event.sse.split('\n').filter((line) => line.startsWith('data: '))).toHaveLength(1);
  });

  it('shares the event and data lines with streams that write their own id', () => {
    expect(event.sse).toBe(`id: 7\n${event.sseWithoutId}`);
    expect(event.sseWithoutId.startsWith('event: log\ndata: ')).toBe(true);
  });

  it('encodes once and reuses the text', () => {
    expect(event.sse).toBe(event.sse);
    expect(event.json).toBe(event.json);
    expect(event.committedAtMs).toBe(Date.parse('2026-01-01T00:00:00.000Z'));
  });

  it('wraps the single-run frame in one HTTP/1.1 chunk, built once', () => {
    const chunk = event.sseChunk.toString('utf8');
    const size = Buffer.byteLength(event.sse);
    expect(chunk).toBe(`${size.toString(16)}\r\n${event.sse}\r\n`);
    expect(event.sseChunk).toBe(event.sseChunk);
  });

  it('counts the chunk size in bytes, not characters', () => {
    const wide = new EncodedEvent({
      run_id: 'run_A',
      seq: 8,
      type: 'log',
      at: '2026-01-01T00:00:00.000Z',
      log: { level: 'info', message: 'größer → 100 €' },
    });
    const [sizeLine] = wide.sseChunk.toString('utf8').split('\r\n');
    expect(Number.parseInt(sizeLine ?? '', 16)).toBe(Buffer.byteLength(wide.sse));
    expect(Number.parseInt(sizeLine ?? '', 16)).toBeGreaterThan(wide.sse.length);
  });
});
