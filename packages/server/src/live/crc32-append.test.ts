import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { Crc32Append } from './crc32-append.js';

describe('Crc32Append', () => {
  it('gives the CRC-32 of data followed by a block from the two CRCs, for any lengths', () => {
    for (const length of [0, 1, 2, 3, 7, 100, 257, 4096, 65_535, 100_000]) {
      const block = randomBytes(length);
      const append = new Crc32Append(crc32(block), length);
      for (const before of [Buffer.alloc(0), Buffer.from('a'), randomBytes(333)]) {
        expect(append.after(crc32(before))).toBe(crc32(Buffer.concat([before, block])));
      }
    }
  });

  it('chains: a stream of the same block appended many times', () => {
    const block = Buffer.from('event: update\ndata: {"done":4250}\n\n');
    const append = new Crc32Append(crc32(block), block.length);
    let crc = crc32('retry: 2000\n\n');
    let expected = crc;
    for (let i = 0; i < 50; i++) {
      crc = append.after(crc);
      expected = crc32(block, expected);
    }
    expect(crc).toBe(expected);
    expect(crc).not.toBe(crc32(block));
  });
});
