import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import type { CreatedApiToken, Project, RunSnapshot, User } from '@runcast/protocol';
import { CliError, call, EXIT, type Target } from './http.js';
import { watchRun } from './watch.js';

export const USAGE = `usage: runcast <command> [flags]

commands:
  serve                          start the server (flags: --host, --port, --data-dir, --log-level)
  migrate <source> <target>...   create a git-mirror run of source → target pairs
      [--project <id>] [--exclude <glob>]... [--rename <from>=<to>]... [--force]
      [--continue-on-error] [--watch]
      tokens: RUNCAST_SOURCE_TOKEN, RUNCAST_TARGET_TOKEN (never flags: a command line is public)
  watch <run_id> [--plain]       follow a run: progress bar, stage, rate, ETA, last log lines
  user add <username> --role <admin|operator|viewer>
      password: RUNCAST_NEW_PASSWORD, or one is generated and printed
  token create --project <id> [--name <name>]

server and credentials: --server <url> or RUNCAST_URL (default http://127.0.0.1:8080);
RUNCAST_TOKEN (a login or API token) or --token-file <path>.

exit codes: 0 done (or COMPLETED), 1 run FAILED, 2 usage, 3 run CANCELED, 4 API error, 5 unreachable`;

const COMMON = {
  server: { type: 'string' },
  'token-file': { type: 'string' },
} as const;

function parse<T extends Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>>(
  args: string[],
  options: T,
) {
  try {
    return parseArgs({ args, options: { ...COMMON, ...options }, allowPositionals: true, strict: true });
  } catch (err) {
    throw new CliError(`${(err as Error).message.split('\n')[0]}\n\n${USAGE}`, EXIT.usage);
  }
}

function target(
  values: { server?: string | undefined; 'token-file'?: string | undefined },
  env: NodeJS.ProcessEnv,
): Target {
  const url = (values.server ?? env.RUNCAST_URL ?? 'http://127.0.0.1:8080').replace(/\/$/, '');
  if (!/^https?:\/\//.test(url))
    throw new CliError(`the server URL must start with http:// or https://, got "${url}"`, EXIT.usage);
  let token = env.RUNCAST_TOKEN || undefined;
  if (values['token-file']) {
    try {
      token = readFileSync(values['token-file'], 'utf8').trim();
    } catch (err) {
      throw new CliError(`cannot read the token file: ${(err as Error).message}`, EXIT.usage);
    }
  }
  return { url, token };
}

async function chooseProject(to: Target, given: string | undefined): Promise<string> {
  if (given) return given;
  const { projects } = await call<{ projects: Project[] }>(to, 'GET', '/projects');
  const writable = projects.filter((project) => project.role !== 'viewer');
  if (writable.length === 1 && writable[0]) return writable[0].project_id;
  throw new CliError(
    writable.length === 0
      ? 'no project you can run migrations in; create one in the dashboard first'
      : `several projects: choose one with --project (${writable.map((p) => `${p.project_id} ${p.name}`).join(', ')})`,
    EXIT.usage,
  );
}

/** `runcast migrate <source> <target>… [--watch]`. */
export async function migrate(
  args: string[],
  env: NodeJS.ProcessEnv,
  out: NodeJS.WriteStream,
): Promise<number> {
  const { values, positionals } = parse(args, {
    project: { type: 'string' },
    exclude: { type: 'string', multiple: true },
    rename: { type: 'string', multiple: true },
    force: { type: 'boolean' },
    'continue-on-error': { type: 'boolean' },
    watch: { type: 'boolean' },
    plain: { type: 'boolean' },
  });
  if (positionals.length === 0 || positionals.length % 2 !== 0) {
    throw new CliError(`migrate takes source and target in pairs\n\n${USAGE}`, EXIT.usage);
  }
  const to = target(values, env);
  const repositories = [];
  for (let i = 0; i < positionals.length; i += 2)
    repositories.push({ source: positionals[i], target: positionals[i + 1] });
  const config: Record<string, unknown> = { repositories };
  if (values.exclude?.length) config.exclude_refs = values.exclude;
  if (values.rename?.length) {
    const renames: Record<string, string> = {};
    for (const pair of values.rename) {
      const [from, into] = pair.split('=');
      if (!from || !into) throw new CliError(`--rename takes <from>=<to>, got "${pair}"`, EXIT.usage);
      renames[from] = into;
    }
    config.rename_refs = renames;
  }
  if (values.force) config.force = true;
  if (values['continue-on-error']) config.continue_on_error = true;
  if (env.RUNCAST_SOURCE_TOKEN) config.source_token = env.RUNCAST_SOURCE_TOKEN;
  if (env.RUNCAST_TARGET_TOKEN) config.target_token = env.RUNCAST_TARGET_TOKEN;
  const projectId = await chooseProject(to, values.project);
  const run = await call<RunSnapshot>(to, 'POST', '/runs', {
    project_id: projectId,
    kind: 'git-mirror',
    config,
  });
  out.write(`${run.run_id}\n`);
  if (!values.watch) return EXIT.ok;
  return watchRun(to, run.run_id, { tty: Boolean(out.isTTY) && !values.plain, out, columns: out.columns });
}

/** `runcast watch <run_id>`. */
export async function watch(
  args: string[],
  env: NodeJS.ProcessEnv,
  out: NodeJS.WriteStream,
): Promise<number> {
  const { values, positionals } = parse(args, { plain: { type: 'boolean' } });
  const [runId, ...extra] = positionals;
  if (!runId || extra.length > 0) throw new CliError(`watch takes one run id\n\n${USAGE}`, EXIT.usage);
  return watchRun(target(values, env), runId, {
    tty: Boolean(out.isTTY) && !values.plain,
    out,
    columns: out.columns,
  });
}

/** `runcast user add <username> --role <role>`. */
export async function userAdd(
  args: string[],
  env: NodeJS.ProcessEnv,
  out: NodeJS.WritableStream,
): Promise<number> {
  const { values, positionals } = parse(args, { role: { type: 'string' } });
  const [username, ...extra] = positionals;
  if (!username || extra.length > 0 || !values.role)
    throw new CliError(`user add takes <username> --role <role>\n\n${USAGE}`, EXIT.usage);
  const password = env.RUNCAST_NEW_PASSWORD || randomBytes(12).toString('base64url');
  const user = await call<User>(target(values, env), 'POST', '/users', {
    username,
    password,
    role: values.role,
  });
  out.write(`${user.user_id} ${user.username} (${user.role})\n`);
  if (!env.RUNCAST_NEW_PASSWORD) out.write(`password: ${password}\n`);
  return EXIT.ok;
}

/** `runcast token create --project <id> [--name <name>]`. */
export async function tokenCreate(
  args: string[],
  env: NodeJS.ProcessEnv,
  out: NodeJS.WritableStream,
): Promise<number> {
  const { values, positionals } = parse(args, { project: { type: 'string' }, name: { type: 'string' } });
  if (positionals.length > 0 || !values.project)
    throw new CliError(`token create takes --project <id>\n\n${USAGE}`, EXIT.usage);
  const token = await call<CreatedApiToken>(target(values, env), 'POST', '/tokens', {
    project_id: values.project,
    name: values.name ?? 'worker',
  });
  out.write(`${token.token}\n`);
  return EXIT.ok;
}
