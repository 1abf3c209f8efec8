import type { ConnectionChange, ProgressEvent } from '@runcast/client';
import type { LogEvent, RunSnapshot } from '@runcast/protocol';
import { useEffect, useState } from 'react';
import { progressService } from './progress.js';

/** What a run's page shows: its state, its log (each seq once), and what went wrong. */
export interface RunView {
  snapshot: RunSnapshot | undefined;
  logs: LogEvent[];
  /** Every stage the run reported, in the order first seen. */
  stages: string[];
  error: string | undefined;
  /** Earlier log lines fell out of the server's retention. */
  truncated: boolean;
  lastEventAt: number | undefined;
}

const EMPTY: RunView = {
  snapshot: undefined,
  logs: [],
  stages: [],
  error: undefined,
  truncated: false,
  lastEventAt: undefined,
};

function addStage(stages: string[], stage: string | null | undefined): string[] {
  return stage && !stages.includes(stage) ? [...stages, stage] : stages;
}

/** Follows a run live through the shared ProgressService. */
export function useRun(runId: string): RunView {
  const [view, setView] = useState<RunView>(EMPTY);
  useEffect(() => {
    setView(EMPTY);
    return progressService.subscribeToRun(runId, (event: ProgressEvent) => {
      setView((current) => {
        const now = Date.now();
        switch (event.type) {
          case 'error':
            return { ...current, error: event.error.message, lastEventAt: now };
          case 'log':
            return {
              ...current,
              logs: [...current.logs, event],
              stages: addStage(current.stages, event.log.stage),
              lastEventAt: now,
            };
          default:
            return {
              ...current,
              snapshot: event.snapshot,
              stages: addStage(current.stages, event.snapshot.stage),
              truncated: current.truncated || (event.type === 'snapshot' && event.events_truncated === true),
              lastEventAt: now,
            };
        }
      });
    });
  }, [runId]);
  return view;
}

/** Live states of many runs (a project's run list) over the one shared connection. */
export function useRunStates(runIds: readonly string[]): Record<string, RunSnapshot> {
  const [states, setStates] = useState<Record<string, RunSnapshot>>({});
  const key = runIds.join(',');
  useEffect(() => {
    const stops = key
      .split(',')
      .filter(Boolean)
      .map((runId) =>
        progressService.subscribeToRun(runId, (event) => {
          if (event.type === 'snapshot' || event.type === 'update') {
            setStates((current) => ({ ...current, [runId]: event.snapshot }));
          }
        }),
      );
    return () => {
      for (const stop of stops) stop();
    };
  }, [key]);
  return states;
}

/** The connection state of the shared ProgressService. */
export function useConnection(): ConnectionChange {
  const [change, setChange] = useState<ConnectionChange>(() => progressService.getConnectionState());
  useEffect(() => {
    setChange(progressService.getConnectionState());
    return progressService.onConnectionChange(setChange);
  }, []);
  return change;
}

/** The current time, refreshed every `everyMs` (elapsed times, ages). */
export function useNow(everyMs = 1000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(timer);
  }, [everyMs]);
  return now;
}
