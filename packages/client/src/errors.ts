import { ERROR_STATUS, type ErrorCode, isErrorCode } from '@runcast/protocol';

/**
 * Codes the client raises itself, each with what it means. Where a condition is the same as one
 * of the server's (bad input, refused credentials), the contract's code in ERROR_STATUS is used.
 */
export const CLIENT_ERROR_CODES = {
  /** The ProgressService or the RunReporter was closed and takes no more calls. */
  CLOSED: 'closed by the caller',
  /** A connection attempt failed without an answer from the server. */
  CONNECT_FAILED: 'connection failed',
  /** An open WebSocket was closed. */
  DISCONNECTED: 'disconnected',
  /** A request failed without an answer (connection refused, DNS, offline). */
  NETWORK: 'network error',
  /** An SSE answer had no body to read. */
  NO_BODY: 'stream without a body',
  /** The server is shutting down and asked clients to reconnect. */
  SERVER_SHUTDOWN: 'server shutting down',
  /** A stream carried nothing, not even a keep-alive, for too long. */
  SILENT: 'stream silent',
  /** A stream ended while runs were still followed. */
  STREAM_ENDED: 'stream ended',
  /** No answer within the time allowed. */
  TIMEOUT: 'timed out',
} as const;

/** A code of the client's own. */
export type ClientErrorCode = keyof typeof CLIENT_ERROR_CODES;

/** Every code a RuncastError carries: the contract's, the client's, or `HTTP_<status>` for a foreign answer. */
export type RuncastErrorCode = ErrorCode | ClientErrorCode | `HTTP_${number}`;

/** An error of the client with a code: a contract code (`UNAUTHORIZED`…) or a client one (`TIMEOUT`…). */
export class RuncastError extends Error {
  readonly code: RuncastErrorCode;

  constructor(
    code: RuncastErrorCode,
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = 'RuncastError';
    this.code = code;
  }
}

/** Codes that end a single run's subscription rather than the connection. */
export const RUN_ERROR_CODES: ReadonlySet<string> = new Set<ErrorCode>(['RUN_NOT_FOUND', 'FORBIDDEN']);

/** The credentials were refused: retrying with them cannot work. */
export function isUnauthorized(error: RuncastError): boolean {
  return error.code === 'UNAUTHORIZED' || error.status === ERROR_STATUS.UNAUTHORIZED;
}

/** A code read from the wire: the contract's, or `HTTP_<status>` when it is not one of them. */
export function wireCode(code: unknown, status?: number): RuncastErrorCode {
  if (isErrorCode(code)) return code;
  return status === undefined ? 'CONNECT_FAILED' : `HTTP_${status}`;
}

/** Reads the contract's error body from a failed response. */
export async function errorFromResponse(response: Response): Promise<RuncastError> {
  let code: RuncastErrorCode = `HTTP_${response.status}`;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = (await response.json()) as { error?: { code?: string; message?: string } };
    code = wireCode(body.error?.code, response.status);
    if (body.error?.message) message = body.error.message;
  } catch {
    // Not the contract's body (a proxy's page, say): keep the status.
  }
  return new RuncastError(code, message, response.status);
}
