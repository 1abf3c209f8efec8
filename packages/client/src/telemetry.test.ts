import { ERROR_STATUS } from '@runcast/protocol';
import { describe, expect, it } from 'vitest';
import { CLIENT_ERROR_CODES } from './errors.js';
import { defaultSocketPath } from './progress-service.js';
import { RunReporter } from './reporter.js';
import { RunCursor } from './run-cursor.js';
import { FakeClock, fakeEnvironment, logEvent, snapshotEvent } from './test-support/fakes.js';
import { requestHeaders, type TransportContext } from './transport.js';

function context(fallback: TransportContext['fallback']): TransportContext {
  return {
    baseUrl: '',
    wsUrl: '',
    socketPath: '/socket.io',
    token: 'tok',
    env: fakeEnvironment(new FakeClock()),
    cursor: () => undefined,
    fallback,
    hints: { pollWaitS: 25, keepaliveS: undefined, deltaRefused: false },
    delta: true,
    pollLingerMs: 0,
  };
}

describe('telemetry', () => {
  it('reports a fallback with the first request only: the server counts fallbacks, not polls', async () => {
    const ctx = context({ from: 'sse', reason: 'timeout' });
    expect(await requestHeaders(ctx, 'polling')).toEqual({
      'x-runcast-transport': 'polling',
      authorization: 'Bearer tok',
      'x-runcast-fallback-from': 'sse',
      'x-runcast-fallback-reason': 'timeout',
    });
    expect(await requestHeaders(ctx, 'polling')).toEqual({
      'x-runcast-transport': 'polling',
      authorization: 'Bearer tok',
    });
  });

  it('reports no transport, and keeps the fallback report, on the REST opening snapshot', async () => {
    const ctx = context({ from: 'websocket', reason: 'timeout' });
    expect(await requestHeaders(ctx, null)).toEqual({ authorization: 'Bearer tok' });
    expect(await requestHeaders(ctx, 'sse')).toMatchObject({ 'x-runcast-fallback-from': 'websocket' });
  });

  it('counts as duplicates only seqs already delivered, not a poll that repeats the state', () => {
    const cursor = new RunCursor();
    cursor.accept(snapshotEvent('run_a', 1));
    cursor.accept(logEvent('run_a', 2));
    // A poll after a log: the same state at a later seq.
    expect(cursor.accept(snapshotEvent('run_a', 2))).toBeUndefined();
    expect(cursor.lastDrop).toBe('unchanged');
    expect(cursor.accept(logEvent('run_a', 2))).toBeUndefined();
    expect(cursor.lastDrop).toBe('duplicate');
  });

  it('spells every code once: the client’s own never shadow the contract’s', async () => {
    for (const code of Object.keys(CLIENT_ERROR_CODES)) expect(Object.hasOwn(ERROR_STATUS, code)).toBe(false);
    expect(() => new RunReporter({ baseUrl: '', runId: 'run_a', token: 't', maxBatch: 0 })).toThrow(
      expect.objectContaining({ code: 'INVALID_INPUT' }),
    );
  });
});

describe('the Socket.IO path', () => {
  it.each([
    ['', '/socket.io'],
    ['https://runcast.example', '/socket.io'],
    ['https://host/runcast', '/runcast/socket.io'],
    ['https://host/runcast/', '/runcast/socket.io'],
    ['/runcast', '/runcast/socket.io'],
  ])('follows the path of baseUrl %j: %s', (baseUrl, path) => {
    expect(defaultSocketPath(baseUrl.replace(/\/$/, ''))).toBe(path);
  });
});
