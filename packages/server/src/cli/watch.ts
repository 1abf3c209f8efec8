import { type ConnectionChange, ExponentialBackoff, ProgressService } from '@runcast/client';
import { GIT_MIRROR_STAGES, isTerminal, type LogEvent, type RunSnapshot } from '@runcast/protocol';
import { CliError, EXIT, type Target } from './http.js';

export interface WatchOptions {
  /** Draw a live view (a TTY) or print plain lines (a pipe, a log file). */
  tty: boolean;
  out: NodeJS.WritableStream;
  /** Width of the terminal in columns. */
  columns?: number;
}

const ICONS: Record<string, string> = { websocket: '🔗 WebSocket', sse: '📡 SSE', polling: '🔄 Polling' };

function time(iso: string | number): string {
  return new Date(iso).toISOString().slice(11, 19);
}

function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${s}s`;
}

function connection(change: ConnectionChange | undefined): string {
  if (!change) return 'connecting';
  if (change.state === 'connected' && change.method) return ICONS[change.method] ?? change.method;
  return change.state;
}

/** The progress bar line: `[█████░░░░░]  42.5%  Receiving objects  4,250/10,000 objects  812/s  ETA 7s`. */
export function progressLine(snapshot: RunSnapshot, width: number): string {
  const p = snapshot.progress ?? {};
  const percentage = p.percentage ?? (snapshot.status === 'COMPLETED' ? 100 : 0);
  const barWidth = Math.max(10, Math.min(40, width - 50));
  const filled = Math.round((percentage / 100) * barWidth);
  const parts = [
    `[${'█'.repeat(filled)}${'░'.repeat(barWidth - filled)}]`,
    `${percentage.toFixed(1).padStart(5)}%`,
  ];
  if (p.message) parts.push(p.message);
  if (p.done != null) {
    parts.push(
      `${p.done.toLocaleString('en')}${p.total != null ? `/${p.total.toLocaleString('en')}` : ''}${p.unit ? ` ${p.unit}` : ''}`,
    );
  }
  if (p.rate_per_s != null) parts.push(`${Math.round(p.rate_per_s).toLocaleString('en')}/s`);
  if (p.eta_s != null && !isTerminal(snapshot.status)) parts.push(`ETA ${duration(p.eta_s)}`);
  return parts.join('  ');
}

function stagesLine(snapshot: RunSnapshot): string {
  if (snapshot.kind !== 'git-mirror') return snapshot.stage ? `stage ${snapshot.stage}` : '';
  const current = snapshot.stage
    ? GIT_MIRROR_STAGES.indexOf(snapshot.stage as (typeof GIT_MIRROR_STAGES)[number])
    : -1;
  return GIT_MIRROR_STAGES.map((stage, i) => {
    if (snapshot.status === 'COMPLETED' || i < current) return `✓${stage}`;
    if (i === current) return snapshot.status === 'FAILED' ? `✕${stage}` : `●${stage}`;
    return `○${stage}`;
  }).join(' ');
}

function logLine(event: LogEvent): string {
  return `${time(event.at)} [${event.log.level}]${event.log.stage ? ` ${event.log.stage}` : ''} ${event.log.message}`;
}

/**
 * Follows a run in the terminal over the same ProgressService as the dashboard (and so the
 * same fallback), until the run ends. Resolves with the exit code its final status means.
 */
export function watchRun(target: Target, runId: string, options: WatchOptions): Promise<number> {
  // A terminal user waits a minute for a server that went away, not forever.
  const service = new ProgressService({
    baseUrl: target.url,
    token: target.token,
    reconnectPolicy: new ExponentialBackoff({ maxElapsedMs: 60_000 }),
  });
  // A pseudo-terminal may report 0 columns: fall back to a common width.
  const width = options.columns && options.columns >= 40 ? options.columns : 100;
  let snapshot: RunSnapshot | undefined;
  let change: ConnectionChange | undefined;
  const logs: LogEvent[] = [];
  let drawnLines = 0;
  let lastPlain = '';
  let drawTimer: NodeJS.Timeout | undefined;

  const draw = () => {
    drawTimer = undefined;
    if (!snapshot) return;
    const lines = [
      `${runId} · ${snapshot.kind} · ${snapshot.status} · ${connection(change)}`,
      stagesLine(snapshot),
      progressLine(snapshot, width),
      snapshot.current_stage ?? '',
      ...logs.slice(-6).map((event) => logLine(event).slice(0, width - 1)),
    ];
    // Move up over the previous frame and clear it, then draw the new one.
    const erase = drawnLines > 0 ? `\x1b[${drawnLines}A\x1b[J` : '';
    options.out.write(`${erase}${lines.join('\n')}\n`);
    drawnLines = lines.length;
  };
  // The first frame at once; later ones at most ten times a second.
  const schedule = () => {
    if (!options.tty || drawTimer) return;
    if (drawnLines === 0) draw();
    else drawTimer = setTimeout(draw, 100);
  };
  const plainState = () => {
    if (!snapshot) return;
    const p = snapshot.progress?.percentage;
    const line =
      `${snapshot.status} ${snapshot.stage ?? '-'} ${p === undefined ? '' : `${Math.floor(p)}%`} ${snapshot.progress?.message ?? ''}`.trim();
    if (line === lastPlain) return;
    lastPlain = line;
    options.out.write(`${time(Date.now())} ${line} (${change?.method ?? 'connecting'})\n`);
  };

  return new Promise<number>((resolveWith, rejectWith) => {
    let settled = false;
    const resolve = (code: number) => {
      if (!settled) resolveWith(code);
      settled = true;
    };
    const reject = (err: CliError) => {
      if (!settled) rejectWith(err);
      settled = true;
    };
    const finish = (code: number) => {
      if (settled) return;
      if (drawTimer) clearTimeout(drawTimer);
      if (options.tty) draw();
      const took =
        snapshot?.started_at && snapshot.finished_at
          ? ` in ${duration((Date.parse(snapshot.finished_at) - Date.parse(snapshot.started_at)) / 1000)}`
          : '';
      options.out.write(
        `${snapshot?.status ?? 'ENDED'}${took}${snapshot?.error ? `: ${snapshot.error.code}: ${snapshot.error.message}` : ''}\n`,
      );
      resolve(code);
      service.close();
    };
    service.onConnectionChange((next) => {
      change = next;
      if (next.state === 'closed') {
        reject(
          new CliError(`cannot follow ${runId}: ${next.reason ?? 'connection closed'}`, EXIT.unreachable),
        );
        service.close();
      }
      if (options.tty) schedule();
    });
    // The log so far first (every line the server keeps), then live.
    service.subscribeToRun(
      runId,
      (event) => {
        if (event.type === 'error') {
          reject(new CliError(`${event.error.code}: ${event.error.message}`, EXIT.api));
          service.close();
          return;
        }
        if (event.type === 'log') {
          logs.push(event);
          if (logs.length > 100) logs.shift();
          if (!options.tty) options.out.write(`${logLine(event)}\n`);
        } else {
          snapshot = event.snapshot;
          if (!options.tty) plainState();
        }
        if (options.tty) schedule();
        if (snapshot && isTerminal(snapshot.status)) {
          finish(
            snapshot.status === 'COMPLETED'
              ? EXIT.ok
              : snapshot.status === 'CANCELED'
                ? EXIT.runCanceled
                : EXIT.runFailed,
          );
        }
      },
      { history: true },
    );
  });
}
