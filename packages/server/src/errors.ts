import { ERROR_STATUS, type ErrorCode } from '@runcast/protocol';

/** An error that crosses the wire: a contract code, its HTTP status and a human message. */
export class AppError extends Error {
  readonly statusCode: number;

  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'AppError';
    this.statusCode = ERROR_STATUS[code];
  }
}
