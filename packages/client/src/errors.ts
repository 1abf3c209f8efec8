/** An error of the client with a code: a contract code (`UNAUTHORIZED`…) or a transport one. */
export class RuncastError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = 'RuncastError';
  }
}

/** Codes that end a single run's subscription rather than the connection. */
export const RUN_ERROR_CODES = new Set(['RUN_NOT_FOUND', 'FORBIDDEN']);

/** Reads the contract's error body from a failed response. */
export async function errorFromResponse(response: Response): Promise<RuncastError> {
  let code = `HTTP_${response.status}`;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = (await response.json()) as { error?: { code?: string; message?: string } };
    if (body.error?.code) code = body.error.code;
    if (body.error?.message) message = body.error.message;
  } catch {
    // Not the contract's body (a proxy's page, say): keep the status.
  }
  return new RuncastError(code, message, response.status);
}
