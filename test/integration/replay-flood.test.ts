import { mkdtempSync, rmSync } from 'node:fs';
import type { Socket as NetSocket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import {
  healthzMs,
  nonReadingSocketResubscriber,
  nonReadingSseResume,
  rssBytes,
  seedLogs,
} from '../support/replay-flood.js';
import { CHILD_ADMIN_PASSWORD, freePort, killAllServers, ServerProcess } from '../support/server-process.js';

// Replays that cost what the client reads (issue 11, finding 3): a hundred viewers resume a long
// run from seq 0 and never read. Before, each held the run's whole history in the server's
// memory (30 such connections took RSS to 2.9 GB); now each holds a page.

const LOGS = 4000;
const LOG_BYTES = 7900;
const SSE_RESUMERS = 100;
const SOCKET_SUBSCRIBES = 30;
/** Generous next to one page per connection, far below one history (32 MB) per connection. */
const MAX_RSS_GROWTH = 300 * 1024 * 1024;

let dataDir: string;
let server: ServerProcess;
let token: string;
let runId: string;

async function api(path: string, body?: unknown): Promise<any> {
  const answer = await fetch(`${server.url}/api/v1${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return answer.json();
}

/** A gauge of the server's /metrics, by its full series name. */
async function gauge(series: string): Promise<number> {
  const text = await (
    await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${token}` } })
  ).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.split(' ')[1]) : 0;
}

async function until(check: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

beforeAll(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'runcast-flood-'));
  server = await ServerProcess.start(dataDir, await freePort(), {
    RUNCAST_BODY_LIMIT: String(1024 * 1024),
  });
  const login = await fetch(`${server.url}/api/v1/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: 'admin', password: CHILD_ADMIN_PASSWORD }),
  });
  token = ((await login.json()) as { token: string }).token;
  const project = await api('/projects', { name: 'flood' });
  runId = (await api('/runs', { project_id: project.project_id, kind: 'external' })).run_id;
  await seedLogs(server.url, token, runId, LOGS, LOG_BYTES);
}, 120_000);

afterAll(async () => {
  await killAllServers();
  rmSync(dataDir, { recursive: true, force: true });
});

describe('a run of 4,000 × 7.9 KB logs', () => {
  it('answers /events?since=0 a page at a time, and the pages hold every event once', async () => {
    const first = await fetch(`${server.url}/api/v1/runs/${runId}/events?since=0`, {
      headers: { authorization: `Bearer ${token}` },
    });
    const body = await first.text();
    expect(body.length).toBeLessThan(1.1 * 1024 * 1024);
    const seqs: number[] = [];
    let page = JSON.parse(body) as { events: { seq: number }[]; next_since: number; seq: number };
    for (;;) {
      seqs.push(...page.events.map((event) => event.seq));
      if (page.next_since >= page.seq) break;
      page = await api(`/runs/${runId}/events?since=${page.next_since}`);
    }
    expect(seqs).toEqual(Array.from({ length: LOGS }, (_, i) => i + 1));
  });

  it(`holds a page, not the history, for each of ${SSE_RESUMERS} resumers that never read`, async () => {
    const before = rssBytes(server.child.pid!);
    const sockets: NetSocket[] = [];
    let resubscriber: { ws: WebSocket; acks: string[] } | undefined;
    // Sampled from the first connection on: memory, and how long /healthz waits meanwhile.
    let peak = before;
    const latencies: number[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        latencies.push(await healthzMs(server.url));
        peak = Math.max(peak, rssBytes(server.child.pid!));
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    })();
    try {
      for (let i = 0; i < SSE_RESUMERS; i++)
        sockets.push(await nonReadingSseResume(server.url, token, runId));
      resubscriber = await nonReadingSocketResubscriber(server.url, token, runId, SOCKET_SUBSCRIBES);
      await until(
        async () => (await gauge('runcast_subscriptions{transport="sse"}')) === SSE_RESUMERS,
        'every SSE resumer to be subscribed',
      );
      // Each connection writes until the client's and the server's buffers are full, then waits.
      const settled = latencies.length + 20;
      await until(async () => latencies.length >= settled, 'twenty more samples');
      sampling = false;
      await sampler;
      latencies.sort((a, b) => a - b);
      console.log(
        `replay flood: RSS ${(before / 2 ** 20).toFixed(0)} MB -> peak ${(peak / 2 ** 20).toFixed(0)} MB; ` +
          `/healthz median ${latencies[latencies.length >> 1]?.toFixed(1)} ms, ` +
          `max ${latencies[latencies.length - 1]?.toFixed(1)} ms over ${latencies.length} samples`,
      );
      expect(peak - before).toBeLessThan(MAX_RSS_GROWTH);
      // The server is still there for everyone else, and still counts every resumer.
      expect(await gauge('runcast_connections{transport="sse"}')).toBe(SSE_RESUMERS);
    } finally {
      sampling = false;
      await sampler;
      for (const socket of sockets) socket.destroy();
      resubscriber?.ws.terminate();
    }
    await until(
      async () => (await gauge('runcast_connections{transport="sse"}')) === 0,
      'the resumers to be gone',
    );
  });
});
