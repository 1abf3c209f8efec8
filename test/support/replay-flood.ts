import { readFileSync } from 'node:fs';
import { type Socket as NetSocket, connect as netConnect } from 'node:net';
import WebSocket from 'ws';

// Replays that cost what the client reads: viewers that resume a long run from the start and
// then never read. Used by the replay-flood test and by the before/after measurement of it.

/** Resident memory of a process, from /proc (bytes). */
export function rssBytes(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!match?.[1]) throw new Error(`no VmRSS for process ${pid}`);
  return Number(match[1]) * 1024;
}

/** Appends `count` log lines of `bytes` characters each to a run, in batches. */
export async function seedLogs(url: string, token: string, runId: string, count: number, bytes: number) {
  const batch = Math.max(1, Math.floor((900 * 1024) / (bytes + 50)));
  for (let done = 0; done < count; done += batch) {
    const entries = Array.from({ length: Math.min(batch, count - done) }, (_, i) => ({
      level: 'info',
      message: `${done + i} `.padEnd(bytes, 'x'),
    }));
    const answer = await fetch(`${url}/api/v1/runs/${runId}/logs`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ entries }),
    });
    if (answer.status !== 201) throw new Error(`seeding logs: ${answer.status} ${await answer.text()}`);
  }
}

/** An SSE resume from seq 0 on a raw connection that never reads what the server sends. */
export function nonReadingSseResume(url: string, token: string, runId: string): Promise<NetSocket> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host: hostname, port: Number(port) }, () => {
      socket.write(
        `GET /api/v1/runs/${runId}/stream?since=0 HTTP/1.1\r\nHost: ${hostname}:${port}\r\n` +
          `Authorization: Bearer ${token}\r\nAccept: text/event-stream\r\n\r\n`,
      );
      // Never read: the kernel's buffers fill, then the server's.
      socket.pause();
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/**
 * A Socket.IO connection (raw Engine.IO over `ws`) that subscribes `times` times to the run from
 * seq 0 and then stops reading. Resolves with the acks that arrived before it stopped reading.
 */
export function nonReadingSocketResubscriber(
  url: string,
  token: string,
  runId: string,
  times: number,
): Promise<{ ws: WebSocket; acks: string[] }> {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/socket.io/?EIO=4&transport=websocket`);
  const acks: string[] = [];
  return new Promise((resolve, reject) => {
    ws.once('error', reject);
    ws.on('message', (data) => {
      const text = data.toString();
      if (text.startsWith('0{')) ws.send(`40${JSON.stringify({ token })}`);
      else if (text === '2') ws.send('3');
      else if (text.startsWith('40{')) {
        for (let i = 0; i < times; i++) {
          ws.send(`42${i}${JSON.stringify(['subscribe', { run_id: runId, since: 0 }])}`);
        }
        // Stop reading once the subscribes are out: what the server sends piles up on its side.
        const raw = (ws as unknown as { _socket: NetSocket })._socket;
        raw.pause();
        resolve({ ws, acks });
      } else if (text.startsWith('43')) acks.push(text);
    });
  });
}

/** How long `GET /healthz` takes, in ms. */
export async function healthzMs(url: string): Promise<number> {
  const started = performance.now();
  const answer = await fetch(`${url}/healthz`);
  await answer.text();
  if (answer.status !== 200) throw new Error(`/healthz answered ${answer.status}`);
  return performance.now() - started;
}
