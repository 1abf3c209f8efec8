import { type ServerResponse, STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { ErrorBody } from '@runcast/protocol';
import { AppError } from '../errors.js';

/** How long a refused connection may still drain what the client sends before it is destroyed. */
const LINGER_MS = 1000;

/** What Node's HTTP server reports through `clientError`, in the contract's terms. */
function toAppError(code: string | undefined): AppError {
  if (code === 'HPE_HEADER_OVERFLOW')
    return new AppError('HEADERS_TOO_LARGE', 'the request headers are too large');
  if (code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    return new AppError('REQUEST_TIMEOUT', 'the request was not received within the time allowed');
  }
  return new AppError('INVALID_INPUT', `malformed HTTP request (${code ?? 'unparsable'})`);
}

/**
 * True when a response on this connection has started: then a second status line would corrupt
 * it. Node keeps the response it attached to the socket in `_httpMessage` (its own clientError
 * default checks the same); without it, nothing has started.
 */
function responseStarted(socket: Socket): boolean {
  const attached = (socket as { _httpMessage?: ServerResponse | null })._httpMessage;
  return attached?.headersSent === true;
}

/**
 * Answers what Node's HTTP parser refuses (a malformed request line or header, a bad
 * Content-Length, Content-Length with Transfer-Encoding, oversized headers) and the request
 * timeouts with the contract's error body, then closes the connection.
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  if (socket.writable && !responseStarted(socket)) {
    const error = toAppError(err.code);
    const body = JSON.stringify({ error: { code: error.code, message: error.message } } satisfies ErrorBody);
    socket.end(
      `HTTP/1.1 ${error.statusCode} ${STATUS_CODES[error.statusCode]}\r\n` +
        'Content-Type: application/json; charset=utf-8\r\n' +
        `Content-Length: ${Buffer.byteLength(body)}\r\n` +
        `Connection: close\r\n\r\n${body}`,
    );
    // Destroying at once would reset the connection while the client still sends, and a reset can
    // discard the answer before the client reads it.
    setTimeout(() => socket.destroy(), LINGER_MS).unref();
    return;
  }
  socket.destroy();
}
