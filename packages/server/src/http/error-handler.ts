import { type ErrorBody, isErrorCode, JSON_BOUNDS_KEYWORD } from '@runcast/protocol';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { AppError } from '../errors.js';
import { isStorageFull, storageFullError } from '../store/storage-health.js';

/** Maps Fastify's own error codes onto the contract's. */
const FASTIFY_CODES: Record<string, AppError['code']> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  FST_ERR_CTP_INVALID_JSON_BODY: 'INVALID_JSON',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'INVALID_JSON',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'INVALID_INPUT',
  FST_ERR_VALIDATION: 'INVALID_INPUT',
};

function toAppError(err: FastifyError): AppError {
  if (err instanceof AppError) return err;
  if (err.validation) {
    const where = err.validationContext ?? 'request';
    // In a union (one log entry or a batch) the first error may be the other branch's complaint;
    // a free-form field out of bounds is the one worth naming.
    const first = err.validation.find((e) => e.keyword === JSON_BOUNDS_KEYWORD) ?? err.validation[0];
    const path = first?.instancePath ? `${where}${first.instancePath.replaceAll('/', '.')}` : where;
    const extra =
      first?.keyword === 'additionalProperties'
        ? ` "${(first.params as { additionalProperty?: string }).additionalProperty}" is not a known field`
        : ` ${first?.message ?? 'is invalid'}`;
    return new AppError('INVALID_INPUT', `${path}${extra}`, err.validation);
  }
  if (isStorageFull(err)) return storageFullError();
  const mapped = err.code ? FASTIFY_CODES[err.code] : undefined;
  if (mapped) return new AppError(mapped, err.message);
  if (isErrorCode(err.code)) return new AppError(err.code, err.message);
  if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
    return new AppError('INVALID_INPUT', err.message);
  }
  return new AppError('INTERNAL', 'internal error');
}

/** Sends an AppError with the contract's body. */
export function sendError(reply: FastifyReply, error: AppError): FastifyReply {
  const body: ErrorBody = { error: { code: error.code, message: error.message } };
  return reply.code(error.statusCode).type('application/json; charset=utf-8').send(body);
}

/** Every error leaves as `{"error": {"code", "message"}}` with the contract's status. */
export function registerErrorHandling(app: FastifyInstance): void {
  app.setErrorHandler((err: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    const error = toAppError(err);
    // A full disk is logged once by the store when it fills, not once per refused request.
    if (error.code === 'STORAGE_FULL')
      request.log.warn({ code: error.code }, 'request refused: storage is full');
    else if (error.statusCode >= 500) request.log.error({ err }, 'request failed');
    return sendError(reply, error);
  });
  app.setNotFoundHandler((request, reply) =>
    sendError(
      reply,
      new AppError('NOT_FOUND', `no route for ${request.method} ${request.url.split('?')[0]}`),
    ),
  );
}
