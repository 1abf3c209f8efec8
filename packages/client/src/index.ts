export { defaultEnvironment } from './environment.js';
export { RuncastError } from './errors.js';
export {
  defaultTransportFactory,
  ProgressService,
  type ProgressServiceOptions,
  type ServiceStats,
  type SubscribeOptions,
} from './progress-service.js';
export {
  type BackoffOptions,
  ExponentialBackoff,
  type ReconnectPolicy,
  type RetryContext,
} from './reconnect-policy.js';
export {
  type ReporterEnvironment,
  type ReporterStats,
  RunReporter,
  type RunReporterOptions,
} from './reporter.js';
export { RunCursor } from './run-cursor.js';
export type { Transport, TransportContext, TransportFactory, TransportHandlers } from './transport.js';
export { PollingTransport } from './transports/polling.js';
export { SseTransport } from './transports/sse.js';
export { WebSocketTransport } from './transports/websocket.js';
export * from './types.js';

import { ProgressService } from './progress-service.js';

/** The default instance: same origin, cookie authentication, every method in the default order. */
export const progressService = new ProgressService();
