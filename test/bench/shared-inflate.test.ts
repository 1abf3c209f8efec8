import { constants, createDeflateRaw, type DeflateRaw, deflateRawSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { lastSseFrame, SharedGunzip, SharedInflater } from '../../bench/src/load/shared-inflate.js';

// The bench's load reads thousands of compressed connections with inflaters that share their
// work; what they give must be exactly what a connection's own inflater would.

/** Compresses messages one after another on one context, each ending on a sync flush. */
async function compressAll(messages: string[], windowBits: number): Promise<Buffer[]> {
  const deflate: DeflateRaw = createDeflateRaw({ windowBits, level: 6 });
  const units: Buffer[] = [];
  for (const message of messages) {
    deflate.write(Buffer.from(message));
    await new Promise<void>((resolve) => deflate.flush(constants.Z_SYNC_FLUSH, () => resolve()));
    const out: Buffer[] = [];
    for (let chunk = deflate.read(); chunk; chunk = deflate.read()) out.push(chunk);
    units.push(Buffer.concat(out));
  }
  deflate.close();
  return units;
}

const tick = (i: number) =>
  `42["run_event",{"run_id":"run_01ABC","type":"update","at":"2026-11-29T20:00:${String(i % 60).padStart(2, '0')}.000Z","base_seq":${i},"patch":{"progress":{"done":${i * 37}}}}]`;

describe('the load’s shared inflater', () => {
  it('gives every connection exactly its messages, sharing what connections have in common', async () => {
    const messages = Array.from({ length: 200 }, (_, i) => tick(i));
    const units = await compressAll(messages, 10);
    // Units refer back to earlier messages: they cannot be read alone.
    expect(() => new SharedInflater(10, true, false).inflate(units[5] as Buffer)).toThrow(
      /beyond the window/,
    );
    const connections = Array.from({ length: 3 }, () => new SharedInflater(10, true, false));
    for (const [i, unit] of units.entries()) {
      for (const connection of connections)
        expect(connection.inflate(unit).bytes.toString()).toBe(messages[i]);
    }
  });

  it('reads a stream whose units refer back across several messages (the whole window)', async () => {
    // Short messages that repeat the ones a few before them, not the one just before.
    const messages = Array.from(
      { length: 120 },
      (_, i) => `m${i % 7}-${'abcdefghij'.slice(0, 1 + (i % 7))}-${i % 3}`,
    );
    const units = await compressAll(messages, 15);
    const connection = new SharedInflater(15, true, false);
    expect(units.map((unit) => connection.inflate(unit).bytes.toString())).toEqual(messages);
  });

  it('reads permessage-deflate messages, whose sync-flush tail the sender leaves off', async () => {
    const messages = Array.from({ length: 50 }, (_, i) => tick(i));
    const units = (await compressAll(messages, 10)).map((unit) => unit.subarray(0, unit.length - 4));
    const connection = new SharedInflater(10, true, true);
    expect(units.map((unit) => connection.inflate(unit).bytes.toString())).toEqual(messages);
  });
});

describe('the load’s shared inflater on SSE streams', () => {
  /** Each frame compressed after the frame before it only, as the server's chained pieces are. */
  const frames = Array.from({ length: 6 }, (_, i) => `id: ${i}\ndata: ${tick(i)}\n\n`);
  const piece = (i: number) =>
    deflateRawSync(frames[i] as string, {
      windowBits: 15,
      finishFlush: constants.Z_SYNC_FLUSH,
      ...(i > 0 ? { dictionary: Buffer.from(frames[i - 1] as string) } : {}),
    });

  it('reads a stream whose pieces were batched into one write, and the pieces after it', () => {
    const oneByOne = new SharedInflater(15, true, false, lastSseFrame);
    const batched = new SharedInflater(15, true, false, lastSseFrame);
    const read = (inflater: SharedInflater, units: Buffer[]) =>
      units.map((unit) => inflater.inflate(unit).bytes.toString()).join('');
    expect(
      read(
        oneByOne,
        frames.map((_, i) => piece(i)),
      ),
    ).toBe(frames.join(''));
    // Two writes of the server batched into one unit, then one piece at a time again.
    const units = [piece(0), Buffer.concat([piece(1), piece(2)]), piece(3), piece(4), piece(5)];
    expect(read(batched, units)).toBe(frames.join(''));
  });

  it('reads a gzip stream given as the latin1 text of its chunks, each result decoded once for all', () => {
    const header = Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    const chunks = frames.map((_, i) =>
      (i === 0 ? Buffer.concat([header, piece(0)]) : piece(i)).toString('latin1'),
    );
    const first = new SharedGunzip();
    const second = new SharedGunzip();
    const results = chunks.map((chunk) => first.inflate(chunk));
    expect(results.map((inflated) => inflated.text).join('')).toBe(frames.join(''));
    // Another connection with the same bytes gets the very same results, their text made once.
    const again = chunks.map((chunk) => second.inflate(chunk));
    for (const [i, inflated] of again.entries()) expect(inflated).toBe(results[i]);
    expect(() => new SharedGunzip().inflate(chunks[1] as string)).toThrow(/not a gzip stream/);
  });
});
