import { chmodSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ADMIN_PASSWORD, Api, startServer } from '../../packages/server/src/test-support/server.js';
import { Cleanups } from '../support/cleanups.js';
import { emptyBare, fileUrl, makeSourceRepo } from '../support/git.js';
import { ended, waitForRun } from '../support/runs.js';

// What the server writes to disk — the database and its WAL, the signing and sealing keys, the
// mirrors of private repositories — is readable by the server's user only, whatever the umask.

const cleanups = new Cleanups();
let umaskBefore = 0;

beforeAll(() => {
  // The usual umask, under which files would be created world-readable (0644, 0755).
  umaskBefore = process.umask(0o022);
});

afterAll(() => {
  process.umask(umaskBefore);
});

afterEach(() => cleanups.run());

const mode = (path: string) => statSync(path).mode & 0o777;

describe('the data dir', () => {
  it('is created 0700, with its database, WAL, keys 0600 and work dirs 0700', async () => {
    const base = cleanups.tempDir('runcast-modes-new-');
    const dataDir = join(base, 'data');
    const source = makeSourceRepo(join(base, 'source.git'), { branches: [], mergeRequests: 0 });
    const target = emptyBare(join(base, 'target.git'));
    const duringRun: Record<string, number> = {};
    const server = await startServer(
      { RUNCAST_DATA_DIR: dataDir, RUNCAST_GIT_ALLOW_LOCAL: '1' },
      {
        gitMirrorHooks: {
          async beforeVerify() {
            const workRoot = join(dataDir, 'work');
            duringRun.work = mode(workRoot);
            for (const runDir of readdirSync(workRoot)) duringRun.run = mode(join(workRoot, runDir));
          },
        },
      },
    );
    cleanups.push(async () => {
      await server.close();
      expect(server.errorLogs).toEqual([]);
    });
    const admin = await new Api(server.url).login('admin', ADMIN_PASSWORD);
    const project = await admin.post('/projects', { name: 'modes' });
    const created = await admin.post('/runs', {
      project_id: project.body.project_id,
      kind: 'git-mirror',
      config: { repositories: [{ source: source.url, target: fileUrl(target) }] },
    });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const end = await waitForRun(admin, created.body.run_id, ended);
    expect(end.status, JSON.stringify(end.error)).toBe('COMPLETED');

    expect(mode(dataDir).toString(8)).toBe('700');
    expect(duringRun).toEqual({ work: 0o700, run: 0o700 });
    for (const file of ['runcast.db', 'runcast.db-wal', 'runcast.db-shm', 'secret', 'secrets.key']) {
      expect(mode(join(dataDir, file)).toString(8), file).toBe('600');
    }
  }, 60_000);

  it('made before keeps its own mode, while the files of the server in it are narrowed to 0600', async () => {
    const dataDir = join(cleanups.tempDir('runcast-modes-old-'), 'data');
    mkdirSync(dataDir);
    chmodSync(dataDir, 0o750);
    const files = {
      secret: `${'s'.repeat(43)}\n`,
      'secrets.key': Buffer.alloc(32, 7).toString('base64'),
      // An empty file is a new database to SQLite.
      'runcast.db': '',
    };
    for (const [name, content] of Object.entries(files)) {
      writeFileSync(join(dataDir, name), content);
      chmodSync(join(dataDir, name), 0o644);
    }
    const server = await startServer({ RUNCAST_DATA_DIR: dataDir });
    cleanups.push(async () => {
      await server.close();
      expect(server.errorLogs).toEqual([]);
    });

    expect(mode(dataDir).toString(8)).toBe('750');
    for (const file of [...Object.keys(files), 'runcast.db-wal', 'runcast.db-shm']) {
      expect(mode(join(dataDir, file)).toString(8), file).toBe('600');
    }
  });
});
