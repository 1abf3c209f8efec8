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
    if (this.byAddress.count(address) >= this.max) return this.byAddress.retryAfterS(address);
    const pair = pairKey(address, username);
    if (this.byUsername.count(username) >= this.max && this.byAddressAndUsername.count(pair) > 0) {
      return this.byAddressAndUsername.retryAfterS(pair);
    }
    this.byAddress.add(address);
    return 0;
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

// A username may hold any character; the address never holds a newline.
const pairKey = (address: string, username: string) => `${address}\n${username}`;
