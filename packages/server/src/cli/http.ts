import type { ErrorBody } from '@runcast/protocol';

/** A failed API call, with the contract's code. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Exit codes of `runcast`. */
export const EXIT = { ok: 0, runFailed: 1, usage: 2, runCanceled: 3, api: 4, unreachable: 5 } as const;

/** Where the CLI talks to, and with which credentials (from flags or the environment). */
export interface Target {
  url: string;
  token: string | undefined;
}

/** Calls the API; throws CliError with a one-line message on any failure. */
export async function call<T>(target: Target, method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (target.token) headers.authorization = `Bearer ${target.token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response: Response;
  try {
    response = await fetch(`${target.url}/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new CliError(`cannot reach ${target.url}: ${(err as Error).message}`, EXIT.unreachable);
  }
  const text = await response.text();
  if (!response.ok) {
    let detail = `HTTP ${response.status}`;
    try {
      const error = (JSON.parse(text) as ErrorBody).error;
      detail = `${error.code}: ${error.message}`;
    } catch {
      // Not the contract's body.
    }
    const hint = response.status === 401 ? ' (set RUNCAST_TOKEN to a login or API token)' : '';
    throw new CliError(`${method} ${path} failed: ${detail}${hint}`, EXIT.api);
  }
  return (text ? JSON.parse(text) : undefined) as T;
}
