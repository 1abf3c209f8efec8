import type { Bus } from '../bus/bus.js';
import { RateLimiter } from '../http/rate-limiter.js';

/**
 * Limits password guessing without letting anyone lock others out.
 *
 * - Per client address: at most `max` failed logins a window; the next attempt, even with the
 *   right password, waits for the window to end. Behind a proxy this is the real client's
 *   address (RUNCAST_TRUST_PROXY), so one guesser does not lock out everyone behind the proxy.
 *   An attempt counts from the moment it is admitted (so that parallel attempts cannot all slip
 *   in before the first failure is known) and is taken back when the password was right.
 * - Per username: after `max` failures for a username within a window, from anywhere, only
 *   clients without a failure for that username in the window may still try it. Guessers spread
 *   over many addresses get one guess per address and window instead of `max`; the account's
 *   owner, whose address has not failed, still logs in with the right password. Its cost: an
 *   owner who mistypes while the account is under attack waits for the window to end.
 */
export class LoginThrottle {
  private readonly byAddress: RateLimiter;
  private readonly byUsername: RateLimiter;
  private readonly byAddressAndUsername: RateLimiter;

  constructor(
    private readonly max: number,
    windowMs: number,
    now: () => number = Date.now,
  ) {
    this.byAddress = new RateLimiter(windowMs, now);
    this.byUsername = new RateLimiter(windowMs, now);
    this.byAddressAndUsername = new RateLimiter(windowMs, now);
  }

  /** Admits one attempt and returns 0, or returns the seconds to wait and admits nothing. */
  admit(address: string, username: string): number {
    const waitS = this.check(address, username);
    if (waitS === 0) this.admitted(address);
    return waitS;
  }

  /** The seconds an attempt must wait, 0 when it may go ahead (nothing is counted). */
  check(address: string, username: string): number {
    if (this.byAddress.count(address) >= this.max) return this.byAddress.retryAfterS(address);
    const pair = pairKey(address, username);
    if (this.byUsername.count(username) >= this.max && this.byAddressAndUsername.count(pair) > 0) {
      return this.byAddressAndUsername.retryAfterS(pair);
    }
    return 0;
  }

  /** An attempt went ahead: it counts against its address until its answer. */
  admitted(address: string): void {
    this.byAddress.add(address);
  }

  /** The admitted attempt had the right password: it no longer counts against the address. */
  succeeded(address: string): void {
    this.byAddress.remove(address);
  }

  /** The admitted attempt failed. */
  failed(address: string, username: string): void {
    this.byUsername.add(username);
    this.byAddressAndUsername.add(pairKey(address, username));
  }
}

/**
 * The login limit of a cluster: each node counts every node's attempts, which travel over the
 * Bus (a node's own ones reach it synchronously), so a guesser gets `max` attempts a window in
 * all, not `max` per node behind a round-robin balancer.
 */
export class SharedLoginThrottle {
  private readonly stop: () => void;

  constructor(
    private readonly throttle: LoginThrottle,
    private readonly bus: Bus,
  ) {
    this.stop = bus.subscribe('login-attempt', ({ step, address, username }) => {
      if (step === 'admitted') throttle.admitted(address);
      else if (step === 'succeeded') throttle.succeeded(address);
      else throttle.failed(address, username);
    });
  }

  /** As `LoginThrottle.admit`; an admitted attempt is counted on every node. */
  admit(address: string, username: string): number {
    const waitS = this.throttle.check(address, username);
    if (waitS === 0) this.bus.publish({ type: 'login-attempt', step: 'admitted', address, username });
    return waitS;
  }

  succeeded(address: string, username: string): void {
    this.bus.publish({ type: 'login-attempt', step: 'succeeded', address, username });
  }

  failed(address: string, username: string): void {
    this.bus.publish({ type: 'login-attempt', step: 'failed', address, username });
  }

  close(): void {
    this.stop();
  }
}

// A username may hold any character; the address never holds a newline.
const pairKey = (address: string, username: string) => `${address}\n${username}`;
