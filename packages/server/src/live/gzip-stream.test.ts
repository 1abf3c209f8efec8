import { createGunzip, gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { deflatePiece, deflatePieceAfter, GzipStream } from './gzip-stream.js';

const texts = [
  'retry: 2000\n\n',
  `id: 1\nevent: log\ndata: ${JSON.stringify({ message: 'x'.repeat(500) })}\n\n`,
  'event: keepalive\ndata: {}\n\n',
  'event: run_error\ndata: {"message":"café ✓"}\n\n',
  `id: 2\nevent: update\ndata: ${JSON.stringify({ stage: 'EXPORT', done: 4250, total: 10_000 })}\n\n`,
];

describe('GzipStream', () => {
  it('makes one gzip member of pieces compressed on their own, checked by its trailer', () => {
    const stream = new GzipStream();
    const parts = texts.flatMap((text) => stream.next(deflatePiece(text)));
    parts.push(stream.end());
    expect(gunzipSync(Buffer.concat(parts)).toString()).toBe(texts.join(''));
  });

  it('lets the same piece continue two streams with different pasts', () => {
    const shared = deflatePiece(texts[1]!);
    const one = new GzipStream();
    const other = new GzipStream();
    const first = [...one.next(deflatePiece('a')), ...one.next(shared), one.end()];
    const second = [...other.next(deflatePiece(texts[3]!.repeat(9))), ...other.next(shared), other.end()];
    expect(gunzipSync(Buffer.concat(first)).toString()).toBe(`a${texts[1]}`);
    expect(gunzipSync(Buffer.concat(second)).toString()).toBe(`${texts[3]!.repeat(9)}${texts[1]}`);
  });

  it('is decodable piece by piece: each write comes out before the next is sent', async () => {
    const stream = new GzipStream();
    const gunzip = createGunzip();
    let decoded = '';
    gunzip.on('data', (chunk: Buffer) => {
      decoded += chunk.toString();
    });
    for (const text of texts) {
      const before = decoded.length;
      const out = new Promise<void>((resolve) => {
        const check = () => {
          if (decoded.length >= before + text.length) {
            gunzip.off('data', check);
            resolve();
          }
        };
        gunzip.on('data', check);
      });
      for (const part of stream.next(deflatePiece(text))) gunzip.write(part);
      await out;
      expect(decoded.slice(before)).toBe(text);
    }
    const ended = new Promise((resolve, reject) => {
      gunzip.on('end', resolve);
      gunzip.on('error', reject);
    });
    gunzip.end(stream.end());
    await ended;
    expect(decoded).toBe(texts.join(''));
  });

  it("compresses a run's next frame after the frame before it, for the streams that wrote that one last", () => {
    const frame = (seq: number) =>
      `id: ${seq}\nevent: update\ndata: ${JSON.stringify({
        run_id: 'run_01KB6Q8W7X9Y0Z1A2B3C4D5E6F',
        seq,
        type: 'update',
        at: `2026-11-29T19:05:0${seq}.123Z`,
        base_seq: seq - 1,
        patch: { progress: { percentage: seq, done: 1764443101123 + seq }, stats: { objects: seq } },
      })}\n\n`;
    const previous = deflatePiece(frame(1));
    const streams = [new GzipStream(), new GzipStream()];
    const written = streams.map((stream, i) => [
      ...stream.next(deflatePiece(i === 0 ? 'retry: 2000\n\n' : ': another opening\n\n')),
      ...stream.next(previous, true),
    ]);
    const tail = streams[0]!.tail()!;
    expect(streams.map((stream) => stream.endsWith(tail))).toEqual([true, true]);
    const next = deflatePieceAfter(frame(2), tail);
    const alone = deflatePiece(frame(2));
    expect(next.deflated.length).toBeLessThan(alone.deflated.length / 3);
    streams.forEach((stream, i) => {
      written[i]!.push(...stream.next(next, true), stream.end());
    });
    expect(gunzipSync(Buffer.concat(written[0]!)).toString()).toBe(`retry: 2000\n\n${frame(1)}${frame(2)}`);
    expect(gunzipSync(Buffer.concat(written[1]!)).toString()).toBe(
      `: another opening\n\n${frame(1)}${frame(2)}`,
    );
  });

  it('has a tail of its last shared piece and the few own bytes after it, or none', () => {
    const stream = new GzipStream();
    expect(stream.tail()).toBeUndefined();
    const shared = deflatePiece(texts[1]!);
    stream.next(shared, true);
    stream.next(deflatePiece('id: a:1\n'));
    const tail = stream.tail();
    expect(tail?.after).toBe(shared);
    expect(tail?.suffix.toString()).toBe('id: a:1\n');
    expect(stream.endsWith({ after: shared, suffix: Buffer.from('id: a:1\n') })).toBe(true);
    expect(stream.endsWith({ after: shared, suffix: Buffer.from('id: a:2\n') })).toBe(false);
    // A stream's own text past a few hundred bytes (a replay) leaves nothing to refer back to.
    stream.next(deflatePiece('x'.repeat(300)));
    expect(stream.tail()).toBeUndefined();
  });

  it('ends a member that carried nothing', () => {
    expect(gunzipSync(new GzipStream().end()).length).toBe(0);
  });
});

describe('a piece shared by many streams', () => {
  it('keeps every stream checkable once it counts by table (past its first uses)', () => {
    const shared = deflatePiece(texts[1]!);
    const streams = Array.from({ length: 20 }, (_, i) => {
      const stream = new GzipStream();
      const own = `retry: ${i}\n\n`;
      return { stream, own, parts: [...stream.next(deflatePiece(own))] };
    });
    for (const s of streams) s.parts.push(...s.stream.next(shared, true), ...s.stream.next(shared, true));
    for (const { stream, own, parts } of streams) {
      expect(gunzipSync(Buffer.concat([...parts, stream.end()])).toString()).toBe(
        own + texts[1]! + texts[1]!,
      );
    }
  });
});
