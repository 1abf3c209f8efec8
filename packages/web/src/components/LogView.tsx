import type { LogEvent } from '@runcast/protocol';
import { useEffect, useRef } from 'react';
import { clock } from '../format.js';

/** The live log: newest at the bottom, follows new lines unless the reader scrolled up. */
export function LogView({ logs, truncated }: { logs: LogEvent[]; truncated: boolean }) {
  const box = useRef<HTMLDivElement>(null);
  const pinned = useRef(true);
  useEffect(() => {
    const element = box.current;
    if (element && pinned.current && logs.length > 0) element.scrollTop = element.scrollHeight;
  }, [logs.length]);
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
        {logs.length === 0 && <p className="empty">No log lines yet.</p>}
        {logs.map((event) => (
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
