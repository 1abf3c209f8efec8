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
  /**
   * Telemetry: why this transport is in use, when it replaced another. Reported once, with the
   * first request (or handshake): the server counts fallbacks, not requests.
   */
  fallback: { from: ConnectionMethod; reason: string } | undefined;
  /** What the service learned about the network, shared by every transport it builds. */
  hints: NetworkHints;
  /**
   * Ask for delta updates (each transport makes them whole before handing them on); false asks
   * for whole snapshots, as an old client does.
   */
  delta: boolean;
  /**
   * How long a long-poll answer may wait, once something arrived, for what follows at once to
   * come with it (`linger_ms`); 0 answers at the first event.
   */
  pollLingerMs: number;
}

/** Limits learned from proxies that cut idle connections. */
export interface NetworkHints {
  /** Seconds a long-poll may wait on the server (the contract allows up to 30). */
  pollWaitS: number;
  /** Keep-alive interval to ask of an SSE stream (`?keepalive=`); unset until a cut was seen. */
  keepaliveS: number | undefined;
  /** The server refused the delta fields (it is older than them): whole updates from now on. */
  deltaRefused: boolean;
}

/** Whether to ask for delta updates now: the service wants them and the server took them. */
export function asksDelta(context: TransportContext): boolean {
  return context.delta && !context.hints.deltaRefused;
}

/**
 * Whether a refusal of a request that asked for deltas was a server older than them refusing the
 * field (400 INVALID_INPUT): then deltas are asked no more, and the request is to be made again.
 */
export function refusedDelta(context: TransportContext, asked: boolean, code: string): boolean {
  if (!asked || code !== 'INVALID_INPUT') return false;
  context.hints.deltaRefused = true;
  return true;
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
  /** Opens `runId` again from its current cursor (its opening may have skipped logs). */
  resume(runId: string): void;
  close(): void;
}

/** Builds a transport of a method; injectable so that tests can use fakes. */
export type TransportFactory = (method: ConnectionMethod, context: TransportContext) => Transport;

/** Resolves a TokenSource to the token to send now. */
export async function currentToken(source: TokenSource): Promise<string | undefined> {
  return typeof source === 'function' ? await source() : source;
}

/** Headers for an HTTP transport: credentials (if a token) and, on the first request only, the fallback report. */
export async function requestHeaders(
  context: TransportContext,
  method: ConnectionMethod | null,
): Promise<Record<string, string>> {
  // A request of no transport (the REST opening snapshot) reports nothing: it is no poll.
  const headers: Record<string, string> = method ? { 'x-runcast-transport': method } : {};
  const token = await currentToken(context.token);
  if (token) headers.authorization = `Bearer ${token}`;
  const fallback = method ? takeFallback(context) : undefined;
  if (fallback) {
    headers['x-runcast-fallback-from'] = fallback.from;
    headers['x-runcast-fallback-reason'] = fallback.reason;
  }
  return headers;
}

/** The fallback report, once: later requests of the same transport carry none. */
export function takeFallback(context: TransportContext): TransportContext['fallback'] {
  const fallback = context.fallback;
  context.fallback = undefined;
  return fallback;
}
