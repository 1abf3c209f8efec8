import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * Mounts the server under RUNCAST_BASE_PATH: takes the prefix off the request's URL, so that the
 * routes, the dashboard and the poll fast path see the same paths as without a prefix. Returns
 * false, leaving the URL alone, when the request is outside the prefix.
 */
export function stripBasePath(request: IncomingMessage, basePath: string): boolean {
  const url = request.url ?? '';
  if (!url.startsWith(basePath)) return false;
  const rest = url.slice(basePath.length);
  if (rest === '' || rest.startsWith('?')) request.url = `/${rest}`;
  else if (rest.startsWith('/')) request.url = rest;
  else return false;
  return true;
}

/** The contract's 404 for a request outside the base path, answered before routing. */
export function answerOutsideBasePath(response: ServerResponse, basePath: string): void {
  const body = JSON.stringify({
    error: { code: 'NOT_FOUND', message: `this server answers under ${basePath}/` },
  });
  response.writeHead(404, { 'content-type': 'application/json; charset=utf-8' }).end(body);
}
