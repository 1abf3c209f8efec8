import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { Api } from '../../packages/server/src/test-support/server.js';
import { freePort } from '../support/server-process.js';

// The README's "Scale out" section, run as written: PostgreSQL, three nodes and HAProxy, then a
// run through the balancer, then the section's stop command. Two lines are not run here, because
// the test command has done them already: installing the Debian packages and `npm ci && npm run
// build` (reinstalling the repository under its own running tests would pull the floor away).

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const ALREADY_DONE = [
  'apt-get update && apt-get install -y --no-install-recommends postgresql haproxy',
  'npm ci && npm run build',
];

/** The shell blocks of the README's "Scale out" section, in order. */
function scaleOutBlocks(): string[] {
  const section = README.split(/^## /m).find((part) => part.startsWith('Scale out'));
  if (!section) throw new Error('README.md has no "Scale out" section');
  return [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((match) => match[1] ?? '');
}

function bash(script: string): { code: number | null; output: string } {
  const ran = spawnSync('bash', ['-ec', script], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
  return { code: ran.status, output: `${ran.stdout}${ran.stderr}` };
}

let dir: string | undefined;
let stopScript: string | undefined;
afterAll(() => {
  if (stopScript) bash(stopScript);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("the README's scale-out section", () => {
  it('starts PostgreSQL, three nodes and HAProxy that serve a run through the balancer', async () => {
    const [start, stop] = scaleOutBlocks();
    expect(start).toBeDefined();
    expect(stop).toBeDefined();
    for (const line of ALREADY_DONE) expect(start).toContain(line);
    dir = mkdtempSync(join(tmpdir(), 'runcast-readme-cluster-'));
    const [pg, lb, a, b, c] = await Promise.all([1, 2, 3, 4, 5].map(() => freePort()));
    const settings = `DIR=${dir} PG_PORT=${pg} LB_PORT=${lb} NODE_PORTS="${a} ${b} ${c}"`;
    const lines = start!.split('\n');
    expect(lines[0]).toMatch(/^DIR=\S+ PG_PORT=\d+ LB_PORT=\d+ NODE_PORTS="[\d ]+"$/);
    let script = [settings, ...lines.slice(1)].join('\n');
    for (const line of ALREADY_DONE) script = script.replace(line, 'true');
    stopScript = `${settings}\n${stop}`;
    const started = bash(script);
    expect(started.code, started.output).toBe(0);

    const balancer = `http://127.0.0.1:${lb}`;
    const deadline = Date.now() + 60_000;
    // Each node, then the balancer once its health checks found them.
    for (const url of [a, b, c].map((port) => `http://127.0.0.1:${port}`).concat(balancer)) {
      for (;;) {
        const ready = await fetch(`${url}/readyz`).catch(() => undefined);
        if (ready?.status === 200) break;
        if (Date.now() > deadline) throw new Error(`${url} never became ready`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
    const admin = await new Api(balancer).login('admin', 'change-this-password');
    const project = await admin.post('/projects', { name: 'readme' });
    const run = await admin.post('/runs', { project_id: project.body.project_id, kind: 'external' });
    const runId: string = run.body.run_id;
    // Round-robin: these land on different nodes, all on one database.
    for (let i = 0; i < 6; i++) {
      expect((await admin.post(`/runs/${runId}/logs`, { level: 'info', message: `line ${i}` })).status).toBe(
        201,
      );
    }
    for (const port of [a, b, c]) {
      const events = await new Api(`http://127.0.0.1:${port}`, admin.token).get(
        `/runs/${runId}/events?since=0`,
      );
      expect(events.body.events.map((e: { log: { message: string } }) => e.log.message)).toEqual(
        Array.from({ length: 6 }, (_, i) => `line ${i}`),
      );
    }

    const stopped = bash(stopScript);
    stopScript = undefined;
    expect(stopped.code, stopped.output).toBe(0);
    expect(await fetch(`${balancer}/healthz`).catch(() => 'refused')).toBe('refused');
  }, 180_000);
});
