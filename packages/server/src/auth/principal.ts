import type { ApiTokenRecord, UserRecord } from '../store/store.js';

/** How the credentials arrived; cookie-borne state changes need an Origin check. */
export type CredentialSource = 'bearer' | 'cookie';

/** Who is making a request: a logged-in user, or a worker's API token. */
export type Principal =
  | { kind: 'user'; user: UserRecord; sessionId: string; via: CredentialSource }
  | { kind: 'token'; token: ApiTokenRecord; via: 'bearer' };

/** Name of the HttpOnly session cookie. */
export const SESSION_COOKIE = 'runcast_session';
