#!/usr/bin/env node
// What compressed live streams cost the server, beside plain ones: CPU per delivered event with
// many subscribers of one run, bytes per event on the wire, and the RSS each idle connection adds
// — for SSE (plain, and gzip when the client accepts it) and Socket.IO (without and with
// per-message deflate). Starts `packages/server/dist/main.js serve` (build it first: npx tsc -b
// packages/server) once per mode, opens the connections from this process over raw sockets or
// raw `ws` clients (so the clients cost little), publishes updates and log lines, and reads the
// server's CPU and RSS from /proc.
//
//   node scripts/compression-cost.mjs [subscribers=2000] [events=200]
//     [modes=sse,sse-gzip,sse-mux,sse-mux-gzip,ws,ws-deflate]
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';

const SUBSCRIBERS = Number(process.argv[2] ?? 2000);
const EVENTS = Number(process.argv[3] ?? 200);
const MODES = (process.argv[4] ?? 'sse,sse-gzip,sse-mux,sse-mux-gzip,ws,ws-deflate').split(',');
const PASSWORD = 'measure-password';
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

function rssBytes(pid) {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'));
  return Number.parseInt(line.slice(6), 10) * 1024;
}

async function rssAfterGc(pid) {
  process.kill(pid, 'SIGUSR2');
  await sleep(1000);
  return rssBytes(pid);
}

function freePort() {
  return new Promise((resolve) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function api(base, method, path, token, body) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${base}/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status >= 400) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

async function startServer(env) {
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'runcast-sse-cost-'));
  const child = spawn(
    process.execPath,
    [
      '--expose-gc',
      // SIGUSR2 collects garbage, so that RSS counts what the streams hold, not what they dropped.
      '--import',
      'data:text/javascript,process.on("SIGUSR2",()=>globalThis.gc())',
      'packages/server/dist/main.js',
      'serve',
      '--port',
      String(port),
      '--data-dir',
      dataDir,
    ],
    {
      env: {
        ...process.env,
        RUNCAST_ADMIN_PASSWORD: PASSWORD,
        LOG_LEVEL: 'warn',
        RUNCAST_SSE_COMPRESSION: 'gzip',
        ...env,
        RUNCAST_SUBSCRIBER_QUEUE_LIMIT: String(64 * 1024 * 1024),
      },
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  const base = `http://127.0.0.1:${port}`;
  for (let i = 0; ; i++) {
    try {
      if ((await fetch(`${base}/healthz`)).ok) break;
    } catch {
      if (i > 200) throw new Error('the server did not start');
    }
    await sleep(100);
  }
  return {
    base,
    port,
    pid: child.pid,
    async stop() {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** One raw SSE connection that counts the bytes it receives (and decodes nothing). */
function openStream(port, runId, token, gzip, multiplexed = false) {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1' });
    const stream = { socket, bytes: 0 };
    socket.on('error', reject);
    socket.on('connect', () => {
      socket.write(
        `GET /api/v1/${multiplexed ? `stream?runs=${runId}` : `runs/${runId}/stream`} HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n` +
          `authorization: Bearer ${token}\r\n${gzip ? 'accept-encoding: gzip\r\n' : ''}\r\n`,
      );
    });
    socket.once('data', () => resolve(stream));
    socket.on('data', (chunk) => {
      stream.bytes += chunk.length;
    });
  });
}

/** One Socket.IO connection over a raw ws client, subscribed to the run; counts the bytes it reads. */
function openSocket(port, runId, token, deflate) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`, {
      perMessageDeflate: deflate,
    });
    const connection = {
      socket: { destroy: () => ws.terminate() },
      get bytes() {
        return ws._socket?.bytesRead ?? 0;
      },
    };
    ws.on('error', reject);
    ws.on('message', (data) => {
      const text = data.toString();
      if (text === '2') ws.send('3');
      else if (text.startsWith('0')) ws.send(`40${JSON.stringify({ token })}`);
      else if (text.startsWith('40')) ws.send(`421${JSON.stringify(['subscribe', { run_id: runId }])}`);
      else if (text.startsWith('431')) resolve(connection);
    });
  });
}

const MODE_SETTINGS = {
  sse: { env: {}, open: (port, runId, token) => openStream(port, runId, token, false) },
  'sse-gzip': { env: {}, open: (port, runId, token) => openStream(port, runId, token, true) },
  // The multiplexed stream (`/stream?runs=`), which @runcast/client opens.
  'sse-mux': { env: {}, open: (port, runId, token) => openStream(port, runId, token, false, true) },
  'sse-mux-gzip': { env: {}, open: (port, runId, token) => openStream(port, runId, token, true, true) },
  ws: {
    env: { RUNCAST_WS_COMPRESSION: 'off' },
    open: (port, runId, token) => openSocket(port, runId, token, false),
  },
  'ws-deflate': {
    env: { RUNCAST_WS_COMPRESSION: 'on' },
    open: (port, runId, token) => openSocket(port, runId, token, true),
  },
};

async function measure(mode) {
  const settings = MODE_SETTINGS[mode];
  const server = await startServer(settings.env);
  const login = await api(server.base, 'POST', '/auth/login', undefined, {
    username: 'admin',
    password: PASSWORD,
  });
  const project = await api(server.base, 'POST', '/projects', login.token, { name: 'measure' });
  const run = await api(server.base, 'POST', '/runs', login.token, {
    project_id: project.project_id,
    kind: 'external',
  });
  await api(server.base, 'PATCH', `/runs/${run.run_id}/progress`, login.token, { status: 'RUNNING' });
  const rssBefore = await rssAfterGc(server.pid);
  const streams = [];
  for (let i = 0; i < SUBSCRIBERS; i += 100) {
    const batch = [];
    for (let j = i; j < Math.min(SUBSCRIBERS, i + 100); j++) {
      batch.push(settings.open(server.port, run.run_id, login.token));
    }
    streams.push(...(await Promise.all(batch)));
  }
  await sleep(2000);
  const idleRss = ((await rssAfterGc(server.pid)) - rssBefore) / SUBSCRIBERS;
  const bytesBefore = streams.reduce((sum, s) => sum + s.bytes, 0);
  const cpuBefore = cpuSeconds(server.pid);
  // Half updates (whole state), half log lines, ten a second: each goes out on its own.
  for (let i = 0; i < EVENTS; i++) {
    if (i % 2 === 0) {
      await api(server.base, 'PATCH', `/runs/${run.run_id}/progress`, login.token, {
        stage: 'APPLY',
        current_stage: `APPLY group/api (${i}/${EVENTS})`,
        progress: {
          percentage: (100 * i) / EVENTS,
          message: 'Writing objects',
          done: i * 37,
          total: EVENTS * 37,
        },
        stats: {
          repositories: 5,
          repositories_done: 1,
          refs: 120,
          objects: i * 37,
          bytes: i * 4096,
          errors: 0,
        },
      });
    } else {
      await api(server.base, 'POST', `/runs/${run.run_id}/logs`, login.token, {
        level: 'info',
        message: `Pushed ${i} refs to group/api`,
        stage: 'APPLY',
      });
    }
    await sleep(100);
  }
  await sleep(2000);
  const cpuS = cpuSeconds(server.pid) - cpuBefore;
  const bytes = streams.reduce((sum, s) => sum + s.bytes, 0) - bytesBefore;
  for (const stream of streams) stream.socket.destroy();
  await server.stop();
  return {
    mode,
    cpuUsPerDeliveredEvent: (cpuS * 1e6) / (EVENTS * SUBSCRIBERS),
    bytesPerDeliveredEvent: bytes / (EVENTS * SUBSCRIBERS),
    idleRssBytesPerStream: idleRss,
  };
}

const results = [];
// Twice each, interleaved: the machine's other load moves single figures by several percent.
for (const mode of [...MODES, ...MODES]) results.push(await measure(mode));
console.log(`${SUBSCRIBERS} subscribers of one run, ${EVENTS} events (half updates, half logs), 10/s`);
console.table(
  results.map((r) => ({
    mode: r.mode,
    'server CPU µs / delivered event': r.cpuUsPerDeliveredEvent.toFixed(2),
    'bytes / delivered event': r.bytesPerDeliveredEvent.toFixed(0),
    'idle RSS / connection (B)': r.idleRssBytesPerStream.toFixed(0),
  })),
);
