import { connect, type Socket } from 'node:net';
import { BenchError } from './time.js';

/** One HTTP/1.1 answer: status and body (the bench's answers are ASCII JSON or empty). */
export interface RawResponse {
  status: number;
  body: string;
}

/** The text of one request, with `content-length` when it has a body. */
export function requestText(
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: string,
): string {
  let text = `${method} ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\n`;
  for (const [name, value] of Object.entries(headers)) text += `${name}: ${value}\r\n`;
  if (body === undefined) return `${text}\r\n`;
  return `${text}content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

const CONTENT_LENGTH = /\r\ncontent-length:\s*(\d+)/i;
const CHUNKED = /\r\ntransfer-encoding:\s*chunked/i;

/**
 * A keep-alive HTTP/1.1 connection with one request in flight. Node's `http` client costs several
 * times more CPU per request than the servers under test spend answering a 304, so the load
 * processes speak the protocol directly: they write a prepared request and read status and body.
 */
export class RawHttpConnection {
  private buffer = '';
  private waiting: { resolve(response: RawResponse): void; reject(err: Error): void } | undefined;
  private failure: Error | undefined;

  private constructor(private readonly socket: Socket) {
    socket.setNoDelay(true);
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => this.fail(new BenchError('CLOSED', 'connection closed by the server')));
  }

  static connect(host: string, port: number, timeoutMs = 15_000): Promise<RawHttpConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new BenchError('TIMEOUT', `connect to ${host}:${port} took over ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve(new RawHttpConnection(socket));
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  get isOpen(): boolean {
    return this.failure === undefined;
  }

  /** Writes `request` (from `requestText`) and resolves with its answer. */
  send(request: string): Promise<RawResponse> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.waiting) return Promise.reject(new BenchError('BUSY', 'one request at a time per connection'));
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.socket.write(request);
    });
  }

  close(): void {
    this.failure ??= new BenchError('CLOSED', 'closed by the bench');
    this.socket.destroy();
  }

  private onData(chunk: string): void {
    this.buffer = this.buffer.length === 0 ? chunk : this.buffer + chunk;
    const headEnd = this.buffer.indexOf('\r\n\r\n');
    if (headEnd < 0) return;
    const status = Number(this.buffer.slice(9, 12));
    const head = this.buffer.slice(0, headEnd);
    if (CHUNKED.test(head)) {
      this.fail(new BenchError('UNSUPPORTED', 'chunked answers are not supported by the raw client'));
      return;
    }
    const length = status === 304 || status === 204 ? 0 : Number(CONTENT_LENGTH.exec(head)?.[1] ?? 0);
    const end = headEnd + 4 + length;
    if (this.buffer.length < end) return;
    const body = this.buffer.slice(headEnd + 4, end);
    this.buffer = this.buffer.slice(end);
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.resolve({ status, body });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.reject(this.failure);
    this.socket.destroy();
  }
}
