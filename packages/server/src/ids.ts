import { randomBytes } from 'node:crypto';

// Crockford base32, the alphabet of ULIDs: ids sort by creation time, which gives list
// pagination a stable cursor for free.
const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

let lastMs = -1;
let lastRandom = new Uint8Array(10);

function nextRandom(ms: number): Uint8Array {
  if (ms > lastMs) {
    lastMs = ms;
    lastRandom = randomBytes(10);
    return lastRandom;
  }
  // Same millisecond (or a clock step back): increment so ids stay strictly increasing.
  const next = Uint8Array.from(lastRandom);
  for (let i = next.length - 1; i >= 0; i--) {
    next[i] = ((next[i] ?? 0) + 1) & 0xff;
    if (next[i] !== 0) break;
  }
  lastRandom = next;
  return next;
}

/** A new, time-ordered id such as `run_01J…` (prefix + 26-character ULID). */
export function newId(prefix: 'run' | 'prj' | 'usr' | 'tok' | 'ses', nowMs = Date.now()): string {
  const ms = Math.max(nowMs, lastMs);
  let time = '';
  let t = ms;
  for (let i = 0; i < 10; i++) {
    time = ALPHABET[t % 32] + time;
    t = Math.floor(t / 32);
  }
  const random = nextRandom(ms);
  let bits = 0n;
  for (const byte of random) bits = (bits << 8n) | BigInt(byte);
  let rand = '';
  for (let i = 0; i < 16; i++) {
    rand = ALPHABET[Number(bits & 31n)] + rand;
    bits >>= 5n;
  }
  return `${prefix}_${time}${rand}`;
}
