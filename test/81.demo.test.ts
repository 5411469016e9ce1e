// npm run demo, small: the launcher, a source and two destinations, as separate
// processes over TCP on loopback, each destination's workload faulting on
// real registered memory.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Mapping } from '../dist/index.js';
import { generate, runWorkload } from '../dist/demo/image.js';
import { PAGE } from './helpers';

const MAIN = path.join(__dirname, '..', 'dist', 'demo', 'main.js');

function demo(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

describe('the demo', () => {
  it('generates the same image and results from the same seed, and others from another', () => {
    const size = 4 << 20;
    const [a, b, c] = [Mapping.anonymous(size), Mapping.anonymous(size), Mapping.anonymous(size)];
    try {
      generate(a.view(), 5, PAGE);
      generate(b.view(), 5, PAGE);
      generate(c.view(), 6, PAGE);
      expect(Buffer.compare(a.read(), b.read())).toBe(0);
      expect(Buffer.compare(a.read(), c.read())).not.toBe(0);
      const result = runWorkload(a.view(), 5);
      expect(runWorkload(b.view(), 5)).toEqual(result);
      expect(result.orders).toBeGreaterThan(0);
      expect(result.found).toBeGreaterThan(0);
    } finally {
      for (const m of [a, b, c]) m.unmap();
    }
  });

  it('migrates a running workload post-copy and stop-and-copy, and both match the source', async () => {
    const { code, stdout, stderr } = await demo(['--size', '8', '--bandwidth', '50', '--latency', '0.2', '--read-ahead', '4']);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).toMatch(/results equal the source's\s+yes\s+yes/);
    expect(stdout).toMatch(/memory sha256 equals the source's\s+yes\s+yes/);
    expect(stdout).toMatch(/^total time\s+\S+ m?s\s+\S+ m?s$/m);
    expect(stdout).toMatch(/^downtime\s+\S+ m?s\s+\S+ m?s$/m);
    expect(stdout).toContain('OK: both destinations');
  });

  // The children share the launcher's stdout and stderr: 'close' comes only once every one of them has exited.
  it('reports a source killed mid-migration and exits non-zero, leaving no process waiting', async () => {
    const { code, stdout, stderr } = await demo(['--size', '16', '--bandwidth', '4', '--kill-source-at', '20']);
    expect(stdout).toMatch(/killing the source \(SIGKILL\) at \d+ % of the pages/);
    expect(stderr).toMatch(/post-copy: the destination failed: ERR_UFFD_SOURCE_LOST: .* before every page arrived/);
    expect(code).toBe(2);
  });

  it('refuses a bad option with the usage, before starting anything', async () => {
    const { code, stderr } = await demo(['--size', 'lots']);
    expect(code).toBe(64);
    expect(stderr).toMatch(/--size lots: must be a whole number of MiB/);
    expect(stderr).toContain('Usage: npm run demo');
  });
});
