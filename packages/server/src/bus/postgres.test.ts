import type { LogEvent } from '@runcast/protocol';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type PostgresServer, startPostgres } from '../../../../test/support/postgres.js';
import type { RunRecord } from '../store/store.js';
import type { BusMessage } from './bus.js';
import { messagesOf, PostgresBus } from './postgres.js';

// Two nodes' buses on one real PostgreSQL: messages cross, oversized events become pointers,
// and a listener that is killed or frozen is replaced with a resync.

let server: PostgresServer;
let url: string;
const buses: PostgresBus[] = [];

beforeAll(async () => {
  server = await startPostgres();
  url = await server.createDatabase('bus_test');
}, 60_000);
afterAll(async () => {
  await server?.stop();
});
afterEach(async () => {
  for (const bus of buses.splice(0)) await bus.close();
});

async function node(options: { heartbeatMs?: number; deadAfterMs?: number } = {}): Promise<PostgresBus> {
  const bus = new PostgresBus({ connectionString: url, ...options });
  buses.push(bus);
  await bus.start();
  return bus;
}

/** Every message of `type` a bus delivers, and a way to wait for one. */
function heard<T extends BusMessage['type']>(bus: PostgresBus, type: T) {
  const messages: BusMessage[] = [];
  const waiters: (() => void)[] = [];
  bus.subscribe(type, (message) => {
    messages.push(message);
    for (const wake of waiters.splice(0)) wake();
  });
  return {
    messages,
    async until(count: number, timeoutMs = 10_000): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      while (messages.length < count) {
        if (Date.now() > deadline) throw new Error(`heard ${messages.length} of ${count} ${type} messages`);
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 50);
        });
      }
    },
  };
}

const AT = new Date().toISOString();
const log = (seq: number, message = 'x'): LogEvent => ({
  run_id: 'run_1',
  seq,
  type: 'log',
  at: AT,
  log: { level: 'info', message },
});

describe('PostgresBus', () => {
  it('carries messages to the other nodes, once to its own', async () => {
    const a = await node();
    const b = await node();
    const onA = heard(a, 'run-events');
    const onB = heard(b, 'run-events');
    const cancels = heard(b, 'cancel');
    for (let seq = 1; seq <= 50; seq++) a.publish({ type: 'run-events', events: [log(seq)] });
    a.publish({ type: 'cancel', run_id: 'run_1' });
    // Sent after the events, so heard after them.
    await cancels.until(1);
    // One run's events sent together may arrive as fewer messages, in order.
    const events = onB.messages.flatMap((m) => (m.type === 'run-events' ? m.events : []));
    expect(events.map((event) => event.seq)).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    // Each event arrives beside its JSON, which the Hub writes as is.
    const json = onB.messages.flatMap((m) => (m.type === 'run-events' ? (m.json ?? []) : []));
    expect(json).toEqual(events.map((event) => JSON.stringify(event)));
    expect(onA.messages).toHaveLength(50);
  });

  it('sends events too large for a notification as "run R reached seq S"', async () => {
    const a = await node();
    const b = await node();
    const reached = heard(b, 'run-reached');
    const events = heard(b, 'run-events');
    a.publish({ type: 'run-events', events: [log(1, 'y'.repeat(9000))] });
    a.publish({ type: 'run-events', events: [log(2)] });
    await events.until(1);
    expect(reached.messages).toEqual([{ type: 'run-reached', run_id: 'run_1', seq: 1 }]);
  });

  it('leaves run events to the commits that carry them, when the store sends them', async () => {
    const a = new PostgresBus({ connectionString: url, eventsInCommits: true });
    buses.push(a);
    await a.start();
    const b = await node();
    const onA = heard(a, 'run-events');
    const onB = heard(b, 'run-events');
    const reachedOnB = heard(b, 'run-reached');
    const cancels = heard(b, 'cancel');
    // Published after the commit: this node's listeners only.
    a.publish({ type: 'run-events', events: [log(1)] });
    a.publish({ type: 'cancel', run_id: 'run_1' });
    await cancels.until(1);
    expect(onA.messages).toHaveLength(1);
    expect(onB.messages).toHaveLength(0);
    // The commit's own notifications (as the store sends them in its transaction) reach the others.
    const notifier = a.commitNotifier;
    if (!notifier) throw new Error('the bus offers no notifier');
    const changes = [2, 3, 4].map((seq) => ({
      run: { run_id: 'run_1', seq } as RunRecord,
      logs: [log(seq, seq === 3 ? 'z'.repeat(9000) : 'x')],
    }));
    const payloads = notifier.payloads(changes);
    expect(payloads.every((payload) => Buffer.byteLength(payload) < 8000)).toBe(true);
    const db = new pg.Client({ connectionString: url });
    await db.connect();
    try {
      await db.query('BEGIN');
      for (const payload of payloads) await db.query('SELECT pg_notify($1, $2)', [notifier.channel, payload]);
      await db.query('COMMIT');
    } finally {
      await db.end();
    }
    await onB.until(2);
    await reachedOnB.until(1);
    expect(onB.messages.map((m) => (m.type === 'run-events' ? m.events[0]?.seq : -1))).toEqual([2, 4]);
    expect(reachedOnB.messages).toEqual([{ type: 'run-reached', run_id: 'run_1', seq: 3 }]);
    // This node does not hear its own commits twice.
    expect(onA.messages).toHaveLength(1);
  });

  it('replaces a listener whose session is terminated, and resyncs', async () => {
    const a = await node();
    const b = await node();
    const resyncs = heard(b, 'resync');
    const events = heard(b, 'run-events');
    const admin = new pg.Client({ connectionString: url });
    await admin.connect();
    try {
      await admin.query('SELECT pg_terminate_backend($1)', [b.listenerPid]);
    } finally {
      await admin.end();
    }
    await resyncs.until(1);
    a.publish({ type: 'run-events', events: [log(7)] });
    await events.until(1);
    expect(b.listenerRestarts).toBe(1);
  });

  it('replaces a listener that silently stopped hearing (its backend frozen)', async () => {
    const a = await node();
    const b = await node({ heartbeatMs: 200, deadAfterMs: 1000 });
    const resyncs = heard(b, 'resync');
    const frozen = b.listenerPid;
    expect(frozen).toBeDefined();
    process.kill(frozen!, 'SIGSTOP');
    try {
      await resyncs.until(1, 10_000);
    } finally {
      process.kill(frozen!, 'SIGCONT');
    }
    expect(b.listenerPid).not.toBe(frozen);
    const events = heard(b, 'run-events');
    a.publish({ type: 'run-events', events: [log(9)] });
    await events.until(1);
  });
});

describe('a notification payload', () => {
  const bus = new PostgresBus({ connectionString: 'postgres://unused', eventsInCommits: true });
  const notifier = bus.commitNotifier;
  if (!notifier) throw new Error('the bus offers no notifier');
  const ofRun = (runId: string, seq: number): LogEvent => ({ ...log(seq, `line ${seq}`), run_id: runId });
  const change = (events: LogEvent[]) => ({
    run: { run_id: events[0]?.run_id, seq: events[events.length - 1]?.seq } as RunRecord,
    logs: events,
  });

  it("reads back as each run's events in order, each beside its JSON", () => {
    const payloads = notifier.payloads([
      change([ofRun('run_1', 1), ofRun('run_1', 2)]),
      change([ofRun('run_2', 1)]),
      change([ofRun('run_1', 3)]),
    ]);
    expect(payloads).toHaveLength(1);
    const messages = messagesOf(payloads[0] ?? '');
    expect(messages).toEqual([
      {
        type: 'run-events',
        events: [ofRun('run_1', 1), ofRun('run_1', 2)],
        json: [JSON.stringify(ofRun('run_1', 1)), JSON.stringify(ofRun('run_1', 2))],
      },
      { type: 'run-events', events: [ofRun('run_2', 1)], json: [JSON.stringify(ofRun('run_2', 1))] },
      { type: 'run-events', events: [ofRun('run_1', 3)], json: [JSON.stringify(ofRun('run_1', 3))] },
    ]);
    // One run's commits in a row are one message while their seqs follow each other (another
    // node may have committed the seq between).
    const [later] = notifier.payloads([
      change([ofRun('run_1', 4)]),
      change([ofRun('run_1', 5)]),
      change([ofRun('run_1', 7)]),
    ]);
    expect(
      messagesOf(later ?? '').map((m) => (m.type === 'run-events' ? m.events.map((e) => e.seq) : [])),
    ).toEqual([[4, 5], [7]]);
  });

  it('keeps line breaks and separators inside the JSON, and leaves out a line that does not parse', () => {
    const odd = {
      ...ofRun('run_1', 1),
      log: { level: 'info' as const, message: 'two\nlines \u001e and a quote "' },
    };
    const [payload] = notifier.payloads([change([odd]), change([ofRun('run_1', 2), ofRun('run_1', 3)])]);
    expect(payload?.includes('\u001e')).toBe(false);
    const lines = (payload ?? '').split('\n');
    expect(lines).toHaveLength(4);
    // The second event's line cut short: it is left out, the rest arrives (the gap is read from the store).
    const damaged = [...lines.slice(0, 2), lines[2]?.slice(0, 20), lines[3]].join('\n');
    const messages = messagesOf(damaged);
    expect(messages.flatMap((m) => (m.type === 'run-events' ? m.events.map((e) => e.seq) : []))).toEqual([
      1, 3,
    ]);
    expect(messages).toHaveLength(2);
    expect(messages[0]?.type === 'run-events' && messages[0].events[0]).toEqual(odd);
  });
});
