import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { hashPassword } from './auth/passwords.js';
import type { Config } from './config.js';
import { newId } from './ids.js';
import type { Store } from './store/store.js';

/** The token signing key: RUNCAST_SECRET, or one generated once and kept in the data dir (0600). */
export function loadOrCreateSecret(config: Config): string {
  if (config.secret) return config.secret;
  mkdirSync(config.dataDir, { recursive: true });
  const file = join(config.dataDir, 'secret');
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  const secret = randomBytes(32).toString('base64url');
  writeFileSync(file, `${secret}\n`, { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
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
  await store.createUser({
    user_id: newId('usr'),
    username: 'admin',
    role: 'admin',
    password_hash: await hashPassword(chosen),
    created_at: new Date().toISOString(),
  });
  if (password === undefined) {
    announce(
      `Runcast: created user "admin" with password ${chosen} (shown once; change it with POST /api/v1/auth/password)`,
    );
  } else {
    announce('Runcast: created user "admin" with the password from RUNCAST_ADMIN_PASSWORD');
  }
}
