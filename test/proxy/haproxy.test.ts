import { describe, expect, it } from 'vitest';
import { followRun, Proxies, useBackend } from './harness.js';

// deploy/haproxy.cfg as shipped, and with 5 s idle timeouts everywhere, in front of a real
// Runcast server, followed by the real ProgressService.

/** deploy/haproxy.cfg with every idle timeout at 5 s, the WebSocket tunnel's included. */
const fiveSecondTimeouts = (config: string) =>
  config.replace(/^(\s*timeout (client|server|tunnel)) .*$/gm, '$1 5s');

const proxies = new Proxies();

describe('HAProxy as shipped', () => {
  const backend = useBackend();

  it('carries WebSocket', async () => {
    const { method } = await followRun(backend.world, {
      baseUrl: await proxies.haproxy('shipped', backend.server),
    });
    expect(method).toBe('websocket');
  });
});

describe('HAProxy with 5 s idle timeouts', () => {
  // The heartbeats README's "Behind a proxy" asks for under a 5 s idle limit.
  const backend = useBackend({ RUNCAST_WS_PING_INTERVAL_MS: '2000', RUNCAST_SSE_KEEPALIVE_MS: '2000' });

  it('stays on WebSocket through an idle spell longer than the timeouts', async () => {
    const url = await proxies.haproxy('five-seconds', backend.server, fiveSecondTimeouts);
    const { method } = await followRun(backend.world, { baseUrl: url }, async (service) => {
      await new Promise((resolve) => setTimeout(resolve, 7000));
      expect(service.getConnectionMethod()).toBe('websocket');
      expect(service.getStats()).toMatchObject({ fallbacks: 0, reconnects: 0 });
    });
    expect(method).toBe('websocket');
  });
});
