import type { IncomingMessage, ServerResponse } from 'node:http';
import { idPattern } from '@runcast/protocol';
import type { Authenticator } from '../auth/authenticator.js';
import type { Policy } from '../auth/policy.js';
import type { Metrics } from '../metrics.js';
import { etagOf, etagSeq } from './routes.js';

export interface PollFastPathOptions {
  authenticator: Authenticator;
  policy: Policy;
  metrics: Metrics;
  parseCookies(header: string): Record<string, string | undefined>;
}

const PREFIX = '/api/v1/runs/';
const SUFFIX = '/progress';
const RUN_ID = new RegExp(idPattern('run'));

/**
 * The answer to most requests a polling client sends: "nothing new", a 304 to
 * `GET /api/v1/runs/{run_id}/progress` whose `If-None-Match` names the run's current seq.
 *
 * It is given before routing, from memory, when the credentials, the caller's access to the run
 * and the run's seq are all cached and the answer is exactly that 304. In every other case —
 * anything not cached, any other answer, a query string, a cross-origin request, a server
 * shutting down — the request goes on to the route, which decides with the same Authenticator
 * and Policy.
 */
export class PollFastPath {
  private enabled = true;

  constructor(private readonly options: PollFastPathOptions) {}

  /** From now on every request goes to the routes (the server is closing). */
  disable(): void {
    this.enabled = false;
  }

  /** Answers the request and returns true, or returns false and leaves it untouched. */
  tryAnswer(request: IncomingMessage, response: ServerResponse): boolean {
    const url = request.url;
    if (!this.enabled || request.method !== 'GET' || url === undefined) return false;
    if (!url.startsWith(PREFIX) || !url.endsWith(SUFFIX)) return false;
    const headers = request.headers;
    // A cross-origin request needs the CORS headers the route's plugins add.
    if (headers.origin !== undefined) return false;
    const seq = etagSeq(headers['if-none-match']);
    if (seq === undefined) return false;
    const runId = url.slice(PREFIX.length, url.length - SUFFIX.length);
    if (!RUN_ID.test(runId)) return false;
    const { authenticator, policy, metrics, parseCookies } = this.options;
    const principal = authenticator.cachedPrincipal({
      authorization: headers.authorization,
      cookies: headers.cookie === undefined ? undefined : parseCookies(headers.cookie),
    });
    const run = principal && policy.cachedReadableRun(principal, runId);
    if (run?.seq !== seq) return false;
    metrics.pollsAnsweredFromMemory.inc();
    metrics.recordClientHeaders(headers);
    // The same headers as the route's 304 (see `registerCompression`).
    response.writeHead(304, {
      etag: etagOf(seq),
      'cache-control': 'no-cache',
      vary: 'Accept-Encoding',
    });
    response.end();
    return true;
  }
}
