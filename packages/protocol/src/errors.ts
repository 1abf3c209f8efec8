/** Every error code of the wire contract, next to the HTTP status it travels with. */
export const ERROR_STATUS = {
  INVALID_INPUT: 400,
  INVALID_JSON: 400,
  KIND_UNSUPPORTED: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  ORIGIN_MISMATCH: 403,
  NOT_FOUND: 404,
  RUN_NOT_FOUND: 404,
  PROJECT_NOT_FOUND: 404,
  USER_NOT_FOUND: 404,
  TOKEN_NOT_FOUND: 404,
  /** The request's headers or body did not arrive within the server's request timeout. */
  REQUEST_TIMEOUT: 408,
  RUN_TERMINAL: 409,
  INVALID_TRANSITION: 409,
  ALREADY_EXISTS: 409,
  /**
   * A node wrote to a run it no longer owns: its lease ran out and another node claimed the run.
   * Nothing was stored; the writer stops working on the run.
   */
  LEASE_LOST: 409,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  RATE_LIMITED: 429,
  HEADERS_TOO_LARGE: 431,
  INTERNAL: 500,
  NOT_READY: 503,
  /** The server's disk is full: nothing was stored; the same request succeeds once space returns. */
  STORAGE_FULL: 507,
} as const;

/** A contract error code such as `RUN_NOT_FOUND`. */
export type ErrorCode = keyof typeof ERROR_STATUS;

/** True when `code` is one of the contract's error codes. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_STATUS, code);
}
