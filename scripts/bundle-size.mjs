#!/usr/bin/env node
// Prints the size of @runcast/client as a browser bundle: minified, and minified + gzipped,
// with and without socket.io-client (the one dependency of weight).
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

async function size(external) {
  const result = await build({
    entryPoints: ['packages/client/src/index.ts'],
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    conditions: ['@runcast/source'],
    external,
    write: false,
    logLevel: 'warning',
  });
  const code = result.outputFiles[0].contents;
  return { minified: code.length, gzipped: gzipSync(code, { level: 9 }).length };
}

const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
const whole = await size([]);
const own = await size(['socket.io-client']);
console.log(
  `@runcast/client, browser bundle: ${kib(whole.minified)} minified, ${kib(whole.gzipped)} gzipped`,
);
console.log(`  of which Runcast's own code: ${kib(own.minified)} minified, ${kib(own.gzipped)} gzipped`);
