import type { RunEvent } from '@runcast/protocol';
import type { RunChange } from '../store/store.js';

/**
 * A write to users, sessions, tokens, projects or memberships, announced after it committed.
 * Every node's read cache drops what it concerns; the Hub ends the live subscriptions whose
 * access it ends.
 */
export type DirectoryChange =
  | { kind: 'user-changed'; user_id: string }
  /** Every session of a user ended (password changed). */
  | { kind: 'user-sessions-ended'; user_id: string }
  | { kind: 'session-created'; session_id: string }
  /** One login session ended (logout). */
  | { kind: 'session-ended'; session_id: string }
  | { kind: 'token-created'; token_id: string }
  | { kind: 'token-revoked'; token_id: string }
  /** A project was created (its creator became a member). */
  | { kind: 'project-created'; project_id: string; created_by: string }
  /** A user's membership of a project was added, changed or removed. */
  | { kind: 'membership-changed'; project_id: string; user_id: string };

/** What happened to a login attempt, for the login limit. */
export type LoginStep = 'admitted' | 'succeeded' | 'failed';

/**
 * Everything that travels between the parts of a node, and between nodes: named by kind, so
 * that each listener takes only what it handles.
 */
export type BusMessage =
  /** Events committed to a run, in seq order (gapless within the message). */
  | {
      type: 'run-events';
      events: readonly RunEvent[];
      /** Each event's JSON, when the message arrived as JSON (from another node). */
      json?: readonly string[];
    }
  /**
   * A run reached `seq`, its events not included (too large to carry): whoever needs them reads
   * them from the store.
   */
  | { type: 'run-reached'; run_id: string; seq: number }
  | { type: 'directory'; change: DirectoryChange }
  /** Stop executing a run (it was canceled): the node that owns it kills its work. */
  | { type: 'cancel'; run_id: string }
  /** A run waits to be executed: runners look for runs to claim now rather than at their next poll. */
  | { type: 'run-queued'; run_id: string }
  /**
   * A step of a login attempt, counted by every node's login limit: admitted (it counts until
   * its answer), succeeded (taken back) or failed.
   */
  | { type: 'login-attempt'; step: LoginStep; address: string; username: string }
  /**
   * Messages may have been lost (the bus reconnected): whoever keeps state derived from them
   * catches up from the store.
   */
  | { type: 'resync' };

export type BusMessageType = BusMessage['type'];
export type MessageOf<T extends BusMessageType> = Extract<BusMessage, { type: T }>;

/**
 * Carries committed run events, directory changes and cancel requests from where they happen to
 * whoever acts on them. Nothing downstream may assume that messages arrive in order, or at all:
 * the store is the truth, and gaps are read from it. In-process by default; a networked
 * implementation fans out between nodes.
 */
export interface Bus {
  publish(message: BusMessage): void;
  /**
   * Present when the bus travels through the database the store writes to: the store sends each
   * commit's run events with the commit itself, and `publish` of those events only tells this
   * node's listeners.
   */
  readonly commitNotifier?: CommitNotifier | undefined;
  /** Calls `listener` with every message of `type`; returns the function that unsubscribes. */
  subscribe<T extends BusMessageType>(type: T, listener: (message: MessageOf<T>) => void): () => void;
  close(): Promise<void>;
}

/**
 * U+001E, which no commit notification holds: a store may send a commit's payloads as one text,
 * joined by it.
 */
export const PAYLOAD_SEPARATOR = '\u001e';

/** How a store sends a commit's run events as notifications inside the commit's transaction. */
export interface CommitNotifier {
  /** The notification channel. */
  readonly channel: string;
  /** The notification payloads announcing `changes`, committed in this order; none holds `PAYLOAD_SEPARATOR`. */
  payloads(changes: readonly RunChange[]): string[];
}
