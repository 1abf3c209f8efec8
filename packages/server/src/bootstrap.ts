import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { hashPassword } from './auth/passwords.js';
import type { Config } from './config.js';
import { AppError } from './errors.js';
import { newId } from './ids.js';
import { makePrivateDir, restrictFile, writePrivateFile } from './private-files.js';
import type { Store } from './store/store.js';

/**
 * The token signing key of the embedded store's one node: RUNCAST_SECRET, or one generated once and
 * kept in the data dir (0600). Nodes on PostgreSQL share theirs through `loadClusterKeys`.
 */
export function loadOrCreateSecret(config: Config): string {
  if (config.secret) return config.secret;
  makePrivateDir(config.dataDir);
  const file = join(config.dataDir, 'secret');
  if (existsSync(file)) {
    restrictFile(file);
    return readFileSync(file, 'utf8').trim();
  }
  const secret = randomBytes(32).toString('base64url');
  writePrivateFile(file, `${secret}\n`);
  return secret;
}

/**
 * Creates the bootstrap user `admin` when the store has no users. Without a configured password
 * one is generated and handed to `announce` — the only time it exists outside its hash.
 */
export async function ensureAdmin(
  store: Store,
  password: string | undefined,
  announce: (message: string) => void,
): Promise<void> {
  if ((await store.countUsers()) > 0) return;
  const chosen = password ?? randomBytes(12).toString('base64url');
  try {
    await store.createUser({
      user_id: newId('usr'),
      username: 'admin',
      role: 'admin',
      password_hash: await hashPassword(chosen),
      created_at: new Date().toISOString(),
    });
  } catch (err) {
    // Nodes started together on one database: another one created the admin first.
    if (err instanceof AppError && err.code === 'ALREADY_EXISTS') return;
    throw err;
  }
  if (password === undefined) {
    announce(
      `Runcast: created user "admin" with password ${chosen} (shown once; change it with POST /api/v1/auth/password)`,
    );
  } else {
    announce('Runcast: created user "admin" with the password from RUNCAST_ADMIN_PASSWORD');
  }
}
