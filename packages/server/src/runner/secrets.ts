import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { makePrivateDir, restrictFile, writePrivateFile } from '../private-files.js';

const PREFIX = 'sealed:v1:';

/** True for a value produced by `SecretBox.seal`. */
export function isSealed(value: unknown): value is string {
  return typeof value === 'string' && value.startsWith(PREFIX);
}

/**
 * Encrypts run secrets at rest (AES-256-GCM) with a key kept in the data dir (mode 0600), or on
 * PostgreSQL in the database for every node (`loadClusterKeys`), so that stored runs never hold a
 * token in clear.
 */
export class SecretBox {
  constructor(private readonly key: Buffer) {
    if (key.length !== 32) throw new Error('the secret key must be 32 bytes');
  }

  /** The box of a data dir: its `secrets.key`, created on first use. */
  static forDataDir(dataDir: string): SecretBox {
    makePrivateDir(dataDir);
    const file = join(dataDir, 'secrets.key');
    if (existsSync(file)) restrictFile(file);
    else writePrivateFile(file, randomBytes(32).toString('base64'));
    return new SecretBox(Buffer.from(readFileSync(file, 'utf8').trim(), 'base64'));
  }

  seal(plain: string): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv);
    const body = Buffer.concat([cipher.update(plain, 'utf8'), cipher.final()]);
    return `${PREFIX}${[iv, cipher.getAuthTag(), body].map((part) => part.toString('base64url')).join('.')}`;
  }

  open(sealed: string): string {
    if (!isSealed(sealed)) throw new Error('not a sealed secret');
    const [iv = '', tag = '', body = ''] = sealed.slice(PREFIX.length).split('.');
    const decipher = createDecipheriv('aes-256-gcm', this.key, Buffer.from(iv, 'base64url'));
    decipher.setAuthTag(Buffer.from(tag, 'base64url'));
    return Buffer.concat([decipher.update(Buffer.from(body, 'base64url')), decipher.final()]).toString(
      'utf8',
    );
  }
}
