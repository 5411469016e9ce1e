import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // A native crash takes down one test file, not the run.
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Lifetime tests collect garbage on purpose.
    execArgv: ['--expose-gc'],
  },
});
