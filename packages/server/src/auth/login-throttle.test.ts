import { describe, expect, it } from 'vitest';
import { MemoryBus } from '../bus/memory.js';
import { LoginThrottle, SharedLoginThrottle } from './login-throttle.js';

/** A throttle of 3 failures a minute on a clock the test moves. */
function throttle() {
  let nowMs = 0;
  return {
    limiter: new LoginThrottle(3, 60_000, () => nowMs),
    advance(ms: number) {
      nowMs += ms;
    },
  };
}

/** One attempt: 'ok' or 'fail' when admitted, else the seconds to wait. */
function attempt(limiter: LoginThrottle, address: string, username: string, right: boolean): string | number {
  const waitS = limiter.admit(address, username);
  if (waitS > 0) return waitS;
  if (right) limiter.succeeded(address);
  else limiter.failed(address, username);
  return right ? 'ok' : 'fail';
}

describe('LoginThrottle', () => {
  it('stops a client after its failures, right password included, until the window ends', () => {
    const { limiter, advance } = throttle();
    for (let i = 0; i < 3; i++) expect(attempt(limiter, 'a', 'admin', false)).toBe('fail');
    expect(attempt(limiter, 'a', 'admin', true)).toBe(60);
    expect(attempt(limiter, 'a', 'bob', true)).toBe(60);
    advance(60_000);
    expect(attempt(limiter, 'a', 'admin', true)).toBe('ok');
  });

  it("does not count one client's failures against another", () => {
    const { limiter } = throttle();
    for (let i = 0; i < 3; i++) attempt(limiter, 'a', 'alice', false);
    expect(attempt(limiter, 'b', 'bob', false)).toBe('fail');
    expect(attempt(limiter, 'b', 'bob', true)).toBe('ok');
  });

  it('does not count successful logins', () => {
    const { limiter } = throttle();
    for (let i = 0; i < 10; i++) expect(attempt(limiter, 'office', `user${i}`, true)).toBe('ok');
  });

  it('counts attempts still being checked, so parallel guesses cannot all slip in', () => {
    const { limiter } = throttle();
    for (let i = 0; i < 3; i++) expect(limiter.admit('a', 'admin')).toBe(0);
    expect(limiter.admit('a', 'admin')).toBeGreaterThan(0);
  });

  it('gives guessers spread over many addresses one guess each, and lets the owner in', () => {
    const { limiter, advance } = throttle();
    for (const address of ['x1', 'x2', 'x3']) expect(attempt(limiter, address, 'admin', false)).toBe('fail');
    // The username is under attack: an address that failed on it waits…
    expect(attempt(limiter, 'x1', 'admin', false)).toBe(60);
    // …a fresh one gets its one guess…
    expect(attempt(limiter, 'x4', 'admin', false)).toBe('fail');
    expect(attempt(limiter, 'x4', 'admin', true)).toBe(60);
    // …and the owner, from an address without failures, logs in.
    expect(attempt(limiter, 'owner', 'admin', true)).toBe('ok');
    // Other usernames are untouched at the addresses that guessed.
    expect(attempt(limiter, 'x1', 'bob', true)).toBe('ok');
    advance(60_000);
    expect(attempt(limiter, 'x1', 'admin', true)).toBe('ok');
  });
});

describe('SharedLoginThrottle', () => {
  it('counts the attempts of every node that shares the bus', () => {
    // Two nodes: their own throttles, one bus between them (as PostgreSQL NOTIFY would carry).
    const bus = new MemoryBus();
    const nodes = [0, 1].map(() => new SharedLoginThrottle(new LoginThrottle(3, 60_000, () => 0), bus));
    const tryOn = (node: number, right: boolean) => {
      const limiter = nodes[node]!;
      const waitS = limiter.admit('a', 'admin');
      if (waitS > 0) return waitS;
      if (right) limiter.succeeded('a', 'admin');
      else limiter.failed('a', 'admin');
      return right ? 'ok' : 'fail';
    };
    // Round-robin: failures land on alternate nodes, and both know all of them.
    expect([tryOn(0, false), tryOn(1, false), tryOn(0, false)]).toEqual(['fail', 'fail', 'fail']);
    expect(tryOn(1, true)).toBe(60);
    expect(tryOn(0, true)).toBe(60);
    for (const node of nodes) node.close();
  });
});
