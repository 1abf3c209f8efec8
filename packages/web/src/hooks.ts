import type { ConnectionChange, ProgressEvent } from '@runcast/client';
import type { LogEvent, RunSnapshot } from '@runcast/protocol';
import { useEffect, useRef, useState } from 'react';
import { progressService } from './progress.js';

/** What a run's page shows: its state, its log (each seq once), and what went wrong. */
export interface RunView {
  snapshot: RunSnapshot | undefined;
  logs: LogEvent[];
  /** Every stage the run reported, in the order first seen. */
  stages: string[];
  error: string | undefined;
  /** The contract's code of `error` (`RUN_NOT_FOUND`, `UNAUTHORIZED`…). */
  errorCode: string | undefined;
  /** Earlier log lines fell out of the server's retention. */
  truncated: boolean;
  lastEventAt: number | undefined;
}

const EMPTY: RunView = {
  snapshot: undefined,
  logs: [],
  stages: [],
  error: undefined,
  errorCode: undefined,
  truncated: false,
  lastEventAt: undefined,
};

function addStage(stages: string[], stage: string | null | undefined): string[] {
  return stage && !stages.includes(stage) ? [...stages, stage] : stages;
}

/** How often arriving log lines are drawn: a replay of thousands of lines is one render, not thousands. */
const LOG_FLUSH_MS = 50;

/**
 * Follows a run through the shared ProgressService, from its retained history (every log line
 * the server keeps), then live.
 */
export function useRun(runId: string): RunView {
  const [view, setView] = useState<RunView>(EMPTY);
  const pendingLogs = useRef<LogEvent[]>([]);
  useEffect(() => {
    setView(EMPTY);
    pendingLogs.current = [];
    let flushTimer: ReturnType<typeof setTimeout> | undefined;
    const flush = () => {
      flushTimer = undefined;
      const logs = pendingLogs.current;
      if (logs.length === 0) return;
      pendingLogs.current = [];
      setView((current) => ({
        ...current,
        logs: current.logs.concat(logs),
        stages: logs.reduce((stages, event) => addStage(stages, event.log.stage), current.stages),
        lastEventAt: Date.now(),
      }));
    };
    const stop = progressService.subscribeToRun(
      runId,
      (event: ProgressEvent) => {
        if (event.type === 'log') {
          pendingLogs.current.push(event);
          flushTimer ??= setTimeout(flush, LOG_FLUSH_MS);
          return;
        }
        // A state comes after the logs before it.
        flush();
        setView((current) => {
          const now = Date.now();
          if (event.type === 'error')
            return { ...current, error: event.error.message, errorCode: event.error.code, lastEventAt: now };
          return {
            ...current,
            snapshot: event.snapshot,
            stages: addStage(current.stages, event.snapshot.stage),
            truncated: current.truncated || (event.type === 'snapshot' && event.events_truncated === true),
            lastEventAt: now,
          };
        });
      },
      { history: true },
    );
    return () => {
      if (flushTimer) clearTimeout(flushTimer);
      stop();
    };
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
