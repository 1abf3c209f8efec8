#!/usr/bin/env node
// The README's test command: installs what the suites need, then runs the type check, the linter
// and every test suite, and ends with one line "N passed, N failed" summing all of them.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';

/** Debian packages the suites need, by the command that proves each is present. */
const DEBIAN_PACKAGES = [
  { check: 'command -v git', pkg: 'git' },
  { check: 'command -v chromium', pkg: 'chromium' },
  // test/proxy runs deploy/nginx.conf and deploy/haproxy.cfg behind a self-signed certificate.
  { check: 'test -x /usr/sbin/nginx || command -v nginx', pkg: 'nginx' },
  { check: 'test -x /usr/sbin/haproxy || command -v haproxy', pkg: 'haproxy' },
  { check: 'command -v openssl', pkg: 'openssl' },
  // The connection indicator's icons are emoji: screenshots need a font that has them.
  { check: 'test -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf', pkg: 'fonts-noto-color-emoji' },
  // The PostgreSQL store's tests start their own server from these binaries (Debian 12: 15).
  { check: 'test -x /usr/lib/postgresql/15/bin/initdb', pkg: 'postgresql' },
];

const results = [];

function run(name, command, args, options = {}) {
  console.log(`\n== ${name}: ${[command, ...args].join(' ')}`);
  const started = Date.now();
  const child = spawnSync(command, args, { stdio: 'inherit', ...options });
  const ok = child.status === 0;
  console.log(
    `== ${name}: ${ok ? 'ok' : `failed (exit ${child.status ?? child.signal})`} in ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
  return ok;
}

function present(check) {
  return spawnSync('sh', ['-c', check], { stdio: 'ignore' }).status === 0;
}

function ensureDebianPackages() {
  const missing = DEBIAN_PACKAGES.filter(({ check }) => !present(check)).map(({ pkg }) => pkg);
  if (missing.length === 0) return true;
  const [command, ...prefix] = process.getuid?.() === 0 ? ['apt-get'] : ['sudo', 'apt-get'];
  const options = { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } };
  return (
    run('apt-get update', command, [...prefix, 'update'], options) &&
    run(
      'apt-get install',
      command,
      [...prefix, 'install', '-y', '--no-install-recommends', ...missing],
      options,
    )
  );
}

function check(name, ok) {
  results.push({ name, passed: ok ? 1 : 0, failed: ok ? 0 : 1 });
}

check('debian packages', ensureDebianPackages());
check(
  'build and type check',
  run('build', 'npm', ['run', 'build']) &&
    run('type check (tests included)', 'npx', ['tsc', '-p', 'tsconfig.json']) &&
    run('type check (dashboard)', 'npx', ['tsc', '-p', 'packages/web']),
);
check('lint', run('lint', 'npx', ['biome', 'check', '.']));

const report = '.vitest-report.json';
rmSync(report, { force: true });
run('tests', 'npx', ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile=${report}`]);
if (existsSync(report)) {
  const json = JSON.parse(readFileSync(report, 'utf8'));
  const skipped = (json.numPendingTests ?? 0) + (json.numTodoTests ?? 0);
  // A suite that failed to load counts as a failure even though it ran no test.
  const brokenSuites = (json.testResults ?? []).filter(
    (s) => s.status === 'failed' && (s.assertionResults ?? []).length === 0,
  ).length;
  results.push({
    name: 'vitest',
    passed: json.numPassedTests,
    failed: json.numFailedTests + brokenSuites + skipped,
  });
  if (skipped > 0) console.log(`${skipped} tests were skipped; a skipped test counts as failed`);
} else {
  results.push({ name: 'vitest', passed: 0, failed: 1 });
}

// Correctness of live delivery under load (no log line lost, every subscriber on the terminal
// update), against the built server; it never asserts timings.
check('bench --quick', run('bench --quick', 'npm', ['run', 'bench', '--', '--quick']));

console.log('\n== summary');
for (const r of results) console.log(`${r.name}: ${r.passed} passed, ${r.failed} failed`);
const passed = results.reduce((n, r) => n + r.passed, 0);
const failed = results.reduce((n, r) => n + r.failed, 0);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
