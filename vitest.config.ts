import { defineConfig } from 'vitest/config';

export default defineConfig({
  resolve: { conditions: ['@runcast/source'] },
  ssr: { resolve: { conditions: ['@runcast/source'] } },
  test: {
    include: ['packages/*/src/**/*.test.ts', 'test/**/*.test.ts', 'e2e/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
});
