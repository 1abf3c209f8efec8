#!/usr/bin/env node
import { buildApp } from './app.js';
import { migrate, tokenCreate, USAGE, userAdd, watch } from './cli/commands.js';
import { CliError, EXIT } from './cli/http.js';
import { ConfigError, loadConfig } from './config.js';

async function serve(args: string[]): Promise<void> {
  const config = loadConfig(process.env, args);
  const runcast = await buildApp(config);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    runcast.app.log.info({ signal }, 'shutting down');
    // Bounded: a stuck connection must not keep the process alive forever.
    const force = setTimeout(() => process.exit(1), 10_000);
    force.unref();
    runcast.close().then(
      () => process.exit(0),
      (err: unknown) => {
        runcast.app.log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  const address = await runcast.app.listen({ host: config.host, port: config.port });
  runcast.app.log.info({ address }, 'listening');
}

/** Runs a command; resolves with the exit code, or undefined for `serve`, which keeps running. */
async function main(argv: string[]): Promise<number | undefined> {
  const [command, ...rest] = argv;
  const env = process.env;
  switch (command) {
    case 'serve':
      await serve(rest);
      return undefined;
    case 'migrate':
      return migrate(rest, env, process.stdout);
    case 'watch':
      return watch(rest, env, process.stdout);
    case 'user':
      if (rest[0] === 'add') return userAdd(rest.slice(1), env, process.stdout);
      throw new CliError(`unknown user command "${rest[0] ?? ''}"\n\n${USAGE}`, EXIT.usage);
    case 'token':
      if (rest[0] === 'create') return tokenCreate(rest.slice(1), env, process.stdout);
      throw new CliError(`unknown token command "${rest[0] ?? ''}"\n\n${USAGE}`, EXIT.usage);
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      console.log(USAGE);
      return command === undefined ? EXIT.usage : EXIT.ok;
    default:
      throw new CliError(`unknown command "${command}"\n\n${USAGE}`, EXIT.usage);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== undefined) process.exit(code);
  },
  (err: unknown) => {
    if (err instanceof ConfigError) {
      console.error(`runcast: ${err.message}`);
      process.exit(EXIT.usage);
    }
    if (err instanceof CliError) {
      console.error(`runcast: ${err.message}`);
      process.exit(err.exitCode);
    }
    console.error(`runcast: ${(err as Error).stack ?? String(err)}`);
    process.exit(1);
  },
);
