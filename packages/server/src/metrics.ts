import type { IncomingHttpHeaders } from 'node:http';
import { TRANSPORT_HEADERS } from '@runcast/protocol';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** How a subscriber receives events. */
export type TransportName = 'websocket' | 'sse' | 'polling';

const TRANSPORTS: readonly TransportName[] = ['websocket', 'sse', 'polling'];

/** The server's Prometheus instruments, in a registry of its own (one per app). */
export class Metrics {
  readonly registry = new Registry();
  readonly connections: Gauge<'transport'>;
  readonly subscriptions: Gauge<'transport'>;
  readonly eventsPublished: Counter<'type'>;
  readonly eventsDelivered: Counter<'transport'>;
  readonly updatesConflated: Counter<'transport'>;
  readonly slowDisconnects: Counter<'transport'>;
  readonly deliveryLag: Histogram<'transport'>;
  readonly clientTransport: Counter<'transport'>;
  readonly clientFallbacks: Counter<'from' | 'to' | 'reason'>;
  readonly pollsAnsweredFromMemory: Counter;

  constructor() {
    const registers = [this.registry];
    this.connections = new Gauge({
      name: 'runcast_connections',
      help: 'Open live connections by transport',
      labelNames: ['transport'],
      registers,
    });
    this.subscriptions = new Gauge({
      name: 'runcast_subscriptions',
      help: 'Run subscriptions (and pending long-polls) by transport',
      labelNames: ['transport'],
      registers,
    });
    this.eventsPublished = new Counter({
      name: 'runcast_events_published_total',
      help: 'Committed run events handed to the hub, by type',
      labelNames: ['type'],
      registers,
    });
    this.eventsDelivered = new Counter({
      name: 'runcast_events_delivered_total',
      help: 'Events written to subscribers, by transport',
      labelNames: ['transport'],
      registers,
    });
    this.updatesConflated = new Counter({
      name: 'runcast_updates_conflated_total',
      help: 'Queued update events replaced by a newer one for a subscriber that was behind',
      labelNames: ['transport'],
      registers,
    });
    this.slowDisconnects = new Counter({
      name: 'runcast_subscribers_disconnected_slow_total',
      help: 'Subscribers disconnected because their queue passed the hard limit',
      labelNames: ['transport'],
      registers,
    });
    this.deliveryLag = new Histogram({
      name: 'runcast_delivery_lag_seconds',
      help: 'Time from commit to write, per written batch',
      labelNames: ['transport'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.clientTransport = new Counter({
      name: 'runcast_client_transport_total',
      help: 'Connections and polls by the method clients report (X-Runcast-Transport)',
      labelNames: ['transport'],
      registers,
    });
    this.clientFallbacks = new Counter({
      name: 'runcast_client_fallbacks_total',
      help: 'Fallbacks clients report (X-Runcast-Fallback-From / -Reason)',
      labelNames: ['from', 'to', 'reason'],
      registers,
    });
    this.pollsAnsweredFromMemory = new Counter({
      name: 'runcast_polls_not_modified_from_memory_total',
      help: 'Polls answered 304 from memory before routing (credentials, access and seq all cached)',
      registers,
    });
    for (const transport of TRANSPORTS) {
      this.connections.set({ transport }, 0);
      this.subscriptions.set({ transport }, 0);
    }
  }

  /**
   * Counts what a client says about its connection method in its X-Runcast-* headers. Values are checked against a short
   * list so that a client cannot create unbounded label sets.
   */
  recordClientHeaders(headers: IncomingHttpHeaders): void {
    this.recordClientReport(
      first(headers[TRANSPORT_HEADERS.transport]),
      first(headers[TRANSPORT_HEADERS.fallbackFrom]),
      first(headers[TRANSPORT_HEADERS.fallbackReason]),
    );
  }

  /** The same report from the Socket.IO handshake's fields. */
  recordClientReport(transport: unknown, fallbackFrom: unknown, reason: unknown): void {
    const to = asTransport(transport);
    if (!to) return;
    this.clientTransport.inc({ transport: to });
    const from = asTransport(fallbackFrom);
    if (from) this.clientFallbacks.inc({ from, to, reason: asReason(reason) });
  }
}

const first = (value: string | string[] | undefined) => (Array.isArray(value) ? value[0] : value);

function asTransport(value: unknown): TransportName | undefined {
  return TRANSPORTS.find((t) => t === value);
}

const REASONS = ['timeout', 'error', 'closed', 'unsupported', 'blocked', 'no_snapshot', 'upgrade', 'other'];

function asReason(value: unknown): string {
  return typeof value === 'string' && REASONS.includes(value) ? value : 'other';
}
