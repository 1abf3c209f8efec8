import { afterEach, describe, expect, it } from 'vitest';
import {
  defaultEnvironment,
  ProgressService,
  type ProgressServiceOptions,
} from '../../packages/client/src/index.js';
import type { ConnectionMethod, Environment, ProgressEvent } from '../../packages/client/src/types.js';
import { Collector, eventually } from '../support/collector.js';
import { serverWorld } from '../support/server-world.js';

// The client library over delta updates (issue 14, item 1): it asks for them on every transport,
// and its callbacks see whole snapshots only — equal to what GET /progress answers — and every
// log exactly once.

const fixture = serverWorld();

/** The real environment, with what the server sent recorded: socket events and HTTP bodies. */
function recordingEnvironment(): { env: Partial<Environment>; wire: () => string } {
  const real = defaultEnvironment();
  const received: string[] = [];
  const env: Partial<Environment> = {
    fetch: async (input, init) => {
      const response = await real.fetch(input, init);
      // Chunk by chunk: a stream is cut (aborted) once its runs are over, before it ends.
      const reader = response.clone().body?.getReader();
      const decoder = new TextDecoder();
      const copy = async () => {
        for (;;) {
          const chunk = await reader?.read();
          if (!chunk || chunk.done) return;
          received.push(decoder.decode(chunk.value, { stream: true }));
        }
      };
      copy().catch(() => {});
      return response;
    },
    createSocket: (url, options) => {
      const socket = real.createSocket(url, options);
      socket.on('run_event', (event: unknown) => received.push(JSON.stringify(event)));
      return socket;
    },
  };
  return { env, wire: () => received.join('\n') };
}

async function newRun(): Promise<string> {
  const created = await fixture.world.operator.post('/runs', {
    project_id: fixture.world.projectId,
    kind: 'external',
  });
  return created.body.run_id;
}

const tick = (done: number) => ({
  progress: { percentage: done / 100, message: 'Receiving objects', done, total: 10000, unit: 'objects' },
  stats: { repositories: 5, objects: done, errors: 0 },
});

/** Progress ticks with a log line after each, then the run completes. */
async function produce(runId: string, ticks: number): Promise<void> {
  await fixture.world.worker.patch(`/runs/${runId}/progress`, {
    status: 'RUNNING',
    stage: 'EXPORT',
    ...tick(0),
  });
  for (let i = 1; i <= ticks; i++) {
    await fixture.world.worker.patch(`/runs/${runId}/progress`, tick(i * 100));
    await fixture.world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` });
  }
  await fixture.world.worker.patch(`/runs/${runId}/progress`, { status: 'COMPLETED', ...tick(10000) });
}

/**
 * Follows `runId` with a ProgressService on `method` alone, once connected has the run produce
 * `ticks` ticks and logs, and answers when the callback saw the run complete.
 */
async function followToTheEnd(
  runId: string,
  method: ConnectionMethod,
  options: ProgressServiceOptions,
  ticks: number,
): Promise<{ service: ProgressService; seen: Collector }> {
  const service = new ProgressService({
    baseUrl: fixture.server.url,
    token: fixture.world.viewer.token,
    transports: [method],
    ...options,
  });
  const seen = new Collector();
  service.subscribeToRun(runId, seen.push);
  await eventually(() => service.getConnectionMethod() === method);
  await produce(runId, ticks);
  await seen.untilStatus('COMPLETED');
  return { service, seen };
}

const states = (events: readonly ProgressEvent[]) =>
  events.flatMap((event) => (event.type === 'snapshot' || event.type === 'update' ? [event] : []));

describe.each<ConnectionMethod>(['websocket', 'sse', 'polling'])('ProgressService over %s', (method) => {
  let service: ProgressService | undefined;
  afterEach(() => service?.close());

  it.each([true, false])(
    'hands whole snapshots equal to GET /progress and every log once (deltaUpdates: %s)',
    async (deltaUpdates) => {
      const runId = await newRun();
      const { env, wire } = recordingEnvironment();
      const followed = await followToTheEnd(runId, method, { deltaUpdates, env }, 12);
      service = followed.service;
      const seen = followed.seen;

      const final = (await fixture.world.viewer.get(`/runs/${runId}/progress`)).body;
      expect(seen.lastState).toEqual(final);
      expect(seen.logMessages).toEqual(Array.from({ length: 12 }, (_, i) => `line ${i + 1}`));
      for (const event of states(seen.events)) {
        expect(event).not.toHaveProperty('patch');
        expect(event.snapshot).toMatchObject({ run_id: runId, seq: event.seq });
        expect(Object.keys(event.snapshot).sort()).toEqual(Object.keys(final).sort());
      }
      // What travelled: patches when asked for, never otherwise.
      await eventually(() => wire().includes('COMPLETED'));
      expect(wire().includes('"patch"')).toBe(deltaUpdates);
    },
  );
});

describe('a delta against another base', () => {
  let service: ProgressService | undefined;
  afterEach(() => service?.close());

  it('is never applied: the WebSocket transport subscribes again for a snapshot', async () => {
    const runId = await newRun();
    const real = defaultEnvironment();
    let subscribes = 0;
    let tampered = false;
    const env: Partial<Environment> = {
      createSocket: (url, options) => {
        const socket = real.createSocket(url, options);
        const emitWithAck = socket.emitWithAck.bind(socket);
        socket.emitWithAck = ((name: string, ...args: unknown[]) => {
          if (name === 'subscribe') subscribes++;
          return emitWithAck(name, ...args);
        }) as typeof socket.emitWithAck;
        // The first delta is made to name a state the client does not hold.
        const on = socket.on.bind(socket);
        socket.on = ((name: string, listener: (...args: any[]) => void) =>
          on(name, (event: any) => {
            if (name === 'run_event' && event?.patch && !tampered) {
              tampered = true;
              listener({ ...event, base_seq: event.base_seq - 1, patch: { progress: null } });
              return;
            }
            listener(event);
          })) as typeof socket.on;
        return socket;
      },
    };
    const followed = await followToTheEnd(runId, 'websocket', { openingFetch: false, env }, 6);
    service = followed.service;
    const seen = followed.seen;

    expect(tampered).toBe(true);
    expect(subscribes).toBe(2);
    // The wrong patch would have removed `progress`: no state handed on ever lacks it after RUNNING.
    for (const event of states(seen.events)) {
      if (event.snapshot.status !== 'CREATED') expect(event.snapshot.progress).not.toBeNull();
      expect(event.snapshot).toHaveProperty('progress');
    }
    expect(seen.lastState).toEqual((await fixture.world.viewer.get(`/runs/${runId}/progress`)).body);
    expect(seen.logMessages).toEqual(Array.from({ length: 6 }, (_, i) => `line ${i + 1}`));
  });
});

describe.each<ConnectionMethod>(['websocket', 'sse', 'polling'])(
  'a server older than deltas, over %s',
  (method) => {
    let service: ProgressService | undefined;
    afterEach(() => service?.close());

    it('is asked again for whole updates, and the run is followed as ever', async () => {
      const runId = await newRun();
      const real = defaultEnvironment();
      let refusals = 0;
      const refusal = { code: 'INVALID_INPUT', message: 'querystring must NOT have additional properties' };
      // What a server that knows no `delta` answers: 400 INVALID_INPUT, or a refused subscribe.
      const env: Partial<Environment> = {
        fetch: async (input, init) => {
          if (String(input).includes('delta=1')) {
            refusals++;
            return new Response(JSON.stringify({ error: refusal }), {
              status: 400,
              headers: { 'content-type': 'application/json' },
            });
          }
          return real.fetch(input, init);
        },
        createSocket: (url, options) => {
          const socket = real.createSocket(url, options);
          const emitWithAck = socket.emitWithAck.bind(socket);
          socket.emitWithAck = ((name: string, payload: { delta?: boolean }, ...rest: unknown[]) => {
            if (name === 'subscribe' && payload.delta) {
              refusals++;
              return Promise.resolve({ ok: false, error: refusal });
            }
            return emitWithAck(name, payload, ...rest);
          }) as typeof socket.emitWithAck;
          return socket;
        },
      };
      const followed = await followToTheEnd(runId, method, { openingFetch: false, env }, 4);
      service = followed.service;
      const seen = followed.seen;
      expect(refusals).toBe(1);
      expect(seen.lastState).toEqual((await fixture.world.viewer.get(`/runs/${runId}/progress`)).body);
      expect(seen.logMessages).toEqual(['line 1', 'line 2', 'line 3', 'line 4']);
      expect(service.getStats().fallbacks).toBe(0);
    });
  },
);
