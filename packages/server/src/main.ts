#!/usr/bin/env node
import { buildApp } from './app.js';
import { ConfigError, loadConfig } from './config.js';

const USAGE = `usage: runcast <command> [flags]

commands:
  serve     start the server (flags: --host, --port, --data-dir, --log-level)`;

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

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'serve':
      await serve(rest);
      return -1;
    case undefined:
    case '-h':
    case '--help':
      console.log(USAGE);
      return command === undefined ? 2 : 0;
    default:
      console.error(`runcast: unknown command "${command}"\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof ConfigError) {
      console.error(`runcast: ${err.message}`);
      process.exit(2);
    }
    console.error(`runcast: ${(err as Error).stack ?? String(err)}`);
    process.exit(1);
  },
);
