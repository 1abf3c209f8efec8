import { JSON_BOUNDS_KEYWORD, type JsonBounds } from '@runcast/protocol';
import Ajv, { type SchemaValidateFunction } from 'ajv';
import addFormats from 'ajv-formats';
import type { FastifySchemaCompiler } from 'fastify';
import { findJsonFault } from './json-fault.js';

/** `x-json-bounds`: a free-form field nests at most `depth` levels and is at most `bytes` of JSON. */
const checkJsonBounds: SchemaValidateFunction = (bounds: JsonBounds, data: unknown) => {
  const fault = findJsonFault(data, bounds.depth);
  // The depth is checked first: within it, serializing cannot exhaust the stack.
  const message = fault
    ? fault.problem
    : Buffer.byteLength(JSON.stringify(data) ?? '') > bounds.bytes
      ? `is larger than ${bounds.bytes} bytes of JSON`
      : undefined;
  checkJsonBounds.errors = message ? [{ keyword: JSON_BOUNDS_KEYWORD, message, params: bounds }] : [];
  return message === undefined;
};

function ajv(coerceTypes: boolean) {
  // removeAdditional stays off: an unknown field is a 400, never silently dropped.
  const instance = new Ajv.default({
    coerceTypes,
    useDefaults: true,
    removeAdditional: false,
    allErrors: false,
    strict: false,
  });
  addFormats.default(instance);
  instance.addKeyword({
    keyword: JSON_BOUNDS_KEYWORD,
    schemaType: 'object',
    errors: true,
    validate: checkJsonBounds,
  });
  return instance;
}

/**
 * Bodies are validated without type coercion ("42" is not a number); query strings and path
 * parameters, which are text on the wire, are coerced.
 */
export function createValidatorCompiler(): FastifySchemaCompiler<unknown> {
  const strict = ajv(false);
  const coercing = ajv(true);
  return ({ schema, httpPart }) =>
    (httpPart === 'body' ? strict : coercing).compile(schema as object) as ReturnType<
      FastifySchemaCompiler<unknown>
    >;
}
