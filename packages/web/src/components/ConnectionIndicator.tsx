import type { ConnectionChange, ConnectionMethod } from '@runcast/client';
import { useState } from 'react';
import { duration } from '../format.js';
import { useNow } from '../hooks.js';

const LOOK: Record<ConnectionMethod, { icon: string; label: string; tone: string; note: string }> = {
  websocket: { icon: '🔗', label: 'WebSocket', tone: 'good', note: 'Optimal connection' },
  sse: { icon: '📡', label: 'SSE', tone: 'fair', note: 'Fallback connection' },
  polling: { icon: '🔄', label: 'Polling', tone: 'poor', note: 'Last-resort fallback' },
};

/** Each state that is not "connected" in words of its own: offline is not signed out. */
const STATE_TEXT: Partial<Record<ConnectionChange['state'], string>> = {
  connecting: '⏳ Connecting…',
  reconnecting: '⏳ Reconnecting…',
  offline: '📴 Offline',
  closed: '⛔ Disconnected',
  unauthorized: '🔒 Signed out',
  idle: '○ Idle',
};

export interface ConnectionIndicatorProps {
  connection: ConnectionChange;
  /** When the last event arrived (ms since the epoch). */
  lastEventAt: number | undefined;
}

/**
 * How live updates reach this page: 🔗 WebSocket (green), 📡 SSE (yellow), 🔄 Polling (red), or a
 * grey "reconnecting". Icon and text as well as colour; changes are announced to screen readers.
 */
export function ConnectionIndicator({ connection, lastEventAt }: ConnectionIndicatorProps) {
  const [open, setOpen] = useState(false);
  const now = useNow(1000);
  const connected = connection.state === 'connected' && connection.method !== null;
  const look = connected && connection.method ? LOOK[connection.method] : undefined;
  const text = look ? `${look.icon} ${look.label}` : (STATE_TEXT[connection.state] ?? '⏳ Reconnecting…');
  const tone = look?.tone ?? 'offline';
  const announcement = look ? `Live updates over ${look.label}` : `Live updates: ${text.slice(2)}`;
  return (
    <div className="indicator-wrap">
      <button
        type="button"
        className={`indicator indicator-${tone}`}
        data-method={connected ? connection.method : 'none'}
        data-state={connection.state}
        aria-expanded={open}
        aria-haspopup="dialog"
        title={look ? `${look.label}: ${look.note}` : text}
        onClick={() => setOpen((o) => !o)}
      >
        {text}
      </button>
      {!look && (
        <span className="muted last-update" data-testid="last-update">
          {lastEventAt
            ? `last update ${new Date(lastEventAt).toLocaleTimeString('en-GB', { hour12: false })}`
            : 'no update yet'}
        </span>
      )}
      <span className="sr-only" aria-live="polite" role="status">
        {announcement}
      </span>
      {open && (
        <div className="popover" role="dialog" aria-label="Connection details">
          <dl>
            <dt>Method</dt>
            <dd>{look ? `${look.label} — ${look.note}` : (connection.method ?? 'none')}</dd>
            <dt>State</dt>
            <dd>{connection.state}</dd>
            <dt>Since</dt>
            <dd>
              {new Date(connection.since).toLocaleTimeString('en-GB', { hour12: false })} (
              {duration((now - connection.since) / 1000)} ago)
            </dd>
            <dt>Last event</dt>
            <dd>{lastEventAt ? `${duration((now - lastEventAt) / 1000)} ago` : 'none yet'}</dd>
            <dt>Reconnects</dt>
            <dd>{connection.reconnects}</dd>
            {connection.reason && (
              <>
                <dt>Reason</dt>
                <dd>{connection.reason}</dd>
              </>
            )}
          </dl>
        </div>
      )}
    </div>
  );
}
