import { createGunzip, gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { deflatePiece, GzipStream } from './gzip-stream.js';

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

  it('ends a member that carried nothing', () => {
    expect(gunzipSync(new GzipStream().end()).length).toBe(0);
  });
});
