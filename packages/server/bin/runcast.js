#!/usr/bin/env node
// The `runcast` command. npm links a package's bins when it installs it, before anything is
// built, and skips a bin whose file does not exist yet; so the bin is this committed file, and
// the built CLI is loaded from here.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = new URL('../dist/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  console.error(
    `runcast: ${fileURLToPath(main)} is missing: build first with \`npm run build\` (\`npm start\` builds too)`,
  );
  process.exit(1);
}
await import(main.href);
