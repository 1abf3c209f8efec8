/** The systems the bench measures. */
export type SystemName =
  | 'runcast'
  | 'bare-socketio'
  | 'bare-ws'
  | 'bare-sse'
  | 'bare-fastify'
  /** Runcast itself as one node on SQLite: what the cluster scenario compares three nodes with. */
  | 'runcast-sqlite';

export const SYSTEM_LABEL: Record<SystemName, string> = {
  runcast: 'Runcast',
  'bare-socketio': 'bare Socket.IO',
  'bare-ws': 'bare ws',
  'bare-sse': 'bare SSE',
  'bare-fastify': 'bare Fastify',
  'runcast-sqlite': 'one node on SQLite',
};

/** One figure of a scenario: Runcast's value and each baseline's, with the target it answers to. */
export interface Row {
  figure: string;
  runcast: number | undefined;
  baselines: { system: SystemName; value: number | undefined }[];
  /** Digits after the point when printed. */
  digits: number;
  target?: { text: string; holds: boolean | undefined };
}

/** A table of figures that are not Runcast-beside-one-baseline (several subjects × conditions). */
export interface Table {
  caption: string;
  header: string[];
  rows: string[][];
}

/** Everything one scenario measured, as written to `results/<date>-<id>.json`. */
export interface ScenarioResult {
  id: string;
  title: string;
  /** How the scenario differs from DESIGN §7 on this machine (empty when it does not). */
  scale: string;
  params: Record<string, unknown>;
  /** The raw measurements of each system. */
  systems: Record<string, unknown>;
  rows: Row[];
  /** Printed under the rows. */
  tables?: Table[];
  /** How to read the tables and how the figures were taken, printed under them. */
  notes?: string[];
  /** Correctness failures: lost logs, subscribers not on the terminal update, crashes, errors. */
  problems: string[];
  durationS: number;
}
