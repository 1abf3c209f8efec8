import { promisify } from 'node:util';
import { gzip, gzipSync } from 'node:zlib';
import type { FastifyInstance } from 'fastify';
import { negotiateCoding, varyOnAcceptEncoding } from './accept-encoding.js';

export interface CompressionOptions {
  /** Smaller answers go uncompressed: the gzip frame and the CPU would cost more than they save. */
  minBytes: number;
}

/**
 * gzip at level 1 (zlib's fast matcher): on a page of 100 log events it compresses within 1 % of
 * level 6 in about half the CPU. Brotli at quality 1 costs about the same and is ~20 % smaller,
 * but Node's fetch and most tools over plain HTTP accept only gzip and deflate: one coding for
 * dynamic answers, and brotli for the dashboard's files, compressed once at build time.
 */
const GZIP_OPTIONS = { level: 1 };
/** Above this, the body is compressed on libuv's thread pool, so that a 1 MB page does not stall live delivery. */
const ASYNC_FROM_BYTES = 64 * 1024;
const gzipAsync = promisify(gzip);
const JSON_TYPE = /^application\/(?:[\w.+-]+\+)?json\b/i;
/** Answers that carry no body, or a part of one. */
const NO_BODY = new Set([204, 206, 304]);

/** Compresses `body` with gzip, on the thread pool when it is large. */
export async function gzipBody(body: Buffer): Promise<Buffer> {
  if (body.length < ASYNC_FROM_BYTES) return gzipSync(body, GZIP_OPTIONS);
  return gzipAsync(body, GZIP_OPTIONS);
}

/**
 * Compresses JSON answers for clients that accept gzip: replays, `/events`, run lists, polling
 * bodies. Every JSON answer and every 304 says `Vary: Accept-Encoding`, since whether it is
 * compressed depends on that header. A compressed answer's ETag becomes weak: its bytes differ
 * from the identity answer's, and `If-None-Match` (compared weakly) still matches it.
 */
export function registerCompression(app: FastifyInstance, options: CompressionOptions): void {
  app.addHook('onSend', async (request, reply, payload) => {
    if (reply.statusCode === 304) {
      reply.header('vary', varyOnAcceptEncoding(reply.getHeader('vary')));
      return payload;
    }
    const type = reply.getHeader('content-type');
    if (typeof type !== 'string' || !JSON_TYPE.test(type)) return payload;
    reply.header('vary', varyOnAcceptEncoding(reply.getHeader('vary')));
    if (NO_BODY.has(reply.statusCode) || reply.hasHeader('content-encoding')) return payload;
    if (typeof payload !== 'string' && !Buffer.isBuffer(payload)) return payload;
    const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
    if (body.length < options.minBytes) return payload;
    if (negotiateCoding(request.headers['accept-encoding'], ['gzip']) === undefined) return payload;
    const etag = reply.getHeader('etag');
    if (typeof etag === 'string' && !etag.startsWith('W/')) reply.header('etag', `W/${etag}`);
    reply.header('content-encoding', 'gzip');
    reply.removeHeader('content-length');
    return gzipBody(body);
  });
}
