import { describe, expect, it } from 'vitest';
import { FlushPacer } from './flush-pacer.js';

/** A pacer on a clock the test moves, and a flush that takes `tookMs`. */
function setup() {
  let clockMs = 10_000;
  const pacer = new FlushPacer(() => clockMs);
  return {
    pacer,
    wait(ms: number) {
      clockMs += ms;
    },
    flush(tookMs: number, commits = 1) {
      for (let i = 0; i < commits; i++) pacer.committed();
      const startMs = pacer.flushing();
      clockMs += tookMs;
      pacer.flushed(startMs);
    },
  };
}

describe('FlushPacer', () => {
  it('flushes at once while there is time between flushes', () => {
    const { pacer, wait, flush } = setup();
    for (let i = 0; i < 20; i++) {
      flush(45);
      // 10 commits a second: 55 ms between 45 ms flushes.
      wait(55);
      expect(pacer.delayMs()).toBe(0);
    }
    expect(pacer.isPacing).toBe(false);
  });

  it('is not set off by two flushes close together', () => {
    const { pacer, wait, flush } = setup();
    for (let i = 0; i < 10; i++) {
      flush(45);
      flush(45);
      wait(100);
    }
    expect(pacer.isPacing).toBe(false);
  });

  it('after three flushes back to back, waits as long as the last flush took', () => {
    const { pacer, wait, flush } = setup();
    flush(40);
    flush(40);
    flush(40);
    expect(pacer.isPacing).toBe(false);
    flush(40);
    expect(pacer.isPacing).toBe(true);
    expect(pacer.delayMs()).toBe(40);
    wait(15);
    expect(pacer.delayMs()).toBe(25);
    wait(25);
    expect(pacer.delayMs()).toBe(0);
  });

  it('keeps pacing while the waits bring several commits, and stops after one that brings one', () => {
    const { pacer, wait, flush } = setup();
    for (let i = 0; i < 4; i++) flush(40);
    wait(40);
    flush(40, 3);
    expect(pacer.isPacing).toBe(true);
    expect(pacer.delayMs()).toBe(40);
    wait(40);
    flush(40, 1);
    expect(pacer.isPacing).toBe(false);
    expect(pacer.delayMs()).toBe(0);
  });

  it('ignores flushes too short to keep the server busy', () => {
    const { pacer, flush } = setup();
    for (let i = 0; i < 100; i++) flush(0.2);
    expect(pacer.isPacing).toBe(false);
  });
});
