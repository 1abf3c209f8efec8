import { createHash, randomBytes } from 'node:crypto';
import pg from 'pg';
import { ConfigError } from '../config.js';

/** The keys every node on one database must share, read from its `cluster_keys` table. */
export interface ClusterKeys {
  /** Signs login tokens: a token signed by one node is checked by another. */
  signingSecret: string;
  /** Seals git secrets (32 bytes): a node that takes over a run can open its tokens. */
  sealingKey: Buffer;
}

const SIGNING = 'token-signing';
const SEALING = 'secret-sealing';

interface KeyRow {
  name: string;
  value: string | null;
  secret_hash: string | null;
}

/** What the table keeps of a configured RUNCAST_SECRET: never the secret itself. */
export function secretHash(secret: string): string {
  return createHash('sha256').update('runcast token-signing\n').update(secret).digest('base64url');
}

/**
 * The cluster's keys, created by the first node that asks (a concurrent first node's insert does
 * nothing, and both read the same row). The signing key is RUNCAST_SECRET when it is set — the
 * table then holds its hash, and a node whose RUNCAST_SECRET differs fails to start — and a
 * generated key otherwise. Needs the store's migrations applied.
 */
export async function loadClusterKeys(databaseUrl: string, secret: string | undefined): Promise<ClusterKeys> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  let rows: KeyRow[];
  try {
    await client.query(
      `INSERT INTO cluster_keys (name, value, secret_hash) VALUES ($1, $2, $3), ($4, $5, NULL)
       ON CONFLICT (name) DO NOTHING`,
      [
        SIGNING,
        secret === undefined ? randomBytes(32).toString('base64url') : null,
        secret === undefined ? null : secretHash(secret),
        SEALING,
        randomBytes(32).toString('base64'),
      ],
    );
    rows = (
      await client.query<KeyRow>('SELECT name, value, secret_hash FROM cluster_keys WHERE name = ANY($1)', [
        [SIGNING, SEALING],
      ])
    ).rows;
  } finally {
    await client.end();
  }
  const signing = rows.find((row) => row.name === SIGNING);
  const sealing = rows.find((row) => row.name === SEALING)?.value;
  if (!signing || !sealing) throw new Error('cluster_keys lacks its rows');
  return { signingSecret: signingSecret(signing, secret), sealingKey: Buffer.from(sealing, 'base64') };
}

/** The signing key the cluster uses, or a one-line start-up error when this node disagrees. */
function signingSecret(row: KeyRow, secret: string | undefined): string {
  if (secret === undefined) {
    if (row.value !== null) return row.value;
    throw new ConfigError(
      'RUNCAST_SECRET is not set on this node, but the other nodes on this database use one: set the same RUNCAST_SECRET on every node',
    );
  }
  if (row.secret_hash === secretHash(secret)) return secret;
  if (row.secret_hash === null) {
    throw new ConfigError(
      `RUNCAST_SECRET is set on this node, but the other nodes on this database use a generated key: set it on every node or on none (to switch, stop every node and delete the "${SIGNING}" row of cluster_keys)`,
    );
  }
  throw new ConfigError(
    'RUNCAST_SECRET on this node differs from the one the other nodes on this database use: set the same value on every node',
  );
}
