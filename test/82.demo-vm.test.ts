// npm run demo -- --vm: the post-copy migration of a running KVM guest (the
// VMM fixture). The source pauses the guest part way through its walk of
// memory; a new VMM resumes the vCPU at once on empty memory registered with
// userfaultfd, and every page the vCPU touches is served over TCP on
// loopback. The guest's hash must equal an uninterrupted run's. Needs
// /dev/kvm; without it the demo says why, and these tests skip (the first
// checks that saying).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { kernelFaultUffdSkipReason, kvmSkipReason } from './vmm';

const MAIN = path.join(__dirname, '..', 'dist', 'demo', 'main.js');
// Bounds the whole demo: it runs VMMs with their own 300 s watchdog, but a
// nested guest under emulation on a loaded 2-core host is the slowest case here: 1-4 min.
const DEMO_TIMEOUT_MS = 480_000;

function demo(args: string[]): Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const deadline = setTimeout(() => child.kill('SIGKILL'), DEMO_TIMEOUT_MS);
  // The children share the launcher's stdout and stderr: 'close' comes only once every one of them has exited.
  return new Promise((resolve) => child.once('close', (code, signal) => {
    clearTimeout(deadline);
    resolve({ code, signal, stdout, stderr });
  }));
}

const kvmSkip = kvmSkipReason();
const skip = kvmSkip ?? kernelFaultUffdSkipReason();
if (skip) console.warn(`VM demo tests skipped: ${skip}`);

describe('npm run demo -- --vm', () => {
  it.skipIf(kvmSkip === undefined)(`without /dev/kvm, says why and exits 0${kvmSkip === undefined ? ' — skipped: this machine has /dev/kvm' : ''}`, async () => {
    const { code, stdout, stderr } = await demo(['--vm']);
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).toBe(`VM demo skipped: ${kvmSkip}\n`);
  });

  describe.skipIf(skip !== undefined)(`with a KVM guest${skip ? ` — skipped: ${skip}` : ''}`, () => {
    it('post-copy without prefetch: the vCPU faults its pages over the network, and the guest finishes with the uninterrupted run\'s hash', async () => {
      const { code, stdout, stderr } = await demo(['--vm', '--size', '4', '--no-prefetch', '--read-ahead', '16', '--bandwidth', '50', '--latency', '0.2']);
      expect(stderr).toBe('');
      expect(code).toBe(0);
      expect(stdout).toMatch(/guest hash equals the uninterrupted run's\s+yes\s+yes/);
      expect(stdout).toMatch(/VMM: equals the host's computation\s+yes\s+yes/);
      // Every page came on demand: nothing was pushed, and some vCPU faults waited on the network.
      const pages = /^pages on demand \/ pushed\s+([\d,]+) \/ ([\d,]+)\s/m.exec(stdout);
      expect(pages).not.toBeNull();
      expect(Number(pages![1]!.replaceAll(',', ''))).toBeGreaterThan(0);
      expect(pages![2]).toBe('0');
      const faults = /^vCPU faults \(waited on the network\)\s+([\d,]+) \(([\d,]+)\)/m.exec(stdout);
      expect(faults).not.toBeNull();
      expect(Number(faults![2]!.replaceAll(',', ''))).toBeGreaterThan(0);
      expect(stdout).toMatch(/^downtime\s+\S+ m?s\s+\S+ m?s$/m);
      expect(stdout).toContain('OK: the migrated guest finished with the uninterrupted run\'s result');
    }, DEMO_TIMEOUT_MS + 10_000);

    it('post-copy with the background push: same hash', async () => {
      const { code, stdout, stderr } = await demo(['--vm', '--size', '4', '--bandwidth', '50', '--latency', '0.2']);
      expect(stderr).toBe('');
      expect(code).toBe(0);
      expect(stdout).toMatch(/guest hash equals the uninterrupted run's\s+yes\s+yes/);
      expect(stdout).toContain('OK: the migrated guest finished');
    }, DEMO_TIMEOUT_MS + 10_000);

    it('a source killed mid-migration is reported, the restored VMM ends, and nothing is left waiting', async () => {
      const { code, stdout, stderr } = await demo(['--vm', '--size', '8', '--bandwidth', '1', '--kill-source-at', '10']);
      expect(stdout).toMatch(/killing the source \(SIGKILL\) at \d+ % of the pages/);
      expect(stderr).toMatch(/post-copy: the destination failed: /);
      expect(code).toBe(2);
    }, DEMO_TIMEOUT_MS + 10_000);
  });
});
