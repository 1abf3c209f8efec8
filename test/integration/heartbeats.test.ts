import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';

// Proxies cut idle connections (HAProxy's `timeout client`, nginx's `proxy_read_timeout`): the
// heartbeats that keep them busy are settings, and an SSE client may ask for a shorter one.
describe('heartbeat settings', () => {
  let server: TestServer;
  let world: World;
  beforeAll(async () => {
    server = await startServer({
      RUNCAST_WS_PING_INTERVAL_MS: '1500',
      RUNCAST_WS_PING_TIMEOUT_MS: '1000',
      RUNCAST_SSE_KEEPALIVE_MS: '30000',
    });
    world = await makeWorld(server.url);
  });
  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  it('announces the Socket.IO ping interval and timeout in the handshake', async () => {
    const socket = new WebSocket(`${server.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
    const open = await new Promise<string>((resolve, reject) => {
      socket.once('message', (data) => resolve(String(data)));
      socket.once('error', reject);
    });
    socket.close();
    expect(open.startsWith('0')).toBe(true);
    expect(JSON.parse(open.slice(1))).toMatchObject({ pingInterval: 1500, pingTimeout: 1000 });
  });

  /** The event names of the first frames of a stream, read until `until` is among them. */
  async function streamEvents(path: string, until: string): Promise<string[]> {
    const controller = new AbortController();
    const response = await fetch(`${server.url}/api/v1${path}`, {
      headers: { authorization: `Bearer ${world.viewer.token}` },
      signal: controller.signal,
    });
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    const names = () => [...text.matchAll(/^event: (\w+)$/gm)].map((match) => match[1] ?? '');
    while (!names().includes(until)) {
      const { done, value } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
    }
    controller.abort();
    return names();
  }

  it('sends keepalives at the interval a stream asks for (?keepalive=), shorter than the server’s', async () => {
    const single = await streamEvents(`/runs/${world.runId}/stream?keepalive=1`, 'keepalive');
    expect(single).toEqual(['snapshot', 'keepalive']);
    const multiplexed = await streamEvents(`/stream?runs=${world.runId}&keepalive=1`, 'keepalive');
    expect(multiplexed).toEqual(['snapshot', 'keepalive']);
  });

  it.each(['0', '61', 'soon'])('refuses ?keepalive=%s with 400', async (value) => {
    const answer = await world.viewer.get(`/runs/${world.runId}/stream?keepalive=${value}`);
    expect(answer.status).toBe(400);
    expect(answer.body.error.code).toBe('INVALID_INPUT');
  });
});
