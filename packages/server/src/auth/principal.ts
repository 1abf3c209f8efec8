import type { ApiTokenRecord, UserRecord } from '../store/store.js';

/** How the credentials arrived; cookie-borne state changes need an Origin check. */
export type CredentialSource = 'bearer' | 'cookie';

/** Who is making a request: a logged-in user, or a worker's API token. */
export type Principal =
  | {
      kind: 'user';
      user: UserRecord;
      sessionId: string;
      via: CredentialSource;
      /** When the login token expires (ms since the epoch): live connections end then too. */
      expiresAtMs: number;
    }
  | { kind: 'token'; token: ApiTokenRecord; via: 'bearer' };

/** Name of the HttpOnly session cookie. */
export const SESSION_COOKIE = 'runcast_session';
