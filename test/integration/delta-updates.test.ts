import { applyDeltaPatch, applyMergePatch, type RunSnapshot } from '@runcast/protocol';
import { createParser } from 'eventsource-parser';
import { io } from 'socket.io-client';
import { describe, expect, it } from 'vitest';
import type { Api } from '../../packages/server/src/test-support/server.js';
import { serverWorld } from '../support/server-world.js';

// Delta updates on the wire (issue 14, item 1): a subscription that asks for them gets updates as
// merge patches of the state it holds; one that does not (curl, a bare EventSource, an old client)
// gets whole snapshots, as before.

const fixture = serverWorld();

/** The progress a worker reports, as DESIGN §3 shows it: what a whole update carries each tick. */
const tick = (done: number) => ({
  progress: {
    percentage: done / 100,
    message: 'Receiving objects',
    done,
    total: 10000,
    unit: 'objects',
    rate_per_s: 812.4,
    eta_s: 7,
  },
});
const STARTED = {
  status: 'RUNNING',
  stage: 'EXPORT',
  current_stage: 'EXPORT group/api (2/5)',
  ...tick(4250),
  stats: { repositories: 5, repositories_done: 1, refs: 120, objects: 4250, bytes: 1234567, errors: 0 },
};

async function newRun(): Promise<string> {
  const created = await fixture.world.operator.post('/runs', {
    project_id: fixture.world.projectId,
    kind: 'external',
  });
  expect(created.status).toBe(201);
  return created.body.run_id;
}

async function patch(api: Api, runId: string, body: unknown): Promise<void> {
  const answer = await api.patch(`/runs/${runId}/progress`, body);
  expect(answer.status, JSON.stringify(answer.body)).toBe(200);
}

/** A run started, ticked three times, logged once, and completed. */
async function produce(runId: string): Promise<void> {
  await patch(fixture.world.worker, runId, STARTED);
  for (const done of [4300, 4350, 4400]) await patch(fixture.world.worker, runId, tick(done));
  await fixture.world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'Pushed 12 refs' });
  await patch(fixture.world.worker, runId, { status: 'COMPLETED', ...tick(10000) });
}

/** The run as `GET /progress` answers it now. */
async function progressNow(runId: string): Promise<unknown> {
  return (await fixture.world.viewer.get(`/runs/${runId}/progress`)).body;
}

interface Frame {
  event: string;
  data: string;
  json: any;
}

/** An SSE stream being read: `opened` once its snapshot came, `ended` with every frame. */
interface Stream {
  opened: Promise<void>;
  ended: Promise<Frame[]>;
}

/** Reads an SSE stream to its end (the server ends it after the terminal update). */
function readStream(path: string): Stream {
  let markOpened: () => void = () => {};
  const opened = new Promise<void>((resolve) => {
    markOpened = resolve;
  });
  const ended = (async () => {
    const response = await fetch(`${fixture.server.url}/api/v1${path}`, {
      headers: { authorization: `Bearer ${fixture.world.viewer.token}` },
    });
    expect(response.status).toBe(200);
    const frames: Frame[] = [];
    const parser = createParser({
      onEvent: (message) => {
        const event = message.event ?? 'message';
        frames.push({ event, data: message.data, json: JSON.parse(message.data) });
        if (event === 'snapshot') markOpened();
      },
    });
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return frames;
      parser.feed(decoder.decode(value, { stream: true }));
    }
  })();
  return { opened: Promise.race([opened, ended.then(() => {})]), ended };
}

/** The state a client rebuilds from events: each delta must name the state it holds. */
function rebuild(events: readonly any[]): unknown {
  let held: { seq: number; snapshot: unknown } | undefined;
  for (const event of events) {
    if (event.patch) {
      expect(event.base_seq).toBe(held?.seq);
      held = { seq: event.seq, snapshot: applyDeltaPatch(held?.snapshot as RunSnapshot, event) };
    } else if (event.snapshot) {
      held = { seq: event.seq, snapshot: event.snapshot };
    }
  }
  return held?.snapshot;
}

describe('SSE', () => {
  it('sends small delta frames with ?delta=1, and whole snapshots without it', async () => {
    const runId = await newRun();
    const withDelta = readStream(`/runs/${runId}/stream?delta=1`);
    const bare = readStream(`/runs/${runId}/stream`);
    await Promise.all([withDelta.opened, bare.opened]);
    await produce(runId);
    const [deltaFrames, bareFrames] = await Promise.all([withDelta.ended, bare.ended]);

    const updates = (frames: Frame[]) => frames.filter((frame) => frame.event === 'update');
    expect(updates(bareFrames).every((frame) => frame.json.snapshot && !('patch' in frame.json))).toBe(true);
    // The first update after the opening is whole; each tick after it is a patch of the one before.
    const [first, ...ticks] = updates(deltaFrames);
    expect(first?.json.snapshot).toBeDefined();
    expect(ticks.length).toBeGreaterThanOrEqual(3);
    for (const frame of ticks) {
      expect(frame.json).toMatchObject({ run_id: runId, type: 'update' });
      expect(frame.json.snapshot).toBeUndefined();
      expect(Number.isInteger(frame.json.base_seq)).toBe(true);
    }
    // What a tick costs: the changed members and the frame's own fields, not the whole run.
    const wholeTick = updates(bareFrames)[1]?.data.length ?? 0;
    const deltaTick = ticks[0]?.data.length ?? Number.POSITIVE_INFINITY;
    expect(deltaTick).toBeLessThan(wholeTick / 3);
    // Logs are the same either way, and both end on the state GET /progress answers.
    const logs = (frames: Frame[]) =>
      frames.filter((frame) => frame.event === 'log').map((frame) => frame.data);
    expect(logs(deltaFrames)).toEqual(logs(bareFrames));
    const final = await progressNow(runId);
    expect(rebuild(deltaFrames.map((frame) => frame.json))).toEqual(final);
    expect(rebuild(bareFrames.map((frame) => frame.json))).toEqual(final);
  });

  it('keeps each run of the multiplexed stream on its own base', async () => {
    const [a, b] = [await newRun(), await newRun()];
    const stream = readStream(`/stream?runs=${a},${b}&delta=1`);
    await stream.opened;
    await patch(fixture.world.worker, a, STARTED);
    await patch(fixture.world.worker, b, STARTED);
    for (const done of [4300, 4350]) {
      await patch(fixture.world.worker, a, tick(done));
      await patch(fixture.world.worker, b, tick(done + 1));
    }
    await patch(fixture.world.worker, a, { status: 'COMPLETED' });
    await patch(fixture.world.worker, b, { status: 'COMPLETED' });
    const frames = (await stream.ended).map((frame) => frame.json);
    for (const runId of [a, b]) {
      const ofRun = frames.filter((event) => event.run_id === runId);
      expect(ofRun.some((event) => event.patch)).toBe(true);
      expect(rebuild(ofRun)).toEqual(await progressNow(runId));
    }
  });
});

describe('Socket.IO', () => {
  it('sends delta updates to a subscribe with delta: true, whole ones to a plain subscribe', async () => {
    const runId = await newRun();
    const received = { delta: [] as any[], plain: [] as any[] };
    const sockets = await Promise.all(
      (['delta', 'plain'] as const).map(async (kind) => {
        const socket = io(fixture.server.url, {
          path: '/socket.io',
          transports: ['websocket'],
          auth: { token: fixture.world.viewer.token },
          forceNew: true,
        });
        socket.on('run_event', (event) => received[kind].push(event));
        const ack = await socket
          .timeout(10_000)
          .emitWithAck('subscribe', kind === 'delta' ? { run_id: runId, delta: true } : { run_id: runId });
        expect(ack.ok).toBe(true);
        received[kind].push(ack.snapshot);
        return socket;
      }),
    );
    try {
      await produce(runId);
      const done = (events: any[]) => events.some((event) => event.seq === 6);
      for (let turn = 0; turn < 200 && !(done(received.delta) && done(received.plain)); turn++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      expect(received.delta.filter((event) => event.patch).length).toBeGreaterThanOrEqual(3);
      expect(received.plain.some((event) => event.patch)).toBe(false);
      const final = await progressNow(runId);
      expect(rebuild(received.delta)).toEqual(final);
      expect(rebuild(received.plain)).toEqual(final);
    } finally {
      for (const socket of sockets) socket.disconnect();
    }
  });

  it('still refuses a subscribe with fields it does not know', async () => {
    const socket = io(fixture.server.url, {
      path: '/socket.io',
      transports: ['websocket'],
      auth: { token: fixture.world.viewer.token },
    });
    try {
      const ack = await socket
        .timeout(10_000)
        .emitWithAck('subscribe', { run_id: fixture.world.runId, deltas: true });
      expect(ack).toMatchObject({ ok: false, error: { code: 'INVALID_INPUT' } });
    } finally {
      socket.disconnect();
    }
  });
});

describe('polling with delta=1', () => {
  it('answers a patch of the state the client holds, and the whole state when it cannot be sure', async () => {
    const runId = await newRun();
    await patch(fixture.world.worker, runId, STARTED);
    const first = await fixture.world.viewer.get(`/runs/${runId}/progress?since=0&delta=1`);
    expect(first.body.patch).toBeUndefined();
    expect(first.body.status).toBe('RUNNING');
    const { events: _events, events_truncated: _truncated, ...held } = first.body;
    expect(held.seq).toBe(1);

    await patch(fixture.world.worker, runId, tick(4300));
    await fixture.world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'one' });
    const next = await fixture.world.viewer.get(`/runs/${runId}/progress?since=1&delta=1&state_seq=1`, {
      'if-none-match': '"1"',
    });
    expect(next.status).toBe(200);
    expect(next.headers.get('etag')).toBe('"3"');
    expect(next.headers.get('content-type')).toBe('application/json');
    expect(next.body).toMatchObject({ run_id: runId, seq: 3, base_seq: 1 });
    expect(next.body.snapshot).toBeUndefined();
    expect(next.body.status).toBeUndefined();
    expect(next.body.events.map((event: any) => event.log.message)).toEqual(['one']);
    const rebuilt = applyMergePatch(held, next.body.patch);
    expect(rebuilt).toEqual(await progressNow(runId));

    // Only logs since the state held: the patch moves the seq.
    await fixture.world.worker.post(`/runs/${runId}/logs`, { level: 'info', message: 'two' });
    const logsOnly = await fixture.world.viewer.get(`/runs/${runId}/progress?since=3&delta=1&state_seq=3`);
    expect(logsOnly.body.patch).toEqual({ seq: 4 });

    // A state this server never answered (2), with an update after it: it cannot be sure, so
    // the whole state.
    const unknown = await fixture.world.viewer.get(`/runs/${runId}/progress?since=1&delta=1&state_seq=2`);
    expect(unknown.body.patch).toBeUndefined();
    expect(unknown.body).toMatchObject({ status: 'RUNNING', seq: 4 });
    // Without delta=1, the same answer as ever.
    const plain = await fixture.world.viewer.get(`/runs/${runId}/progress?since=3&state_seq=3`);
    expect(plain.status).toBe(200);
    expect(plain.body.patch).toBeUndefined();
    // ETag and 304 do not change.
    const unchanged = await fixture.world.viewer.get(`/runs/${runId}/progress?since=4&delta=1&state_seq=4`, {
      'if-none-match': '"4"',
    });
    expect(unchanged.status).toBe(304);
  });

  it('brings every event that follows the first within linger_ms in one answer', async () => {
    const runId = await newRun();
    await patch(fixture.world.worker, runId, { status: 'RUNNING' });
    const poll = fixture.world.viewer.get(
      `/runs/${runId}/progress?since=1&wait=10&linger_ms=1000&delta=1&state_seq=1`,
    );
    await new Promise((resolve) => setTimeout(resolve, 100));
    for (const message of ['a', 'b', 'c'])
      await fixture.world.worker.post(`/runs/${runId}/logs`, { level: 'info', message });
    await patch(fixture.world.worker, runId, tick(5000));
    const answer = await poll;
    expect(answer.status).toBe(200);
    expect(answer.body.events.map((event: any) => event.log.message)).toEqual(['a', 'b', 'c']);
    expect(answer.body.seq).toBe(5);
  });

  it('answers 304 at the deadline of a long-poll that saw nothing', async () => {
    const runId = await newRun();
    const answer = await fixture.world.viewer.get(`/runs/${runId}/progress?since=0&wait=1&delta=1`, {
      'if-none-match': '"0"',
    });
    expect(answer.status).toBe(304);
    expect(answer.headers.get('etag')).toBe('"0"');
  });
});

describe('the OpenAPI document', () => {
  it('states the delta contract: the event shapes and the parameters that ask for them', async () => {
    const spec = (await (await fetch(`${fixture.server.url}/docs/json`)).json()) as any;
    expect(spec.components.schemas.DeltaUpdateEvent.required).toEqual(
      expect.arrayContaining(['run_id', 'seq', 'type', 'at', 'base_seq', 'patch']),
    );
    expect(spec.components.schemas.ProgressDelta.properties).toHaveProperty('base_seq');
    const names = (path: string) =>
      (spec.paths[path].get.parameters as { name: string }[]).map((parameter) => parameter.name);
    expect(names('/api/v1/runs/{run_id}/progress')).toEqual(
      expect.arrayContaining(['since', 'wait', 'delta', 'state_seq', 'linger_ms']),
    );
    expect(names('/api/v1/runs/{run_id}/stream')).toContain('delta');
    expect(names('/api/v1/stream')).toContain('delta');
    expect(spec.info.description).toContain('base_seq');
  });
});
