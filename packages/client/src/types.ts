import type { LogEvent, RunErrorEvent, RunEvent, SnapshotEvent } from '@runcast/protocol';
import type { ManagerOptions, Socket, SocketOptions } from 'socket.io-client';

/** The three ways a ProgressService receives events, best first. */
export type ConnectionMethod = 'websocket' | 'sse' | 'polling';

export const CONNECTION_METHODS: readonly ConnectionMethod[] = ['websocket', 'sse', 'polling'];

export type ConnectionState =
  | 'idle'
  | 'connecting'
  | 'connected'
  | 'reconnecting'
  /** The server cannot be reached at all (refused, DNS, offline): the same method retries. */
  | 'offline'
  | 'closed'
  /** The credentials were refused (401, or `UNAUTHORIZED` at the handshake): no more retries. */
  | 'unauthorized';

/** What `onConnectionChange` listeners receive. */
export interface ConnectionChange {
  method: ConnectionMethod | null;
  state: ConnectionState;
  /** Why the state or method changed (`fallback: timeout`, `upgrade`, `offline`, …). */
  reason: string | null;
  /** When this state began (ms since the epoch, from the injected clock). */
  since: number;
  /** Reconnect attempts since the last time the service was connected. */
  reconnects: number;
}

/** What a subscriber's callback receives: a snapshot first (and after a gap), then updates and logs. */
export type ProgressEvent = SnapshotEvent | RunEvent | RunErrorEvent;
export type { LogEvent, RunErrorEvent, RunEvent, SnapshotEvent };

export type ProgressCallback = (event: ProgressEvent) => void;

/** A bearer token, or a function returning one (possibly async); absent means cookies. */
export type TokenSource = string | (() => string | undefined | Promise<string | undefined>) | undefined;

/** Browser signals that the network or the page came back. */
export type WakeSignal = 'online' | 'offline' | 'visibilitychange' | 'pageshow';

/** Everything the client takes from its surroundings, injectable for tests and for Node. */
export interface Environment {
  fetch: typeof fetch;
  createSocket(url: string, options: Partial<ManagerOptions & SocketOptions>): Socket;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
  random(): number;
  /** Subscribes to browser wake signals; returns the function that unsubscribes. */
  onWake(listener: (signal: WakeSignal) => void): () => void;
}
