import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from './config.js';

describe('configuration', () => {
  it('has working defaults', () => {
    expect(loadConfig({}, [])).toMatchObject({
      host: '127.0.0.1',
      port: 8080,
      dataDir: './data',
      logLevel: 'info',
      eventRetention: 10_000,
      requestTimeoutMs: 30_000,
      headersTimeoutMs: 10_000,
      httpCompression: { enabled: true, minBytes: 1024 },
      sseCompression: 'gzip',
      wsCompression: true,
    });
  });

  it('keeps the headers timeout within a shorter request timeout', () => {
    expect(loadConfig({ RUNCAST_REQUEST_TIMEOUT_MS: '2000' }, []).headersTimeoutMs).toBe(2000);
  });

  it('lets flags win over env', () => {
    expect(loadConfig({ PORT: '9000', HOST: '0.0.0.0' }, ['--port', '9100']).port).toBe(9100);
  });

  it.each([
    [{ PORT: 'eighty' }, 'PORT'],
    [{ PORT: '70000' }, 'PORT'],
    [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
    [{ RUNCAST_SECRET: 'short' }, 'RUNCAST_SECRET'],
    [{ RUNCAST_ADMIN_PASSWORD: 'abc' }, 'RUNCAST_ADMIN_PASSWORD'],
    [{ RUNCAST_EVENT_RETENTION: '0' }, 'RUNCAST_EVENT_RETENTION'],
    [{ RUNCAST_ALLOWED_ORIGINS: 'not a url' }, 'RUNCAST_ALLOWED_ORIGINS'],
    [{ RUNCAST_COOKIE_SECURE: 'maybe' }, 'RUNCAST_COOKIE_SECURE'],
    [{ RUNCAST_REQUEST_TIMEOUT_MS: '0' }, 'RUNCAST_REQUEST_TIMEOUT_MS'],
    [
      { RUNCAST_REQUEST_TIMEOUT_MS: '5000', RUNCAST_HEADERS_TIMEOUT_MS: '6000' },
      'RUNCAST_HEADERS_TIMEOUT_MS',
    ],
    [{ RUNCAST_GIT_ALLOW_LOCAL: 'perhaps' }, 'RUNCAST_GIT_ALLOW_LOCAL'],
    [{ RUNCAST_DATABASE_URL: 'mysql://db/runcast' }, 'RUNCAST_DATABASE_URL'],
    [{ RUNCAST_DATABASE_URL: 'not a url' }, 'RUNCAST_DATABASE_URL'],
    [{ RUNCAST_HTTP_COMPRESSION: 'fast' }, 'RUNCAST_HTTP_COMPRESSION'],
    [{ RUNCAST_COMPRESSION_MIN_BYTES: '1k' }, 'RUNCAST_COMPRESSION_MIN_BYTES'],
    [{ RUNCAST_SSE_COMPRESSION: 'brotli' }, 'RUNCAST_SSE_COMPRESSION'],
    [{ RUNCAST_WS_COMPRESSION: 'deflate' }, 'RUNCAST_WS_COMPRESSION'],
  ])('stops on %j with a one-line message naming %s', (env, name) => {
    let error: unknown;
    try {
      loadConfig(env, []);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toContain(name);
    expect((error as Error).message).not.toContain('\n');
  });

  it('takes a PostgreSQL URL without repeating a bad one', () => {
    expect(loadConfig({}, []).databaseUrl).toBeUndefined();
    const url = 'postgresql://runcast:secret@db.internal:5432/runcast';
    expect(loadConfig({ RUNCAST_DATABASE_URL: url }, []).databaseUrl).toBe(url);
    expect(loadConfig({ RUNCAST_DATABASE_URL: 'postgres://db/runcast' }, []).databaseUrl).toBe(
      'postgres://db/runcast',
    );
    expect(() => loadConfig({ RUNCAST_DATABASE_URL: 'mysql://u:hunter2@db/x' }, [])).toThrow(
      /^((?!hunter2).)*$/,
    );
  });

  it('names an unknown flag', () => {
    expect(() => loadConfig({}, ['--prot', '1'])).toThrow(/prot/);
  });
});
