import type { RuncastError } from './errors.js';
import type { ConnectionMethod, Environment, ProgressEvent, TokenSource } from './types.js';

/** What a transport reports to the ProgressService. */
export interface TransportHandlers {
  /** An event of any followed run, in seq order per run. */
  onEvent(event: ProgressEvent): void;
  /** The connection failed after `connect` resolved; the transport is finished. */
  onClose(error: RuncastError): void;
}

/** What every transport is given. */
export interface TransportContext {
  baseUrl: string;
  wsUrl: string;
  socketPath: string;
  token: TokenSource;
  env: Environment;
  /** Where each followed run resumes from (the last seq delivered), asked at every (re)open. */
  cursor(runId: string): number | undefined;
  /** Telemetry: why this transport is in use, when it replaced another. */
  fallback: { from: ConnectionMethod; reason: string } | undefined;
}

/**
 * One connection to the server, carrying many runs. `connect` resolves when the first snapshot
 * (or run-level answer) arrived and rejects if the connection fails first; afterwards every
 * failure arrives once through `onClose`.
 */
export interface Transport {
  readonly method: ConnectionMethod;
  connect(runIds: readonly string[], handlers: TransportHandlers): Promise<void>;
  subscribe(runId: string): void;
  unsubscribe(runId: string): void;
  close(): void;
}

/** Builds a transport of a method; injectable so that tests can use fakes. */
export type TransportFactory = (method: ConnectionMethod, context: TransportContext) => Transport;

/** Resolves a TokenSource to the token to send now. */
export async function currentToken(source: TokenSource): Promise<string | undefined> {
  return typeof source === 'function' ? await source() : source;
}

/** Headers for an HTTP transport: credentials (if a token) and the telemetry fields. */
export async function requestHeaders(
  context: TransportContext,
  method: ConnectionMethod,
): Promise<Record<string, string>> {
  const headers: Record<string, string> = { 'x-runcast-transport': method };
  const token = await currentToken(context.token);
  if (token) headers.authorization = `Bearer ${token}`;
  if (context.fallback) {
    headers['x-runcast-fallback-from'] = context.fallback.from;
    headers['x-runcast-fallback-reason'] = context.fallback.reason;
  }
  return headers;
}
