import type { ErrorBody } from '@runcast/protocol';
import { API_URL } from './config.js';

/** An API error with the contract's code. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

// The login token is kept in memory only: the HttpOnly cookie carries the session on the same
// origin; the token serves split deployments, where that cookie is not sent.
let token: string | undefined;

export function setToken(value: string | undefined): void {
  token = value;
}

export function getToken(): string | undefined {
  return token;
}

/** Calls `/api/v1{path}` and returns the JSON answer; throws ApiError with the contract's code. */
export async function api<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(`${API_URL}/api/v1${path}`, {
    method,
    headers,
    credentials: 'include',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return undefined as T;
  const text = await response.text();
  const parsed: unknown = text ? JSON.parse(text) : undefined;
  if (!response.ok) {
    const error = (parsed as ErrorBody | undefined)?.error;
    throw new ApiError(
      response.status,
      error?.code ?? `HTTP_${response.status}`,
      error?.message ?? response.statusText,
    );
  }
  return parsed as T;
}
