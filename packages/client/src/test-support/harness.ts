import { ProgressService, type ProgressServiceOptions, type SubscribeOptions } from '../progress-service.js';
import type { ConnectionChange, ConnectionMethod, ProgressEvent } from '../types.js';
import {
  type ConnectBehaviour,
  FakeClock,
  FakeTransportFactory,
  FakeWakeSignals,
  fakeEnvironment,
  RecordingPolicy,
} from './fakes.js';

/** A request the service made through the fake `fetch`, answered by the test. */
export interface FakeRequest {
  url: string;
  headers: Record<string, string>;
  respond(response: Response): void;
  fail(error?: Error): void;
}

/** A `fetch` whose every request waits for the test to answer it. */
export class FakeFetch {
  readonly requests: FakeRequest[] = [];

  readonly fetch = (input: string | URL | Request, init?: RequestInit): Promise<Response> =>
    new Promise<Response>((resolve, reject) => {
      this.requests.push({
        url: String(input),
        headers: { ...(init?.headers as Record<string, string> | undefined) },
        respond: resolve,
        fail: (error = new TypeError('fetch failed: connection refused')) => reject(error),
      });
    });

  /** Requests whose path contains `part`. */
  to(part: string): FakeRequest[] {
    return this.requests.filter((request) => request.url.includes(part));
  }
}

export const TIMEOUTS: Record<ConnectionMethod, number> = { websocket: 1000, sse: 2000, polling: 3000 };
export const RETRY_DELAY_MS = 1000;

/** A ProgressService on fakes: transports, clock, wake signals and fetch all driven by the test. */
export function harness(
  config: {
    behaviours?: Partial<Record<ConnectionMethod, ConnectBehaviour>>;
    options?: Partial<ProgressServiceOptions>;
  } = {},
) {
  const clock = new FakeClock({ random: 0.5 });
  const wake = new FakeWakeSignals();
  const net = new FakeFetch();
  const factory = new FakeTransportFactory(config.behaviours);
  const changes: ConnectionChange[] = [];
  const service = new ProgressService({
    connectTimeoutMs: TIMEOUTS,
    fallbackAfterFailures: 2,
    reconnectPolicy: new RecordingPolicy(RETRY_DELAY_MS),
    env: fakeEnvironment(clock, wake, net.fetch),
    createTransport: factory.create,
    ...config.options,
  });
  service.onConnectionChange((change) => changes.push(change));
  const lastChange = () => changes[changes.length - 1];
  return { clock, wake, net, factory, service, changes, lastChange };
}

/** Subscribes a callback that records what it receives, and the method at each event. */
export function record(service: ProgressService, runId: string, options?: SubscribeOptions) {
  const events: ProgressEvent[] = [];
  const methods: (ConnectionMethod | null)[] = [];
  const unsubscribe = service.subscribeToRun(
    runId,
    (event) => {
      events.push(event);
      methods.push(service.getConnectionMethod());
    },
    options,
  );
  return { events, methods, unsubscribe };
}

export const seqsOf = (events: ProgressEvent[]) => events.map((e) => (e.type === 'error' ? 'error' : e.seq));
export const typesOf = (events: ProgressEvent[]) => events.map((e) => e.type);
