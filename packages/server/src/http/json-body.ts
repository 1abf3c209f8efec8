import { isUtf8 } from 'node:buffer';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { AppError } from '../errors.js';
import { findJsonFault } from './json-fault.js';

/**
 * Deepest nesting of a whole JSON body. Every schema of the API is far shallower; the bound keeps
 * what follows parsing (validation, fingerprints, serialization of what is stored) clear of the
 * stack limit. Free-form fields have tighter bounds of their own (`x-json-bounds`).
 */
export const MAX_BODY_DEPTH = 64;

/**
 * Parses every `application/json` body, for every route, and refuses what storage could not keep
 * as sent: bytes that are not UTF-8 (decoding would turn them into U+FFFD), strings with lone
 * surrogates, numbers that overflow to Infinity, and nesting deeper than MAX_BODY_DEPTH.
 */
export function registerJsonBodyParser(app: FastifyInstance): void {
  // Fastify's own parser: __proto__ and constructor.prototype keys are refused as they were. It
  // answers through `done` before it returns (its type allows a promise it never gives).
  const parse = app.getDefaultJsonParser('error', 'error') as (
    request: FastifyRequest,
    body: string,
    done: (err: Error | null, value?: unknown) => void,
  ) => void;
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
    const bytes = body as Buffer;
    if (!isUtf8(bytes)) {
      done(new AppError('INVALID_JSON', 'the body is not valid UTF-8'), undefined);
      return;
    }
    parse(request, bytes.toString('utf8'), (err, value) => {
      if (err) {
        done(err, undefined);
        return;
      }
      const fault = findJsonFault(value, MAX_BODY_DEPTH);
      if (fault) done(new AppError('INVALID_INPUT', `body${fault.path} ${fault.problem}`), undefined);
      else done(null, value);
    });
  });
}
