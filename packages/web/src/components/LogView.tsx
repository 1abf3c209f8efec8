import type { LogEvent } from '@runcast/protocol';
import { useEffect, useRef, useState } from 'react';
import { clock } from '../format.js';

/** Lines drawn at first, and added by each "show earlier": a 10,000-line log stays smooth. */
const PAGE_LINES = 500;

/**
 * The log: newest at the bottom, follows new lines unless the reader scrolled up. Only the latest
 * lines are drawn; earlier ones come a page at a time on request.
 */
export function LogView({ logs, truncated }: { logs: LogEvent[]; truncated: boolean }) {
  const box = useRef<HTMLDivElement>(null);
  const pinned = useRef(true);
  const [shown, setShown] = useState(PAGE_LINES);
  useEffect(() => {
    const element = box.current;
    if (element && pinned.current && logs.length > 0) element.scrollTop = element.scrollHeight;
  }, [logs.length]);
  const hidden = Math.max(0, logs.length - shown);
  const visible = hidden > 0 ? logs.slice(hidden) : logs;
  return (
    <section className="card log" aria-label="Log">
      <h2>Log</h2>
      {truncated && <p className="note">Earlier lines are no longer kept by the server.</p>}
      <div
        ref={box}
        className="log-lines"
        data-testid="log"
        onScroll={(event) => {
          const element = event.currentTarget;
          pinned.current = element.scrollHeight - element.scrollTop - element.clientHeight < 24;
        }}
      >
        {hidden > 0 && (
          <button
            type="button"
            className="link show-earlier"
            onClick={() => {
              pinned.current = false;
              setShown((n) => n + PAGE_LINES);
            }}
          >
            Show {Math.min(hidden, PAGE_LINES).toLocaleString('en')} earlier lines (
            {hidden.toLocaleString('en')} not shown)
          </button>
        )}
        {logs.length === 0 && <p className="empty">No log lines yet.</p>}
        {visible.map((event) => (
          <div key={event.seq} className={`line level-${event.log.level}`} data-seq={event.seq}>
            <time>{clock(event.at)}</time>
            <span className="level">{event.log.level}</span>
            {event.log.stage && <span className="stage-tag">{event.log.stage}</span>}
            <span className="text">{event.log.message}</span>
          </div>
        ))}
      </div>
    </section>
  );
}
