import { describe, expect, it } from 'vitest';
import { eventually } from '../support/collector.js';
import { followRun, Proxies, useBackend } from './harness.js';

// deploy/nginx.conf as shipped, and broken the ways nginx configurations found in the wild are,
// in front of a real Runcast server; the client is the real ProgressService with its defaults.
// Node's side speaks plain HTTP to nginx (Node's fetch refuses a self-signed certificate); TLS is
// proven from Chromium in dashboard-tls.test.ts.

/** deploy/nginx.conf without the WebSocket upgrade headers. */
const withoutUpgrade = (config: string) =>
  config.replace(/^\s*proxy_set_header (Upgrade|Connection) .*\n/gm, '');

/**
 * …and holding the event streams back: buffered with X-Accel-Buffering ignored, and compressed
 * by nginx (nginx passes on the first buffered chunk as it comes; gzip holds even that). Such
 * setups clear Accept-Encoding towards the backend so that nginx compresses: otherwise Runcast
 * gzips the stream itself, flushed at every write, and nginx's gzip leaves it alone.
 */
const buffering = (config: string) =>
  withoutUpgrade(config)
    .replace(/(proxy_set_header Host .*\n)/, '$1    proxy_set_header Accept-Encoding "";\n')
    .replace(/proxy_buffering off;/g, 'proxy_buffering on;\n        proxy_ignore_headers X-Accel-Buffering;')
    .replace(/gzip off;/g, 'gzip on;\n        gzip_types text/event-stream;\n        gzip_min_length 1;');

const proxies = new Proxies();

describe('nginx at the root', () => {
  const backend = useBackend();

  it('as shipped, carries WebSocket', async () => {
    const { http } = await proxies.nginx('shipped', backend.server);
    const { method } = await followRun(backend.world, { baseUrl: http });
    expect(method).toBe('websocket');
  });

  it('without the Upgrade headers, ends on SSE', async () => {
    const { http } = await proxies.nginx('no-upgrade', backend.server, { edit: withoutUpgrade });
    const { method } = await followRun(backend.world, { baseUrl: http });
    expect(method).toBe('sse');
  });

  it('holding the streams back (X-Accel-Buffering ignored, gzip), follows the run on polling', async () => {
    const { http } = await proxies.nginx('buffering', backend.server, { edit: buffering });
    // The run is followed on polling while the stream is held back. When the run ends, nginx
    // releases the held stream, whose snapshot then looks like a working SSE: the method at the
    // very end may be either.
    const { method } = await followRun(backend.world, { baseUrl: http }, async (service) => {
      await eventually(() => service.getConnectionMethod() === 'polling', 30_000);
    });
    expect(['polling', 'sse']).toContain(method);
  }, 60_000);
});

describe('nginx under a path prefix', () => {
  const backend = useBackend({ RUNCAST_BASE_PATH: '/runcast' });

  it('carries WebSocket under /runcast/socket.io', async () => {
    const { http } = await proxies.nginx('prefix', backend.server, { basePath: '/runcast' });
    const { method } = await followRun(backend.world, {
      baseUrl: http,
      wsUrl: new URL(http).origin,
      socketPath: '/runcast/socket.io',
    });
    expect(method).toBe('websocket');
    expect((await fetch(`${http}/healthz`)).status).toBe(200);
  });
});
