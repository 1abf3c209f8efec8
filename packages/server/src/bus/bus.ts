import type { RunEvent } from '@runcast/protocol';

/** Receives committed events, in seq order per run. */
export type BusListener = (events: readonly RunEvent[]) => void;

/**
 * Carries committed run events from RunService to whoever delivers them. In-process by default;
 * a networked implementation fans out between server processes.
 */
export interface Bus {
  publish(events: readonly RunEvent[]): void;
  /** Returns the function that unsubscribes. */
  subscribe(listener: BusListener): () => void;
  close(): Promise<void>;
}
