import type { RunEvent } from '@runcast/protocol';

/** Receives committed events, in seq order per run. */
export type BusListener = (events: readonly RunEvent[]) => void;

/**
 * A change that may end someone's access: every live connection it concerns is checked again.
 * Published after the store committed the change.
 */
export type AccessChange =
  /** One login session ended (logout). */
  | { kind: 'session-ended'; session_id: string }
  /** Every session of a user ended (password changed). */
  | { kind: 'user-sessions-ended'; user_id: string }
  /** An API token was revoked. */
  | { kind: 'token-revoked'; token_id: string }
  /** A user's membership of a project was removed or its role changed. */
  | { kind: 'membership-changed'; project_id: string; user_id: string };

export type AccessListener = (change: AccessChange) => void;

/**
 * Carries committed run events from RunService to whoever delivers them, and access changes from
 * the routes that make them to every connection they may end. In-process by default; a networked
 * implementation fans out between server processes.
 */
export interface Bus {
  publish(events: readonly RunEvent[]): void;
  /** Returns the function that unsubscribes. */
  subscribe(listener: BusListener): () => void;
  publishAccess(change: AccessChange): void;
  /** Returns the function that unsubscribes. */
  subscribeAccess(listener: AccessListener): () => void;
  close(): Promise<void>;
}
