import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  makeWorld,
  startServer,
  type TestServer,
  type World,
} from '../../packages/server/src/test-support/server.js';
import { rawGet } from '../support/raw-http.js';

// gzip for JSON answers and precompressed dashboard files, as clients see them: the real curl
// binary with --compressed, and raw requests that name exactly the Accept-Encoding they send.

const run = promisify(execFile);
const WEB_DIR = fileURLToPath(new URL('../../packages/web/dist', import.meta.url));

/** `curl --compressed` (it sends `Accept-Encoding` and decodes): its headers, and the body it decoded. */
async function curlCompressed(url: string, token: string) {
  const { stdout } = await run('curl', [
    '-sS',
    '--compressed',
    '-D',
    '-',
    '-H',
    `authorization: Bearer ${token}`,
    url,
  ]);
  const split = stdout.indexOf('\r\n\r\n');
  const headers = new Map<string, string>();
  for (const line of stdout.slice(0, split).split('\r\n').slice(1)) {
    const colon = line.indexOf(':');
    headers.set(line.slice(0, colon).toLowerCase(), line.slice(colon + 1).trim());
  }
  return { headers, body: JSON.parse(stdout.slice(split + 4)) };
}

describe('HTTP compression', () => {
  let server: TestServer;
  let world: World;
  let token: string;

  beforeAll(async () => {
    if (!existsSync(`${WEB_DIR}/index.html`)) {
      throw new Error('the dashboard is not built: run `npm run build -w @runcast/web`');
    }
    server = await startServer({ RUNCAST_WEB_DIR: WEB_DIR });
    world = await makeWorld(server.url);
    token = world.viewer.token!;
    const entries = Array.from({ length: 100 }, (_, i) => ({
      level: 'info',
      message: `Pushed ${i * 7} refs to group/api-${i % 5}`,
      stage: 'APPLY',
    }));
    expect((await world.worker.post(`/runs/${world.runId}/logs`, { entries })).status).toBe(201);
    // A run list worth compressing.
    for (let i = 0; i < 5; i++) {
      const created = await world.operator.post('/runs', { project_id: world.projectId, kind: 'external' });
      expect(created.status).toBe(201);
    }
  });

  afterAll(async () => {
    expect(server.errorLogs).toEqual([]);
    await server.close();
  });

  const auth = () => ({ authorization: `Bearer ${token}` });

  it.each([
    ['a replay', () => `/runs/${world.runId}/progress?since=0`],
    ['/events', () => `/runs/${world.runId}/events`],
    ['a run list', () => '/runs'],
  ])('curl --compressed gets %s gzipped, with the same JSON as without', async (_what, path) => {
    const url = `${server.url}/api/v1${path()}`;
    const curl = await curlCompressed(url, token);
    expect(curl.headers.get('content-encoding')).toBe('gzip');
    expect(curl.headers.get('vary')).toMatch(/accept-encoding/i);
    const identity = await rawGet(url, auth());
    expect(identity.headers['content-encoding']).toBeUndefined();
    expect(identity.headers.vary).toMatch(/accept-encoding/i);
    expect(curl.body).toEqual(JSON.parse(identity.body.toString('utf8')));
  });

  it('a replay of 100 events takes at most a fifth of its bytes when gzipped', async () => {
    const url = `${server.url}/api/v1/runs/${world.runId}/progress?since=0`;
    const gzipped = await rawGet(url, { ...auth(), 'accept-encoding': 'gzip' });
    const identity = await rawGet(url, auth());
    expect(gzipped.headers['content-encoding']).toBe('gzip');
    expect(gunzipSync(gzipped.body).equals(identity.body)).toBe(true);
    expect(gzipped.body.length).toBeLessThanOrEqual(identity.body.length * 0.2);
  });

  it('answers without Accept-Encoding, or refusing gzip, go uncompressed', async () => {
    const url = `${server.url}/api/v1/runs/${world.runId}/events`;
    for (const acceptEncoding of [undefined, 'identity', 'gzip;q=0, br', '*;q=0']) {
      const answer = await rawGet(url, {
        ...auth(),
        ...(acceptEncoding ? { 'accept-encoding': acceptEncoding } : {}),
      });
      expect(answer.status).toBe(200);
      expect(answer.headers['content-encoding'], acceptEncoding).toBeUndefined();
      expect(JSON.parse(answer.body.toString('utf8')).events).toHaveLength(100);
    }
  });

  it('small answers go uncompressed even to clients that accept gzip', async () => {
    const answer = await rawGet(`${server.url}/api/v1/runs/${world.runId}`, {
      ...auth(),
      'accept-encoding': 'gzip',
    });
    expect(answer.status).toBe(200);
    expect(answer.body.length).toBeLessThan(1024);
    expect(answer.headers['content-encoding']).toBeUndefined();
    expect(answer.headers.vary).toMatch(/accept-encoding/i);
    expect(answer.headers.etag).toMatch(/^"\d+"$/);
    expect(JSON.parse(answer.body.toString('utf8')).run_id).toBe(world.runId);
  });

  it('ETags differ between encodings and give 304 across them', async () => {
    const url = `${server.url}/api/v1/runs/${world.runId}/progress?since=0`;
    const gzipped = await rawGet(url, { ...auth(), 'accept-encoding': 'gzip' });
    const identity = await rawGet(url, auth());
    const seq = JSON.parse(identity.body.toString('utf8')).seq as number;
    expect(identity.headers.etag).toBe(`"${seq}"`);
    expect(gzipped.headers.etag).toBe(`W/"${seq}"`);
    // Each client sends back the ETag it holds, with or without gzip: 304, no body, Vary.
    for (const [etag, acceptEncoding] of [
      [gzipped.headers.etag, 'gzip'],
      [identity.headers.etag, undefined],
      [identity.headers.etag, 'gzip'],
    ] as const) {
      const again = await rawGet(url, {
        ...auth(),
        'if-none-match': String(etag),
        ...(acceptEncoding ? { 'accept-encoding': acceptEncoding } : {}),
      });
      expect(again.status).toBe(304);
      expect(again.body.length).toBe(0);
      // The seq's ETag, which matches both forms (If-None-Match compares weakly).
      expect(again.headers.etag).toBe(`"${seq}"`);
      expect(again.headers.vary).toMatch(/accept-encoding/i);
    }
  });

  it('the poll answered before routing keeps giving 304 to a weak ETag, with Vary', async () => {
    const url = `${server.url}/api/v1/runs/${world.runId}/progress`;
    const first = await rawGet(url, auth());
    const seq = JSON.parse(first.body.toString('utf8')).seq as number;
    const polled = server.runcast.metrics.pollsAnsweredFromMemory;
    const before = (await polled.get()).values[0]?.value ?? 0;
    for (let i = 0; i < 3; i++) {
      const again = await rawGet(url, {
        ...auth(),
        'if-none-match': `W/"${seq}"`,
        'accept-encoding': 'gzip',
      });
      expect(again.status).toBe(304);
      expect(again.headers.etag).toBe(`"${seq}"`);
      expect(again.headers.vary).toMatch(/accept-encoding/i);
    }
    expect((await polled.get()).values[0]?.value ?? 0).toBeGreaterThan(before);
  });

  describe('the dashboard files', () => {
    let scriptPath: string;

    beforeAll(async () => {
      const page = await rawGet(`${server.url}/`);
      const src = /<script[^>]+src="\.?\/?([^"]+\.js)"/.exec(page.body.toString('utf8'))?.[1];
      if (!src) throw new Error('no script in the dashboard page');
      scriptPath = `/${src}`;
    });

    it.each([
      ['br', brotliDecompressSync],
      ['gzip', gunzipSync],
    ] as const)('are served precompressed as %s with their content type', async (coding, decode) => {
      const original = readFileSync(`${WEB_DIR}${scriptPath}`);
      const answer = await rawGet(`${server.url}${scriptPath}`, { 'accept-encoding': coding });
      expect(answer.status).toBe(200);
      expect(answer.headers['content-encoding']).toBe(coding);
      expect(answer.headers['content-type']).toMatch(/^(application|text)\/javascript/);
      expect(answer.headers.vary).toMatch(/accept-encoding/i);
      expect(answer.body.length).toBeLessThan(original.length / 2);
      expect(decode(answer.body).equals(original)).toBe(true);
    });

    it('prefer brotli, and go as they are to a client that accepts neither', async () => {
      const url = `${server.url}${scriptPath}`;
      const both = await rawGet(url, { 'accept-encoding': 'gzip, deflate, br, zstd' });
      expect(both.headers['content-encoding']).toBe('br');
      const plain = await rawGet(url);
      expect(plain.headers['content-encoding']).toBeUndefined();
      expect(plain.headers.vary).toMatch(/accept-encoding/i);
      expect(plain.body.equals(readFileSync(`${WEB_DIR}${scriptPath}`))).toBe(true);
      // Different bytes, different validators: a cache never answers one encoding with the other.
      expect(both.headers.etag).toBeDefined();
      expect(both.headers.etag).not.toBe(plain.headers.etag);
      const revalidated = await rawGet(url, {
        'accept-encoding': 'br',
        'if-none-match': String(both.headers.etag),
      });
      expect(revalidated.status).toBe(304);
    });
  });
});
